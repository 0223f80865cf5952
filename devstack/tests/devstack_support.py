"""Helpers to drive the real `mosaic` CLI, as a separate process, against the fake service."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from mosaic_devstack.procs import ProcessRef

FAKE = Path(__file__).with_name("fake_service.py")
SECRET = "FAKE_AT_REST_SECRET"
"""A secret the registry asks `mosaic up` to generate for every fake service (as for auth)."""


class Stack:
    """One data folder, one fake-service registry, and the `mosaic` commands run on them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.registry = root / "services.json"
        self.schema = ""
        self.use_services("fake")
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "NATS_URL", "MOSAIC_DATA", "REDIS_URL"}
        }
        self.env["NO_COLOR"] = "1"
        self.out = root / "up.out"
        self.popen: subprocess.Popen[bytes] | None = None

    def use_services(self, *names: str) -> None:
        """Write the registry: one fake service per name, each with a schema of its own."""
        tag = uuid.uuid4().hex[:10]
        entries = [
            {
                "name": name,
                "command": [sys.executable, str(FAKE)],
                "schema": f"{name}_{tag}",
                "secrets": [SECRET],
            }
            for name in names
        ]
        self.schema = f"{names[0]}_{tag}"
        self.registry.write_text(json.dumps(entries))

    def mosaic(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mosaic_devstack.cli", *args, "--data", str(self.data)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def up_detached(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.mosaic("up", "--detach", "--services", str(self.registry), *args)

    def up_foreground(self, *args: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "mosaic_devstack.cli", "up", "--data", str(self.data)]
        argv += ["--services", str(self.registry), *args]
        with self.out.open("wb") as out:
            self.popen = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self.popen

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def state(self) -> dict[str, Any]:
        return json.loads((self.data / "state.json").read_text())  # type: ignore[no-any-return]

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.popen is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.popen.poll()
            assert code is None, f"mosaic up exited with {code}:\n{self.output()}"
            with contextlib.suppress(FileNotFoundError, ValueError):
                state = self.state()
                if state["status"] == "ready":
                    return state
            time.sleep(0.1)
        raise AssertionError(f"not ready after {timeout}s:\n{self.output()}")

    def status_json(self) -> dict[str, Any]:
        result = self.mosaic("status", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def log(self, name: str) -> str:
        path = self.data / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def recorded(state: dict[str, Any]) -> list[ProcessRef]:
    """The supervisor and every process state.json says it started."""
    refs = [ProcessRef.of(state["supervisor_pid"])]
    gateway = state.get("gateway")
    if gateway and gateway["pid"]:
        refs.append(ProcessRef(gateway["pid"], gateway["pid_started"]))
    refs += [ProcessRef(i["pid"], i["pid_started"]) for i in state["instances"] if i["pid"]]
    for server in (state["postgres"], state["nats"], *state.get("nats_nodes", [])):
        # A cluster's `nats` entry lists its nodes' URLs and has no process of its own.
        if server and server["embedded"] and server["pid"]:
            refs.append(ProcessRef(server["pid"], server["pid_started"]))
    return refs


def family(state: dict[str, Any]) -> list[ProcessRef]:
    """Recorded processes plus all their descendants right now (PostgreSQL backends included)."""
    refs = recorded(state)
    for ref in list(refs):
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(ref.pid).children(recursive=True):
                refs.append(ProcessRef.of(child.pid))
    return list(dict.fromkeys(refs))


def under(path: Path) -> list[int]:
    """Pids of processes whose command line mentions `path` (embedded servers name their data)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(path) in part for part in proc.info["cmdline"] or []):
                found.append(proc.pid)
    return found


def wait_all_gone(refs: list[ProcessRef], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = [r for r in refs if r.alive()]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [r for r in alive if r.alive()]
    return [r.pid for r in alive]


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5.0, trust_env=False)


@contextlib.contextmanager
def occupy(*ports: int) -> Iterator[None]:
    """Hold the well-known ports, if nobody else already does, for the duration."""
    held = []
    for port in ports:
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
            held.append(sock)
        except OSError:
            sock.close()  # already busy: just as good
    try:
        yield
    finally:
        for sock in held:
            sock.close()


def logged_pids(text: str) -> list[int]:
    """Pids the fake service logged (it logs its own pid in every JSON line)."""
    pids = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            pids.append(int(json.loads(line)["pid"]))
    return sorted(set(pids))
