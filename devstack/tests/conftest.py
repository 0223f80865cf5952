"""Fixtures for the devstack tests (helpers live in devstack_support.py)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from devstack_support import Stack, family, under

from mosaic_devstack.procs import ProcessRef


@pytest.fixture
def stack() -> Iterator[Stack]:
    # Not under pytest's tmp_path: when tests run as root, PostgreSQL runs as another user that
    # must traverse every parent of its data folder, and any pytest session starting meanwhile
    # resets /tmp/pytest-of-root to 0700, which makes initdb fail with "Permission denied".
    root = Path(tempfile.mkdtemp(prefix="mosaic-devstack-test-"))
    s = Stack(root)
    try:
        yield s
    finally:
        # Whatever the test did, leave nothing running.
        state_file = s.data / "state.json"
        leftovers: list[ProcessRef] = []
        if state_file.exists():
            with contextlib.suppress(ValueError, KeyError):
                leftovers = family(s.state())
            s.mosaic("down", timeout=90)
        if s.popen is not None and s.popen.poll() is None:
            s.popen.send_signal(signal.SIGTERM)
            try:
                s.popen.wait(30)
            except subprocess.TimeoutExpired:
                s.popen.kill()
                s.popen.wait()
        for ref in leftovers:
            ref.signal(signal.SIGKILL)
        # Last resort: whatever still names the folder (a gateway's workers orphaned by a
        # failing test, say) goes too.
        for pid in under(s.data):
            ProcessRef.of(pid).signal(signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
