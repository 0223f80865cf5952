"""The running system, shared by the end-to-end tests (tests/e2e) and the contract fuzzing
(tests/contract): one `mosaic up` per test session, whichever of them asks first.

Started exactly as a developer starts it: `mosaic up` (detached), with the gateway in front;
client flows go through the gateway's URL, as `mosaic up` tells clients to.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from e2e_support import System


@pytest.fixture(scope="session")
def system() -> Iterator[System]:
    # Outside pytest's temp root: PostgreSQL runs as its own user and must reach the folder.
    root = Path(tempfile.mkdtemp(prefix="mosaic-e2e-"))
    root.chmod(0o755)
    system = System(root / "data")
    # Two replicas of each service behind the gateway, on a free port (8080 may be taken).
    up = system.mosaic("up", "--detach", "--replicas", "2", "--gateway-port", "0", timeout=150)
    assert up.returncode == 0, up.stdout + up.stderr
    system.up_output = up.stdout
    pids = system.pids()
    try:
        yield system
    finally:
        down = system.mosaic("down")
        assert down.returncode == 0, down.stdout + down.stderr
        leftovers = [
            p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
        ]
        shutil.rmtree(root, ignore_errors=True)
        assert leftovers == [], f"processes left behind: {leftovers}"
