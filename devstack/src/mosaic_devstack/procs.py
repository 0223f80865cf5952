"""Processes recorded by pid, safe against the pid being reused by an unrelated program later.

A pid alone is not an identity: after a crash and a reboot (or just a busy machine) the number can
belong to someone else, and `mosaic down` must never signal a stranger. So every pid is stored
with its start time and a process only counts as ours when both match.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

# /proc start times are in clock ticks; two reads of the same process agree far closer than this.
_START_TOLERANCE = 0.5


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    started: float | None = None

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        try:
            return cls(pid, psutil.Process(pid).create_time())
        except psutil.Error:
            return cls(pid, None)

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            if (
                self.started is not None
                and abs(proc.create_time() - self.started) > _START_TOLERANCE
            ):
                return False
            return bool(proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def wait_gone(refs: Iterable[ProcessRef], timeout: float) -> list[ProcessRef]:
    """Wait up to `timeout` seconds for every process to end; return those still alive."""
    pending = [ref for ref in refs if ref.alive()]
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        pending = [ref for ref in pending if ref.alive()]
    return pending


def terminate(refs: Iterable[ProcessRef], sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Send `sig` to every live process, wait `grace` seconds, SIGKILL whatever remains."""
    targets = [ref for ref in refs if ref.alive()]
    for ref in targets:
        ref.signal(sig)
        # A process stopped by SIGSTOP acts on `sig` only once continued; else it waits for KILL.
        ref.signal(signal.SIGCONT)
    survivors = wait_gone(targets, grace)
    for ref in survivors:
        ref.signal(signal.SIGKILL)
    wait_gone(survivors, 5.0)
