"""`mosaic down` with NATS frozen: one grace period in all, not one per part, and nothing left.

The services (fakes that drain their NATS connection on SIGTERM, as the real ones do) and the
gateway cannot finish stopping while nats-server is frozen (SIGSTOP), so each is killed after the
grace period; they are stopped together rather than one after the other.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from devstack_support import Stack, family, under, wait_all_gone

GRACE = 3.0


def test_down_with_nats_frozen_takes_about_one_grace_period_and_leaves_nothing(
    stack: Stack, pg_url: str
) -> None:
    stack.use_services("auth", "blog")
    stack.env["DATABASE_URL"] = pg_url  # NATS is the stack's own: this test freezes it
    result = stack.up_detached("--replicas", "1", "--grace", str(GRACE), "--gateway-port", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    state = stack.state()
    assert state["gateway"] is not None
    everything = family(state)
    nats_pid = state["nats"]["pid"]

    os.kill(nats_pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        down = stack.mosaic("down")
        took = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(nats_pid, signal.SIGCONT)
    assert down.returncode == 0, down.stdout + down.stderr
    assert took < GRACE + 5, f"mosaic down took {took:.1f}s\n{stack.log('mosaic')}"
    assert wait_all_gone(everything, timeout=1) == []
    assert under(stack.data) == []
