"""Plain proxying through a real gateway process to real backend processes: routing, rewriting,
the gateway's own errors, headers in both directions, and pass-through of upstream answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from gateway_support import (
    BackendFactory,
    Gateway,
    GatewayFactory,
    RawConnection,
    gateway_config,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
async def gateway(
    shared_backends: BackendFactory, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    echo = shared_backends("echo")
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway"))
    config = gateway_config(
        {"echo": {"instances": [echo.url]}},
        [
            {
                "path": "/v1/things/{id}",
                "methods": ["GET", "POST", "PUT"],
                "backend": "echo",
                "rewrite": {"strip_prefix": "/v1", "add_prefix": "/internal"},
            },
            {"path": "/v1/things", "methods": ["GET"], "backend": "echo"},
            {
                "path": "/v1/small/{id}",
                "methods": ["POST"],
                "backend": "echo",
                "max_body_bytes": 100,
            },
            {
                "path": "/files/*",
                "methods": ["GET"],
                "backend": "echo",
                "rewrite": {"strip_prefix": "/files"},
            },
            {"path": "/echo/*", "methods": ["GET", "POST", "DELETE", "HEAD"], "backend": "echo"},
        ],
    )
    gw = factory(config)
    yield gw
    await factory.close()


async def get_json(gateway: Gateway, path: str, **kwargs: Any) -> tuple[httpx.Response, Any]:
    client = gateway.client()
    response = await client.get(path, **kwargs)
    return response, response.json()


async def test_route_with_parameter_is_rewritten_and_query_kept(gateway: Gateway) -> None:
    response, seen = await get_json(gateway, "/v1/things/42?b=2&a=1")
    assert response.status_code == 200
    assert seen["method"] == "GET"
    assert seen["path"] == "/internal/things/42"
    assert seen["query"] == "b=2&a=1"


async def test_static_route_and_wildcard_strip(gateway: Gateway) -> None:
    _, seen = await get_json(gateway, "/v1/things")
    assert seen["path"] == "/v1/things"
    _, seen = await get_json(gateway, "/files/css/site.css")
    assert seen["path"] == "/css/site.css"
    _, seen = await get_json(gateway, "/files")
    assert seen["path"] == "/"


async def test_unknown_path_is_a_404_problem(gateway: Gateway) -> None:
    response = await gateway.client().get("/v2/nothing", headers={"x-request-id": "abc-123"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json() == {
        "type": "urn:mosaic:problem:gateway.no_route",
        "title": "Not Found",
        "status": 404,
        "detail": "No route matches this path",
        "code": "gateway.no_route",
        "instance": "/v2/nothing",
    }


async def test_wrong_method_is_a_405_with_allow(gateway: Gateway) -> None:
    response = await gateway.client().delete("/v1/things/1")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST, PUT"
    assert response.json()["code"] == "gateway.method_not_allowed"


async def test_dot_segments_are_refused(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    await conn.send(b"GET /echo/../admin HTTP/1.1\r\nhost: x\r\n\r\n")
    response = await conn.read_response()
    assert response.status == 400
    assert response.json()["code"] == "gateway.bad_path"
    await conn.send(b"GET /echo/%2E%2e/admin HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await conn.read_response()).status == 400
    await conn.close()


async def test_body_over_the_route_limit_is_a_413_without_reading_it(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    # Only the head is sent: the gateway must answer from Content-Length alone.
    await conn.send(b"POST /v1/small/1 HTTP/1.1\r\nhost: x\r\ncontent-length: 101\r\n\r\n")
    response = await conn.read_response()
    assert response.status == 413
    assert response.json()["code"] == "gateway.body_too_large"
    assert response.header("connection") == "close"
    assert await conn.closed_by_peer()
    await conn.close()


async def test_chunked_body_over_the_limit_is_a_413(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    await conn.send(
        b"POST /v1/small/1 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        b"40\r\n" + b"a" * 64 + b"\r\n40\r\n" + b"b" * 64 + b"\r\n0\r\n\r\n"
    )
    response = await conn.read_response()
    assert response.status == 413
    assert await conn.closed_by_peer()
    await conn.close()
    # Within the limit the same route works.
    response = await gateway.client().post("/v1/small/1", content=b"x" * 100)
    assert response.status_code == 200
    assert response.json()["body_length"] == 100


async def test_request_id_is_echoed_when_sane_and_generated_otherwise(gateway: Gateway) -> None:
    client = gateway.client()
    response = await client.get("/echo/a", headers={"x-request-id": "req-7f3a"})
    assert response.headers["x-request-id"] == "req-7f3a"
    assert ["x-request-id", "req-7f3a"] in response.json()["headers"]

    for bad in ("has spaces in it", "x" * 200, 'quote"d'):
        response = await client.get("/echo/a", headers={"x-request-id": bad})
        generated = response.headers["x-request-id"]
        assert generated != bad
        assert len(generated) == 32
        # The backend saw the same generated id the client got back, and only that one.
        ids = [v for k, v in response.json()["headers"] if k == "x-request-id"]
        assert ids == [generated]

    first = (await client.get("/echo/a")).headers["x-request-id"]
    second = (await client.get("/echo/a")).headers["x-request-id"]
    assert first != second


async def test_forwarded_headers_are_set_and_spoofs_replaced(gateway: Gateway) -> None:
    response = await gateway.client().get(
        "/echo/a",
        headers={
            "host": "api.example.test",
            "x-forwarded-for": "6.6.6.6",
            "x-forwarded-proto": "https",
            "x-forwarded-host": "evil.test",
        },
    )
    headers = response.json()["headers"]
    assert ["host", "api.example.test"] in headers
    forwarded = {k: v for k, v in headers if k.startswith("x-forwarded-")}
    assert forwarded == {
        "x-forwarded-for": "127.0.0.1",
        "x-forwarded-proto": "http",
        "x-forwarded-host": "api.example.test",
    }
    assert sum(1 for k, _ in headers if k.startswith("x-forwarded-")) == 3


async def test_hop_by_hop_request_headers_are_not_forwarded(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    await conn.send(
        b"GET /echo/a HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, x-private\r\n"
        b"x-private: secret\r\nkeep-alive: timeout=5\r\nte: trailers\r\n"
        b"proxy-authorization: Basic abc\r\nupgrade: h2c\r\nx-kept: yes\r\n\r\n"
    )
    response = await conn.read_response()
    names = {k for k, _ in response.json()["headers"]}
    assert "x-kept" in names
    for dropped in (
        "connection",
        "x-private",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    ):
        assert dropped not in names, dropped
    await conn.close()


async def test_hop_by_hop_response_headers_are_not_passed_back(gateway: Gateway) -> None:
    response = await gateway.client().get(
        "/echo/a",
        headers={
            "x-test-status": "200",
            "x-test-body": "hi",
            "x-test-response-header": "keep-alive: timeout=99",
        },
    )
    assert response.text == "hi"
    assert "keep-alive" not in response.headers
    assert response.headers["x-backend"] == "echo"


async def test_upstream_error_status_and_body_pass_through_unchanged(gateway: Gateway) -> None:
    problem = '{"type":"urn:mosaic:problem:blog.slug_taken","status":409,"code":"blog.slug_taken"}'
    response = await gateway.client().post(
        "/echo/blogs",
        headers={
            "x-test-status": "409",
            "x-test-body": problem,
            "x-test-content-type": "application/problem+json",
        },
    )
    assert response.status_code == 409
    assert response.text == problem
    assert response.headers["content-type"] == "application/problem+json"
    for status in (500, 503, 422, 201):
        response = await gateway.client().get(
            "/echo/x", headers={"x-test-status": str(status), "x-test-body": f"status {status}"}
        )
        assert (response.status_code, response.text) == (status, f"status {status}")


async def test_no_content_and_head_responses_carry_no_body(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    await conn.send(b"DELETE /echo/x HTTP/1.1\r\nhost: x\r\nx-test-status: 204\r\n\r\n")
    response = await conn.read_response()
    assert response.status == 204
    # HEAD: headers of the GET, no body; then the same connection must still be in step.
    await conn.send(b"HEAD /echo/x HTTP/1.1\r\nhost: x\r\nx-test-size: 5000\r\n\r\n")
    head = await conn.reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: 5000" in head.lower()
    await conn.send(b"GET /echo/after HTTP/1.1\r\nhost: x\r\n\r\n")
    response = await conn.read_response()
    assert response.json()["path"] == "/echo/after"
    await conn.close()


async def test_absolute_form_request_target(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    await conn.send(b"GET http://api.test/echo/abs?q=1 HTTP/1.1\r\nhost: api.test\r\n\r\n")
    response = await conn.read_response()
    assert response.status == 200
    assert (response.json()["path"], response.json()["query"]) == ("/echo/abs", "q=1")
    await conn.close()


async def test_malformed_request_is_a_400_problem_and_closes(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    await conn.send(
        b"GET /echo/a HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"
    )
    response = await conn.read_response()
    assert response.status == 400
    assert response.json()["code"] == "gateway.bad_request"
    assert await conn.closed_by_peer()
    await conn.close()


async def test_oversized_headers_are_refused(gateway: Gateway) -> None:
    conn = await RawConnection.open(gateway.port)
    await conn.send(b"GET /echo/a HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 40_000 + b"\r\n\r\n")
    response = await conn.read_response()
    assert response.status == 431
    await conn.close()


async def test_admin_port_shows_routes_and_backends(gateway: Gateway) -> None:
    routes = gateway.admin("/admin/routes")["routes"]
    assert routes[0]["path"] == "/v1/things/{id}"
    assert routes[0]["rewrite"] == {"strip_prefix": "/v1", "add_prefix": "/internal"}
    backends = gateway.admin("/admin/backends")["backends"]
    (instance,) = backends["echo"]["instances"]
    assert instance["healthy"] is True
    assert instance["ejected"] is False
    assert gateway.admin("/readyz")["status"] == "ready"
    assert gateway.admin("/healthz")["status"] == "ok"
