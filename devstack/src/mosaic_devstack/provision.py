"""The one-shot steps before a service serves: `<cmd> migrate` and `<cmd> seed`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Mapping
from typing import Any

from mosaic_devstack.services import Service
from mosaic_devstack.streams import LineSink, pump, tail_text


class StepError(RuntimeError):
    pass


async def run_step(
    service: Service,
    step: str,
    env: Mapping[str, str],
    sink: LineSink,
    *,
    capture_stdout: bool = False,
    time_limit: float = 120.0,
) -> bytes:
    """Run `<cmd> <step>`; its stderr (and stdout unless captured) goes to `sink`.

    Returns the captured stdout. A captured stdout is never written anywhere: the seed's carries
    the generated secrets.
    """
    proc = await asyncio.create_subprocess_exec(
        *service.argv(step),
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    readers = [asyncio.create_task(pump(proc.stderr, sink))]
    captured: asyncio.Task[bytes] | None = None
    if capture_stdout:
        captured = asyncio.create_task(proc.stdout.read())
    else:
        readers.append(asyncio.create_task(pump(proc.stdout, sink)))
    try:
        code = await asyncio.wait_for(proc.wait(), time_limit)
    except TimeoutError:
        raise StepError(
            f"{service.name} {step} did not finish within {time_limit:g}s; "
            f"last lines of {sink.path}:\n{tail_text(sink.path)}"
        ) from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
        _, stuck = await asyncio.wait(readers, timeout=2.0)
        for reader in stuck:
            reader.cancel()
        if captured is not None and proc.returncode != 0:
            captured.cancel()
    if code != 0:
        raise StepError(
            f"{service.name} {step} failed (exit code {code}); "
            f"last lines of {sink.path}:\n{tail_text(sink.path)}"
        )
    if captured is None:
        return b""
    # Bounded: a helper the step left behind could keep its stdout open.
    return await asyncio.wait_for(captured, 5.0)


def parse_seed_output(out: bytes, service: str) -> dict[str, Any]:
    """The JSON object a seed prints: the whole stdout, or else its last line that is one."""
    candidates = [out, *reversed(out.splitlines())]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise StepError(f"{service} seed printed no JSON object on stdout")
