"""One replica of a service: its process, its output, its readiness."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

import httpx

from mosaic_devstack.procs import ProcessRef
from mosaic_devstack.services import Service
from mosaic_devstack.state import InstanceInfo
from mosaic_devstack.streams import LineSink, pump, tail_text

HOST = "127.0.0.1"


class NotReadyError(RuntimeError):
    pass


class Instance:
    def __init__(
        self, service: Service, name: str, port: int, env: Mapping[str, str], sink: LineSink
    ) -> None:
        self.service = service
        self.name = name
        self.port = port
        self.env = dict(env)
        self.sink = sink
        self.url = f"http://{HOST}:{port}"
        self.info = InstanceInfo(
            service=service.name,
            instance=name,
            url=self.url,
            port=port,
            ready_path=service.ready_path,
        )
        self.process: asyncio.subprocess.Process | None = None
        self.pass_fds: tuple[int, ...] = ()  # file descriptors the process inherits
        self.spawned_at = 0.0
        self._pump: asyncio.Task[None] | None = None

    def serve_argv(self) -> list[str]:
        return self.service.argv(
            "serve", "--host", HOST, "--port", str(self.port), "--instance-id", self.name
        )

    async def probe(self, client: httpx.AsyncClient) -> str | None:
        """None when the instance is ready, else what the check saw (for the error message)."""
        url = self.url + self.service.ready_path
        try:
            answer = await client.get(url, timeout=1.0)
        except httpx.HTTPError as exc:
            return f"GET {url}: last attempt: {type(exc).__name__}"
        return None if answer.status_code == 200 else f"GET {url}: last answer {answer.status_code}"

    async def spawn(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.serve_argv(),
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Own process group: a terminal's Ctrl-C must reach the supervisor only, which then
            # stops everything in order (services, NATS, PostgreSQL).
            start_new_session=True,
            pass_fds=self.pass_fds,
        )
        self.spawned_at = time.monotonic()
        ref = ProcessRef.of(self.process.pid)
        self.info.pid, self.info.pid_started = ref.pid, ref.started
        assert self.process.stdout is not None
        self._pump = asyncio.create_task(pump(self.process.stdout, self.sink))

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def wait_exit(self) -> int:
        assert self.process is not None
        code = await self.process.wait()
        await self._drain_output(patience=2.0)
        return code

    async def wait_ready(self, client: httpx.AsyncClient, limit: float) -> None:
        """Poll `probe` (GET /readyz) until ready; NotReadyError (with the log tail) on exit or
        timeout."""
        assert self.process is not None
        deadline = time.monotonic() + limit
        exited = asyncio.create_task(self.process.wait())
        try:
            while True:
                last = await self.probe(client)
                if last is None:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NotReadyError(
                        f"{self.name} not ready after {limit:g}s ({last}); "
                        f"last lines of {self.sink.path}:\n{tail_text(self.sink.path)}"
                    )
                done, _ = await asyncio.wait({exited}, timeout=min(0.1, remaining))
                if done:
                    await self._drain_output(patience=2.0)
                    raise NotReadyError(
                        f"{self.name} exited with code {exited.result()} before it was ready; "
                        f"last lines of {self.sink.path}:\n{tail_text(self.sink.path)}"
                    )
        finally:
            exited.cancel()

    def send(self, sig: int) -> None:
        if self.running():
            assert self.process is not None
            # The whole group, so helpers the service itself started go too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    async def stop(self, grace: float, force: asyncio.Event | None = None) -> None:
        """SIGTERM, up to `grace` seconds (less if `force` is set) to exit, then SIGKILL."""
        if not self.running():
            await self._drain_output(patience=0.5)
            return
        assert self.process is not None
        self.send(signal.SIGTERM)
        waiter = asyncio.create_task(self.process.wait())
        waits: set[asyncio.Task[Any]] = {waiter}
        forced = asyncio.create_task(force.wait()) if force is not None else None
        if forced is not None:
            waits.add(forced)
        await asyncio.wait(waits, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        if forced is not None:
            forced.cancel()
        if not waiter.done():
            self.sink.write(f"(mosaic: {self.name} did not stop; killing it)".encode())
            self.send(signal.SIGKILL)
            await waiter
        await self._drain_output(patience=1.0)

    async def _drain_output(self, patience: float) -> None:
        if self._pump is None or self._pump.done():
            return
        # A grandchild may hold the pipe open after the child exits; do not wait for it forever.
        done, _ = await asyncio.wait({self._pump}, timeout=patience)
        if not done:
            self._pump.cancel()
