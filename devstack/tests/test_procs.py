"""`terminate`: a process frozen by SIGSTOP still gets to act on SIGTERM, without a grace wait."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from mosaic_devstack.procs import ProcessRef, terminate

# Exits 0 on SIGTERM (the default action would do too; a handler shows it really ran).
_CHILD = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_frozen_process_is_continued_and_stops_on_sigterm_at_once() -> None:
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        os.kill(child.pid, signal.SIGSTOP)
        started = time.monotonic()
        terminate([ProcessRef.of(child.pid)], signal.SIGTERM, grace=5.0)
        assert time.monotonic() - started < 2.0
        assert child.wait(1) == 0  # its handler ran: not killed
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
