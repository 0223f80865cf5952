"""Helpers for the gateway's tests: real backend processes (backend_app.py, handed from test to
test by a BackendPool), real gateway processes (the CLI's `serve`, forked from a fork server that
has imported the gateway: forkserver_support.py), and a raw HTTP/1.1 connection for what httpx
hides (pipelining, framing, reuse)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from forkserver_support import ForkedProcess, ForkServer

BACKEND_APP = Path(__file__).parent / "backend_app.py"

# The tests speak plain HTTP: one TLS context for all their clients, not one each (loading the
# certificate store costs a new client about 25 ms of CPU, and a test may make dozens).
TLS = ssl.create_default_context()


def plain_get(url: str, **kwargs: Any) -> httpx.Response:
    """`httpx.get` with the shared TLS context."""
    return httpx.get(url, verify=TLS, **kwargs)


def plain_client(**kwargs: Any) -> httpx.AsyncClient:
    """`httpx.AsyncClient` with the shared TLS context."""
    return httpx.AsyncClient(verify=TLS, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | ForkedProcess, log: Path, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}):\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.01)  # a forked gateway is up in about 50 ms
    raise RuntimeError(f"port {port} never opened:\n{log.read_text()}")


@dataclass
class Process:
    proc: subprocess.Popen[bytes] | ForkedProcess
    log: Path

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 15) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text()


# Gateways are forked from a server that has imported the gateway (forkserver_support.py), one
# per test process; GATEWAY_TESTS_EXEC=1 starts each with `python -m mosaic_gateway` instead.
_fork_servers: list[ForkServer] = []  # the one of this test process, once started
GATEWAY_ENV = {"LOG_FORMAT": "json"}


def _spawn_gateway(argv: list[str], log: Path, *, exec_cli: bool = False) -> Process:
    env = {**os.environ, **GATEWAY_ENV}
    if exec_cli or os.environ.get("GATEWAY_TESTS_EXEC") == "1":
        return _spawn([sys.executable, "-m", "mosaic_gateway", *argv], log, GATEWAY_ENV)
    if not _fork_servers:
        _fork_servers.append(ForkServer(env))
    return Process(_fork_servers[0].spawn(argv, log, env), log)


def close_fork_server() -> None:
    while _fork_servers:
        _fork_servers.pop().close()


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> Process:
    handle = log.open("wb")
    proc = subprocess.Popen(
        args, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    handle.close()
    return Process(proc, log)


@dataclass
class Backend:
    name: str
    port: int
    mode: str
    process: Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        return plain_get(f"{self.url}/__stats").json()  # type: ignore[no-any-return]

    def reset(self) -> None:
        plain_get(f"{self.url}/__reset")

    def set_healthy(self, ok: bool) -> None:
        plain_get(f"{self.url}/__health", params={"ok": "1" if ok else "0"})

    def held(self, gate: str) -> int:
        """How many requests wait at `gate` (sent with `x-test-hold: GATE`)."""
        return int(plain_get(f"{self.url}/__held").json().get(gate, 0))

    def release(self, gate: str) -> None:
        """The requests waiting at `gate` go on (and later ones pass it at once)."""
        plain_get(f"{self.url}/__release", params={"gate": gate})

    def alive(self) -> bool:
        return self.process.proc.poll() is None

    def kill(self) -> None:
        self.process.kill()

    def restart(self) -> None:
        self.process.kill()
        self.process = _spawn(self.process.proc.args, self.process.log)  # type: ignore[arg-type]
        wait_for_port(self.port, self.process.proc, self.process.log)


class BackendPool:
    """Backend processes kept from one test to the next (in one test process): a backend still
    running when its test ends is handed to the next test that asks for its name and mode,
    restored first (`/__restore`: counts, failures, health and gates as at its start), instead
    of a new process. Restored when taken, not when given back: by then the gateways of the test
    that used it are stopped, so nothing of theirs can still reach it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.idle: list[Backend] = []

    def take(self, name: str, mode: str) -> Backend | None:
        for backend in list(self.idle):
            if (backend.name, backend.mode) != (name, mode):
                continue
            self.idle.remove(backend)
            if not backend.alive():
                continue
            try:
                plain_get(f"{backend.url}/__restore", timeout=5).raise_for_status()
            except httpx.HTTPError:
                backend.kill()
                continue
            return backend
        return None

    def give(self, backend: Backend) -> None:
        if backend.alive():
            self.idle.append(backend)

    def close(self) -> None:
        for backend in self.idle:
            backend.kill()
        self.idle.clear()


class BackendFactory:
    """Starts backend processes (or takes them from `pool`, which gets them back at `close`).
    With `reuse`, asking again for a name and mode already running gives that backend (for
    tests that only read from it), not another one."""

    def __init__(
        self, directory: Path, *, reuse: bool = False, pool: BackendPool | None = None
    ) -> None:
        self.directory = directory
        self.started: list[Backend] = []
        self.reuse = reuse
        self.pool = pool

    def __call__(self, name: str, mode: str = "echo", port: int | None = None) -> Backend:
        if self.reuse and port is None:
            for backend in self.started:
                if (backend.name, backend.mode) == (name, mode) and backend.alive():
                    return backend
        pooled = self.pool.take(name, mode) if self.pool is not None and port is None else None
        if pooled is not None:
            self.started.append(pooled)
            return pooled
        port = port or free_port()
        # A pooled process outlives the test (and its tmp_path): its log is the pool's.
        directory = self.pool.directory if self.pool is not None else self.directory
        log = directory / f"backend-{name}-{port}.log"
        process = _spawn(
            [sys.executable, str(BACKEND_APP), "--port", str(port), "--name", name, "--mode", mode],
            log,
        )
        wait_for_port(port, process.proc, log)
        backend = Backend(name, port, mode, process)
        self.started.append(backend)
        return backend

    def close(self) -> None:
        for backend in self.started:
            if self.pool is not None:
                self.pool.give(backend)
            else:
                backend.kill()
        self.started.clear()


@dataclass
class Gateway:
    port: int
    admin_port: int
    process: Process
    config_path: Path
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        client = plain_client(base_url=self.url, timeout=kwargs.pop("timeout", 15), **kwargs)
        self.clients.append(client)
        return client

    def admin(self, path: str) -> Any:
        return plain_get(f"http://127.0.0.1:{self.admin_port}{path}").json()

    async def close_clients(self) -> None:
        for client in self.clients:
            await client.aclose()


# Header and query allow-lists deny by default; tests of the proxy's mechanics forward
# everything, tests of the allow-lists set their own.
ALLOW_ALL = {"headers": {"allow": ["*"]}, "query": {"allow": ["*"]}}


def gateway_config(
    backends: dict[str, Any], routes: list[dict[str, Any]], **server: Any
) -> dict[str, Any]:
    return {"server": server, "defaults": dict(ALLOW_ALL), "backends": backends, "routes": routes}


class GatewayFactory:
    """Starts gateway processes: forked from the fork server, or with `exec_cli` each started
    as `python -m mosaic_gateway serve` from scratch (the tests of the process itself)."""

    def __init__(self, directory: Path, *, exec_cli: bool = False) -> None:
        self.directory = directory
        self.started: list[Gateway] = []
        self._count = 0
        self.exec_cli = exec_cli

    def __call__(
        self, config: dict[str, Any], workers: int = 1, args: Sequence[str] = ()
    ) -> Gateway:
        self._count += 1
        config = dict(config)
        server = dict(config.get("server") or {})
        server.setdefault("listen", "127.0.0.1")
        server.setdefault("port", free_port())
        server.setdefault("admin", {"port": free_port()})
        server.setdefault("workers", workers)
        config["server"] = server
        path = self.directory / f"gateway-{self._count}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        log = self.directory / f"gateway-{self._count}.log"
        process = _spawn_gateway(
            ["serve", "--config", str(path), *args], log, exec_cli=self.exec_cli
        )
        gateway = Gateway(server["port"], server["admin"]["port"], process, path)
        self.started.append(gateway)
        wait_for_port(gateway.admin_port, process.proc, log)
        wait_for_port(gateway.port, process.proc, log)
        return gateway

    async def close(self) -> None:
        for gateway in self.started:
            await gateway.close_clients()
            gateway.process.stop()


# --- raw HTTP/1.1 over a socket, for what httpx hides (pipelining, framing, connections) -------


class RawConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_response(self, timeout: float = 10) -> RawResponse:
        """Read one response; de-chunks a chunked body and remembers that it was chunked."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = []
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers.append((name.strip().lower(), value.strip()))
            response = RawResponse(status, headers, b"", chunked=False)
            if status in (204, 304) or 100 <= status < 200:
                return response
            if response.header("transfer-encoding") == "chunked":
                response.chunked = True
                body = bytearray()
                while True:
                    size_line = await self.reader.readuntil(b"\r\n")
                    size = int(size_line.strip(), 16)
                    if size == 0:
                        await self.reader.readuntil(b"\r\n")
                        break
                    body += await self.reader.readexactly(size)
                    await self.reader.readexactly(2)
                response.body = bytes(body)
            elif response.header("content-length") is not None:
                response.body = await self.reader.readexactly(
                    int(response.header("content-length"))
                )
            else:
                response.body = await self.reader.read()
            return response

    async def closed_by_peer(self, timeout: float = 5) -> bool:
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(1) == b""
        except ConnectionError:
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool

    def header(self, name: str) -> Any:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        import json

        return json.loads(self.body)


async def eventually(check: Callable[[], bool], timeout: float = 10, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(interval)
    assert check(), "condition not reached in time"
