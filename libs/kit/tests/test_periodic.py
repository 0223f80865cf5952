"""Periodic housekeeping: runs, survives a failing run, stops cleanly."""

from __future__ import annotations

import asyncio

from mosaic_kit.periodic import Periodic


async def test_runs_repeatedly_survives_failures_and_stops() -> None:
    calls: list[int] = []

    async def job() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first run fails")

    periodic = Periodic("test", 0.02, job)
    periodic.start()
    for _ in range(100):
        if len(calls) >= 3:
            break
        await asyncio.sleep(0.02)
    await periodic.stop()
    assert len(calls) >= 3  # the failing first run did not end the loop
    stopped_at = len(calls)
    await asyncio.sleep(0.1)
    assert len(calls) == stopped_at
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "periodic:test"]
