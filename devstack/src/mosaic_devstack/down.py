"""`mosaic down`: ask the supervisor to stop, then make sure nothing it started survives."""

from __future__ import annotations

import signal
import time

from mosaic_devstack.cleanup import stop_recorded
from mosaic_devstack.output import Console
from mosaic_devstack.procs import wait_gone
from mosaic_devstack.state import DataDir, State, StateError, read_state


def _latest_state(data: DataDir, known: State) -> State:
    # The supervisor rewrites state.json when it restarts an instance (new pid), and deletes it
    # when it is done; keep the last version seen.
    try:
        return read_state(data) or known
    except StateError:
        return known


def down(data: DataDir, *, timeout: float, console: Console) -> int:
    try:
        state = read_state(data)
    except StateError as exc:
        console.say(f"{exc}; removing it")
        data.state_file.unlink(missing_ok=True)
        return 1
    if state is None:
        console.say(f"mosaic is not running on {data.root}")
        return 0
    supervisor = state.supervisor()
    if supervisor.alive():
        console.say(f"stopping mosaic (supervisor pid {supervisor.pid})")
        supervisor.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while supervisor.alive() and time.monotonic() < deadline:
            state = _latest_state(data, state)
            time.sleep(0.1)
        if supervisor.alive():
            console.say(f"the supervisor did not stop within {timeout:g}s; killing it")
            supervisor.signal(signal.SIGKILL)
            wait_gone([supervisor], 5.0)
    leftovers = [ref for ref in state.processes() if ref.alive()]
    if leftovers:
        console.say(f"stopping leftover processes: {', '.join(str(r.pid) for r in leftovers)}")
    survivors = stop_recorded(state)
    data.state_file.unlink(missing_ok=True)
    if survivors:
        console.say(f"could not stop: {', '.join(str(r.pid) for r in survivors)}")
        return 1
    console.say("stopped")
    return 0
