"""Helpers of the end-to-end tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
