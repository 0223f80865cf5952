"""The gateway process: graceful shutdown, several workers on one port, idle and slow clients."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from gateway_support import (
    BackendFactory,
    GatewayFactory,
    RawConnection,
    eventually,
    gateway_config,
    plain_client,
    plain_get,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def gateways(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """Gateways started as `python -m mosaic_gateway serve` (not forked from the tests' fork
    server, forkserver_support.py): these tests are of the process itself."""
    factory = GatewayFactory(tmp_path, exec_cli=True)
    yield factory
    await factory.close()


def echo_config(url: str, **server: object) -> dict[str, object]:
    return gateway_config(
        {"echo": {"instances": [url]}},
        [{"path": "/*", "methods": ["GET", "POST"], "backend": "echo"}],
        **server,
    )


def log_events(text: str) -> list[dict[str, object]]:
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


async def test_sigterm_finishes_in_flight_requests_and_closes_idle_connections(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = shared_backends("echo")
    gateway = gateways(echo_config(echo.url, timeouts={"shutdown_grace": "10s"}))
    idle = await RawConnection.open(gateway.port)
    await idle.send(b"GET /warm HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await idle.read_response()).status == 200

    slow = asyncio.create_task(gateway.client().get("/slow", headers={"x-test-hold": "drain"}))
    await eventually(lambda: echo.held("drain") == 1)
    gateway.process.signal(signal.SIGTERM)

    # The idle keep-alive connection is closed at once, not left to time out.
    assert await idle.closed_by_peer(timeout=1)
    # The request in flight completes normally, told that the connection will close.
    assert not slow.done()
    echo.release("drain")
    response = await slow
    assert response.status_code == 200
    assert response.json()["path"] == "/slow"
    assert response.headers["connection"] == "close"
    assert await asyncio.to_thread(gateway.process.proc.wait, 10) == 0
    events = [e["event"] for e in log_events(gateway.process.output())]
    assert "worker_draining" in events
    assert "worker_stopped" in events
    # New connections are refused after the drain.
    with pytest.raises(httpx.ConnectError):
        await plain_client().get(gateway.url)
    await idle.close()


async def test_shutdown_grace_bounds_the_wait(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = shared_backends("echo")
    gateway = gateways(echo_config(echo.url, timeouts={"shutdown_grace": "500ms"}))
    # Held by the backend past the grace (released when the backend is next restored).
    slow = asyncio.create_task(gateway.client().get("/slow", headers={"x-test-hold": "forever"}))
    await eventually(lambda: echo.held("forever") == 1)
    gateway.process.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.process.proc.wait, 4) == 0
    with pytest.raises(httpx.HTTPError):
        await slow


async def test_several_workers_share_the_port_and_a_dead_one_is_replaced(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = shared_backends("echo")
    gateway = gateways(echo_config(echo.url), workers=2)

    def worker_pids() -> set[int]:
        return {
            int(e["worker_pid"])  # type: ignore[call-overload]
            for e in log_events(gateway.process.output())
            if e.get("event") == "worker_started"
        }

    await eventually(lambda: len(worker_pids()) == 2)
    # Each admin answer names the worker that gave it; fresh connections land on both.
    seen = Counter()
    for _ in range(40):
        seen[plain_get(f"http://127.0.0.1:{gateway.admin_port}/readyz").json()["worker"]] += 1
    assert set(seen) == worker_pids()

    victim = sorted(worker_pids())[0]
    os.kill(victim, signal.SIGKILL)
    await eventually(lambda: len(worker_pids()) == 3, timeout=10)
    for _ in range(20):
        async with plain_client() as client:
            assert (await client.get(f"{gateway.url}/after")).status_code == 200
    gateway.process.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.process.proc.wait, 15) == 0


async def test_the_sweep_closes_idle_connections_and_answers_slow_heads_with_a_408(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    """The configured timeouts reach the once-a-second sweep. Which timeout applies to which
    connection, to the exact moment, is tested sans-IO in test_wire.py."""
    echo = shared_backends("echo")
    gateway = gateways(echo_config(echo.url, timeouts={"keep_alive": "1s", "header": "1s"}))

    async def idle_after_a_response() -> None:
        conn = await RawConnection.open(gateway.port)
        await conn.send(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await conn.read_response()).status == 200
        assert await conn.closed_by_peer(timeout=4)
        await conn.close()

    async def head_never_completes() -> None:
        conn = await RawConnection.open(gateway.port)
        await conn.send(b"GET /x HTTP/1.1\r\nhost: x\r\nx-slow: ")
        response = await conn.read_response(timeout=5)
        assert response.status == 408
        assert response.json()["code"] == "gateway.request_timeout"
        assert await conn.closed_by_peer()
        await conn.close()

    async def never_sends_a_request() -> None:
        conn = await RawConnection.open(gateway.port)
        assert await conn.closed_by_peer(timeout=4)
        await conn.close()

    await asyncio.gather(idle_after_a_response(), head_never_completes(), never_sends_a_request())


async def test_bind_failure_is_reported_and_exits(
    gateways: GatewayFactory, shared_backends: BackendFactory
) -> None:
    echo = shared_backends("echo")
    first = gateways(echo_config(echo.url))
    # Another program (not a gateway sharing by SO_REUSEPORT) holds the port.
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(RuntimeError, match="bind_failed"):
            gateways(echo_config(echo.url, port=port))
    finally:
        holder.close()
    assert (await first.client().get("/still")).status_code == 200


async def test_workers_leave_when_their_supervisor_is_killed(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    """SIGKILL gives the supervisor no chance to forward a signal: the workers notice their
    parent is gone and drain, instead of holding the port as orphans."""
    import psutil

    echo = shared_backends("echo")
    gateway = gateways(echo_config(echo.url), workers=2)
    assert (await gateway.client().get("/echo/x")).status_code == 200
    supervisor = psutil.Process(gateway.process.proc.pid)
    workers = supervisor.children()
    assert len(workers) == 2
    gateway.process.kill()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    for orphan in alive:
        orphan.kill()
    assert alive == [], "workers outlived their supervisor"
    assert len(gone) == 2
