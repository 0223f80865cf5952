"""When the upstream does not answer properly: timeouts, instances down, broken responses."""

from __future__ import annotations

import httpx
import pytest
from gateway_support import (
    BackendFactory,
    GatewayFactory,
    RawConnection,
    eventually,
    free_port,
    gateway_config,
)

pytestmark = pytest.mark.timeout(60)


async def test_slow_upstream_is_a_504_problem_and_the_gateway_stays_usable(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = shared_backends("echo")
    gateway = gateways(
        gateway_config(
            {"echo": {"instances": [echo.url], "ejection": {"consecutive_failures": 100}}},
            [
                {"path": "/fast/*", "methods": ["GET"], "backend": "echo", "timeout": "400ms"},
                {"path": "/patient/*", "methods": ["GET"], "backend": "echo"},
            ],
            timeouts={"request": "3s"},
        )
    )
    client = gateway.client()
    response = await client.get("/fast/x", headers={"x-test-sleep": "2", "x-request-id": "slow-1"})
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "slow-1"
    assert response.json()["code"] == "gateway.timeout"
    # The route's own timeout applies, not the default: this one waits long enough.
    response = await client.get("/patient/x", headers={"x-test-sleep": "0.7"})
    assert response.status_code == 200
    # The client connection that got the 504 keeps working.
    response = await client.get("/fast/x")
    assert response.status_code == 200


async def test_streaming_body_that_stalls_is_cut_off(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = shared_backends("echo")
    gateway = gateways(
        gateway_config(
            {"echo": {"instances": [echo.url]}},
            [{"path": "/*", "methods": ["GET"], "backend": "echo", "timeout": "800ms"}],
        )
    )
    conn = await RawConnection.open(gateway.port)
    # Chunks keep coming every 0.25 s for 1.25 s: longer than the timeout, but never silent
    # for as long as it, so the response completes.
    await conn.send(
        b"GET /drip HTTP/1.1\r\nhost: x\r\nx-test-chunks: 5\r\nx-test-chunk-delay: 0.25\r\n\r\n"
    )
    response = await conn.read_response(timeout=10)
    assert response.status == 200
    assert response.body.startswith(b"0:")
    await conn.close()
    # Silence longer than the timeout after the head: the connection is closed mid-body.
    conn = await RawConnection.open(gateway.port)
    await conn.send(
        b"GET /stall HTTP/1.1\r\nhost: x\r\nx-test-chunks: 2\r\nx-test-chunk-delay: 3\r\n\r\n"
    )
    head = await conn.reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    rest = await conn.reader.read()  # until the gateway closes
    assert not rest.endswith(b"0\r\n\r\n")  # never completed
    await conn.close()


async def test_instance_down_is_a_503_problem(gateways: GatewayFactory) -> None:
    nobody = free_port()
    gateway = gateways(
        gateway_config(
            {"gone": {"instances": [f"http://127.0.0.1:{nobody}"]}},
            [{"path": "/*", "methods": ["GET"], "backend": "gone"}],
        )
    )
    response = await gateway.client().get("/anything")
    assert response.status_code == 503
    assert response.json()["code"] == "gateway.unavailable"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"


async def test_connection_closed_without_answer_is_a_502(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    closer = shared_backends("closer", mode="close")
    gateway = gateways(
        gateway_config(
            {"closer": {"instances": [closer.url]}},
            [{"path": "/*", "methods": ["GET", "POST"], "backend": "closer"}],
        )
    )
    client = gateway.client()
    for method in ("GET", "POST"):
        response = await client.request(method, "/x", content=b"body" if method == "POST" else None)
        assert response.status_code == 502
        assert response.json()["code"] == "gateway.bad_gateway"


async def test_garbage_response_is_a_502(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    liar = shared_backends("liar", mode="garbage")
    gateway = gateways(
        gateway_config(
            {"liar": {"instances": [liar.url]}},
            [{"path": "/*", "methods": ["GET"], "backend": "liar"}],
        )
    )
    response = await gateway.client().get("/x")
    assert response.status_code == 502
    assert response.json()["code"] == "gateway.bad_gateway"


async def test_upstream_dying_mid_body_breaks_the_client_connection(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = shared_backends("echo")
    gateway = gateways(
        gateway_config(
            {"echo": {"instances": [echo.url]}},
            [{"path": "/*", "methods": ["GET"], "backend": "echo"}],
        )
    )
    # The head (200, content-length 1000) already went out: the only honest signal left is
    # to close the connection before the announced length, never to pad or to re-frame.
    with pytest.raises(httpx.RemoteProtocolError):
        await gateway.client().get("/x", headers={"x-test-die-midway": "1"})
    response = await gateway.client().get("/y")
    assert response.status_code == 200


async def test_client_leaving_mid_request_releases_the_instance(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = shared_backends("echo")
    gateway = gateways(
        gateway_config(
            {"echo": {"instances": [echo.url], "ejection": {"consecutive_failures": 1}}},
            [{"path": "/*", "methods": ["GET"], "backend": "echo"}],
        )
    )
    for count in range(1, 4):
        conn = await RawConnection.open(gateway.port)
        await conn.send(b"GET /slow HTTP/1.1\r\nhost: x\r\nx-test-hold: left\r\n\r\n")
        await eventually(lambda count=count: echo.held("left") == count)  # forwarded
        await conn.close()

    def instance() -> dict[str, object]:
        return gateway.admin("/admin/backends")["backends"]["echo"]["instances"][0]  # type: ignore[no-any-return]

    # Nothing stays counted in flight, the abandoned upstream connections are closed, and a
    # client going away is not held against the instance (one failure would eject it here).
    await eventually(
        lambda: (
            instance()["outstanding"] == 0 and instance()["connections"] == {"open": 0, "idle": 0}
        )
    )
    assert instance()["ejected"] is False
    assert (await gateway.client().get("/next")).status_code == 200
    echo.release("left")
