"""Housekeeping that runs every so often in each replica (pruning expired rows and the like).

Jobs must be safe to run concurrently in several replicas (plain `DELETE ... WHERE expired`
is). A failing run is logged and retried at the next interval; it never stops the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

from mosaic_kit.logging import get_logger

__all__ = ["Periodic"]

_log = get_logger("mosaic_kit.periodic")


class Periodic:
    def __init__(self, name: str, interval: float, job: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self.interval = interval
        self._job = job
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"periodic:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> None:
        try:
            result = await self._job()
            _log.debug("periodic_done", job=self.name, result=result)
        except Exception as exc:  # a failing job must not end the process
            _log.warning("periodic_failed", job=self.name, error=type(exc).__name__)

    async def _loop(self) -> None:
        # Replicas started together spread their runs out instead of running in lockstep.
        await asyncio.sleep(self.interval * random.uniform(0.1, 1.0))
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval)
