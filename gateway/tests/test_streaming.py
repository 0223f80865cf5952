"""Connections and bodies: keep-alive reuse upstream and downstream, pipelining, chunked and
large bodies in both directions, streaming without buffering, 100-continue, HTTP/1.0."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator

import pytest
from gateway_support import (
    Backend,
    BackendFactory,
    Gateway,
    GatewayFactory,
    RawConnection,
    gateway_config,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def echo(shared_backends: BackendFactory) -> Backend:
    return shared_backends("echo")


@pytest.fixture(scope="module")
async def gateway(
    echo: Backend, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway"))
    config = gateway_config(
        {"echo": {"instances": [echo.url], "pool": {"max_connections": 8}}},
        [
            {
                "path": "/*",
                "methods": ["GET", "POST", "PUT", "HEAD"],
                "backend": "echo",
                "max_body_bytes": "64MiB",
            }
        ],
    )
    gw = factory(config)
    yield gw
    await factory.close()


async def test_upstream_connections_are_reused_across_requests(
    echo: Backend, gateway: Gateway
) -> None:
    client = gateway.client()
    await client.get("/warm-up")
    echo.reset()
    for index in range(40):
        response = await client.get(f"/seq/{index}")
        assert response.status_code == 200
    # Sequential requests ride one pooled connection; a POST with a body too.
    await client.post("/seq/post", content=b"x" * 1000)
    stats = echo.stats()
    assert stats["requests"] == 41
    assert stats["connections"] == 1


async def test_concurrent_load_is_bounded_by_the_pool(echo: Backend, gateway: Gateway) -> None:
    echo.reset()
    clients = [gateway.client() for _ in range(20)]
    for _ in range(3):
        responses = await asyncio.gather(
            *(c.get("/concurrent", headers={"x-test-sleep": "0.05"}) for c in clients)
        )
        assert all(r.status_code == 200 for r in responses)
    stats = echo.stats()
    assert stats["requests"] == 60
    # max_connections is 8: twenty concurrent clients share at most eight upstream connections.
    assert stats["connections"] <= 8


async def test_client_keep_alive_and_pipelined_requests_answered_in_order(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    # Three requests in one write, the middle one with a body and slow to answer.
    await conn.send(
        b"GET /p/1 HTTP/1.1\r\nhost: x\r\n\r\n"
        b"POST /p/2 HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nx-test-sleep: 0.3\r\n\r\nhello"
        b"GET /p/3 HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    first, second, third = [await conn.read_response() for _ in range(3)]
    assert [first.json()["path"], second.json()["path"], third.json()["path"]] == [
        "/p/1",
        "/p/2",
        "/p/3",
    ]
    assert second.json()["body"] == "hello"
    assert (
        len(
            {
                first.header("x-request-id"),
                second.header("x-request-id"),
                third.header("x-request-id"),
            }
        )
        == 3
    )
    # Still open for more.
    await conn.send(b"GET /p/4 HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await conn.read_response()).json()["path"] == "/p/4"
    await conn.close()


async def test_connection_close_is_honoured(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    await conn.send(b"GET /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    response = await conn.read_response()
    assert response.status == 200
    assert response.header("connection") == "close"
    assert await conn.closed_by_peer()
    await conn.close()


async def test_chunked_request_body_is_streamed_as_chunks(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    await conn.send(b"POST /chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
    for piece in (b"first-", b"second-", b"third"):
        await conn.send(b"%x\r\n%b\r\n" % (len(piece), piece))
        await asyncio.sleep(0.05)
    await conn.send(b"0\r\nx-trailer: dropped\r\n\r\n")
    response = await conn.read_response()
    seen = response.json()
    assert seen["body"] == "first-second-third"
    headers = dict(seen["headers"])
    assert headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in headers
    assert "x-trailer" not in headers
    await conn.close()


async def test_request_body_reaches_the_backend_before_it_is_complete(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    # The backend answers on the first body bytes; the rest is never sent. A gateway that
    # buffered whole bodies would wait forever here.
    await conn.send(
        b"POST /early HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\nx-test-early: 1\r\n\r\n"
        b"the-beginning"
    )
    response = await conn.read_response(timeout=10)
    assert response.json()["first_chunk"].startswith("the-beginning")
    # The rest of the body was never read: the connection cannot be reused and says so.
    assert response.header("connection") == "close"
    await conn.close()


async def test_chunked_response_is_passed_through_chunked(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    await conn.send(
        b"GET /chunks HTTP/1.1\r\nhost: x\r\nx-test-chunks: 50\r\nx-test-chunk-size: 100\r\n\r\n"
    )
    response = await conn.read_response()
    assert response.chunked
    assert response.header("content-length") is None
    expected = b"".join((b"%d:" % i).ljust(100, b"x") for i in range(50))
    assert response.body == expected
    await conn.close()


async def test_response_is_streamed_not_buffered(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    started = time.monotonic()
    await conn.send(
        b"GET /slow-chunks HTTP/1.1\r\nhost: x\r\nx-test-chunks: 5\r\nx-test-chunk-delay: 0.5\r\n\r\n"
    )
    await conn.reader.readuntil(b"\r\n\r\n")
    first_chunk = await conn.reader.readuntil(b"\r\n")
    first_at = time.monotonic() - started
    assert int(first_chunk.strip(), 16) == 10
    # The backend needs 2.5 s for all five chunks; the first one must not wait for the rest.
    assert first_at < 1.5
    await conn.close()


async def test_large_bodies_both_ways(gateway: Gateway) -> None:
    client = gateway.client(timeout=60)
    payload = os.urandom(8 * 1024 * 1024 + 7)
    response = await client.post("/upload", content=payload, headers={"x-test-digest": "1"})
    assert response.json() == {
        "length": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }

    async def chunks() -> AsyncIterator[bytes]:
        for index in range(64):
            yield bytes([index]) * 65536

    response = await client.put("/upload-chunked", content=chunks(), headers={"x-test-digest": "1"})
    expected = b"".join(bytes([i]) * 65536 for i in range(64))
    assert response.json() == {
        "length": len(expected),
        "sha256": hashlib.sha256(expected).hexdigest(),
    }

    size = 10 * 1024 * 1024 + 3
    response = await client.get("/download", headers={"x-test-size": str(size)})
    assert response.headers["content-length"] == str(size)
    block = bytes(range(256)) * 256
    assert response.content == (block * (size // len(block) + 1))[:size]


async def test_expect_100_continue_is_answered_by_the_gateway(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    await conn.send(
        b"POST /continue HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    await conn.send(b"hello")
    response = await conn.read_response()
    seen = response.json()
    assert seen["body"] == "hello"
    assert "expect" not in dict(seen["headers"])
    await conn.close()


async def test_http10_client_gets_a_close_delimited_body(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    await conn.send(b"GET /old HTTP/1.0\r\nhost: x\r\nx-test-chunks: 3\r\n\r\n")
    response = await conn.read_response()
    assert not response.chunked
    assert response.body == b"".join((b"%d:" % i).ljust(10, b"x") for i in range(3))
    await conn.close()


async def test_a_slow_reader_holds_back_the_upstream_and_the_connection_is_reused(
    echo: Backend, gateways: GatewayFactory
) -> None:
    gateway = gateways(
        gateway_config(
            {"echo": {"instances": [echo.url], "pool": {"max_connections": 1}}},
            [{"path": "/*", "methods": ["GET"], "backend": "echo", "timeout": "5s"}],
        )
    )
    size = 32 * 1024 * 1024
    conn = await RawConnection.open(gateway.port)
    await conn.send(b"GET /big HTTP/1.1\r\nhost: x\r\nx-test-size: %d\r\n\r\n" % size)
    # Not reading: the gateway must stop reading the instance too (32 MiB fill every buffer
    # between them within milliseconds).
    await asyncio.sleep(0.5)
    response = await conn.read_response(timeout=30)
    assert len(response.body) == size
    # The single pooled connection was handed back usable (not left paused): these pass
    # through it well within the route's timeout.
    for index in range(3):
        await conn.send(b"GET /after/%d HTTP/1.1\r\nhost: x\r\n\r\n" % index)
        assert (await conn.read_response(timeout=5)).json()["path"] == f"/after/{index}"
    await conn.close()
