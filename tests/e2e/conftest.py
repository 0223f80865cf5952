"""The running system, started exactly as a developer starts it: `mosaic up` (detached)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

MOSAIC = [sys.executable, "-m", "mosaic_devstack.cli"]


class System:
    def __init__(self, data: Path) -> None:
        self.data = data
        # Servers of the machine are not ours to use here: the stack starts its own.
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "NATS_URL", "REDIS_URL", "MOSAIC_DATA"}
        }

    def mosaic(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MOSAIC, *args, "--data", str(self.data)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        done = self.mosaic("status", "--json")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def urls(self, service: str) -> list[str]:
        return [i["url"] for i in self.status()["instances"] if i["service"] == service]

    def pids(self) -> list[int]:
        state = json.loads((self.data / "state.json").read_text())
        pids = [state["supervisor_pid"], state["postgres"]["pid"], state["nats"]["pid"]]
        return [p for p in pids + [i["pid"] for i in state["instances"]] if p]


@pytest.fixture(scope="session")
def system() -> Iterator[System]:
    # Outside pytest's temp root: PostgreSQL runs as its own user and must reach the folder.
    root = Path(tempfile.mkdtemp(prefix="mosaic-e2e-"))
    root.chmod(0o755)
    system = System(root / "data")
    up = system.mosaic("up", "--detach", "--replicas", "2", timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
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
