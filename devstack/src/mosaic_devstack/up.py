"""`mosaic up`: one supervisor per data folder, in the foreground or detached."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

from mosaic_devstack.cleanup import stop_recorded
from mosaic_devstack.output import Console
from mosaic_devstack.report import credentials_text, gateway_text, stack_table
from mosaic_devstack.state import DataDir, StateError, read_credentials, read_state
from mosaic_devstack.supervisor import Supervisor, UpOptions


class AlreadyRunningError(RuntimeError):
    pass


@contextlib.contextmanager
def supervisor_lock(data: DataDir) -> Iterator[None]:
    """Held for the supervisor's whole life; the kernel drops it however the process ends."""
    fd = os.open(data.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunningError(str(data.root)) from None
    try:
        yield
    finally:
        os.close(fd)


def lock_held(data: DataDir) -> bool:
    try:
        fd = os.open(data.lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _already_running(data: DataDir, console: Console) -> int:
    try:
        state = read_state(data)
    except StateError:
        state = None
    pid = f" (supervisor pid {state.supervisor_pid})" if state else ""
    console.say(
        f"mosaic is already running on {data.root}{pid}; "
        f"`mosaic status` shows it, `mosaic down` stops it"
    )
    return 1


def clear_stale(data: DataDir, console: Console) -> bool:
    """Stop what a supervisor that died without cleaning up left behind. Call under the lock.

    Returns False when some of it would not stop.
    """
    try:
        state = read_state(data)
    except StateError as exc:
        console.say(f"ignoring unreadable state: {exc}")
        state = None
    if state is not None:
        leftovers = [ref for ref in state.processes() if ref.alive()]
        if leftovers:
            pids = ", ".join(str(ref.pid) for ref in leftovers)
            console.say(f"stopping processes left by a previous run that did not stop: {pids}")
            survivors = stop_recorded(state)
            if survivors:
                console.say(f"could not stop {[ref.pid for ref in survivors]}; giving up")
                return False
    data.state_file.unlink(missing_ok=True)
    return True


def run_foreground(opts: UpOptions, console: Console) -> int:
    opts.data.create()
    try:
        with supervisor_lock(opts.data):
            if not clear_stale(opts.data, console):
                return 1
            return asyncio.run(Supervisor(opts, console).run())
    except AlreadyRunningError:
        return _already_running(opts.data, console)
    except KeyboardInterrupt:
        # Only before the supervisor's own handlers are in place: nothing was started yet.
        return 130


def run_detached(data: DataDir, up_args: Sequence[str], console: Console) -> int:
    """Start `mosaic up <up_args>` in the background; return once it is ready or has failed."""
    data.create()
    if lock_held(data):
        return _already_running(data, console)
    log_path = data.log("mosaic")
    with log_path.open("ab") as log:
        offset = log.tell()
        child = subprocess.Popen(
            [sys.executable, "-m", "mosaic_devstack.cli", "up", *up_args, "--quiet"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,  # tracebacks, should there be any; its own messages go there too
            start_new_session=True,
        )
    state = None
    try:
        while (code := child.poll()) is None:
            with contextlib.suppress(StateError):
                state = read_state(data)
                if state and state.supervisor_pid == child.pid and state.status == "ready":
                    break
            time.sleep(0.1)
    except KeyboardInterrupt:
        child.terminate()
        child.wait()
        return 130
    if code is not None:
        with log_path.open("rb") as src:
            src.seek(offset)
            console.say(f"mosaic up failed ({code=}):")
            console.write(src.read()[-20000:])
        return 1
    assert state is not None
    credentials = read_credentials(data)
    console.say(stack_table(state))
    console.say("")
    console.say(credentials_text(credentials, data.credentials_file))
    console.say("")
    console.say(gateway_text(state, credentials))
    console.say("")
    console.say(
        f"Running in the background (supervisor pid {child.pid}); logs in {data.logs}; "
        f"stop it with `mosaic down --data {data.root}`."
    )
    return 0
