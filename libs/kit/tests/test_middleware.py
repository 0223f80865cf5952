from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Request, Response
from kit_support import build_app, client, records
from starlette.types import Receive, Scope, Send

from mosaic_kit.fastapi.middleware import RequestMiddleware
from mosaic_kit.logging import get_logger
from mosaic_kit.metrics import http_metrics, new_registry
from mosaic_kit.openapi import PROBLEM_CONTENT_TYPE

_log = get_logger("kit_test.handler")


def _router(calls: list[str] | None = None) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/whoami")
    async def whoami(request: Request) -> dict[str, str]:
        _log.info("handling", note="inside handler")
        return {"request_id": request.state.request_id}

    @router.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        if calls is not None:
            calls.append("echo")
        return {"size": len(await request.body())}

    @router.post("/items")
    async def items(body: dict[str, Any]) -> dict[str, int]:
        if calls is not None:
            calls.append("items")
        return {"keys": len(body)}

    @router.get("/own-id")
    async def own_id() -> Response:
        return Response(b"", headers={"X-Request-ID": "set-by-handler"})

    @router.get("/crash")
    async def crash() -> None:
        raise RuntimeError("db password=hunter2 leaked into a message")

    return router


async def test_request_id_is_generated_when_absent() -> None:
    async with client(build_app([_router()])) as c:
        first = await c.get("/v1/whoami")
        second = await c.get("/v1/whoami")
    rid = first.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert first.json() == {"request_id": rid}
    assert second.headers["x-request-id"] != rid


async def test_a_sane_client_request_id_is_kept() -> None:
    rid = "gw-7f3a:replica=2/req#99"
    async with client(build_app([_router()])) as c:
        resp = await c.get("/v1/whoami", headers={"x-request-id": rid})
    assert resp.headers["x-request-id"] == rid
    assert resp.json() == {"request_id": rid}


@pytest.mark.parametrize(
    "bad",
    [
        b"x" * 129,
        b"has space",
        b"tab\tinside",
        "caf\u00e9".encode(),
        b"",
        b"line\x7fdel",
    ],
)
async def test_an_insane_client_request_id_is_replaced(bad: bytes) -> None:
    async with client(build_app([_router()])) as c:
        resp = await c.get("/v1/whoami", headers=[(b"x-request-id", bad)])
    rid = resp.headers["x-request-id"]
    assert rid.encode() != bad
    assert re.fullmatch(r"[0-9a-f]{32}", rid)


async def test_the_longest_allowed_request_id_is_kept() -> None:
    rid = "r" * 128
    async with client(build_app([_router()])) as c:
        resp = await c.get("/v1/whoami", headers={"x-request-id": rid})
    assert resp.headers["x-request-id"] == rid


async def test_a_handlers_own_request_id_header_is_not_duplicated() -> None:
    async with client(build_app([_router()])) as c:
        resp = await c.get("/v1/own-id")
    assert resp.headers.get_list("x-request-id") == ["set-by-handler"]


async def test_logs_in_and_after_the_handler_carry_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with client(build_app([_router()])) as c:
        resp = await c.get("/v1/whoami", headers={"x-request-id": "rid-123"})
    assert resp.status_code == 200
    (handler_line,) = [r for r in records(caplog, "kit_test.handler") if r["event"] == "handling"]
    assert handler_line["request_id"] == "rid-123"
    (access,) = records(caplog, "mosaic_kit.access")
    assert access["request_id"] == "rid-123"
    assert access["method"] == "GET"
    assert access["route"] == "/v1/whoami"
    assert access["path"] == "/v1/whoami"
    assert access["status"] == 200
    assert isinstance(access["duration_ms"], float)
    assert access["duration_ms"] >= 0


async def test_request_context_does_not_leak_into_later_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with client(build_app([_router()])) as c:
        await c.get("/v1/whoami", headers={"x-request-id": "rid-leak"})
    _log.info("after_request")
    (after,) = [r for r in records(caplog, "kit_test.handler") if r["event"] == "after_request"]
    assert "request_id" not in after


async def test_access_log_never_holds_credentials_or_query(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with client(build_app([_router()])) as c:
        await c.get(
            "/v1/whoami?token=QUERYSECRET&x=1",
            headers={
                "Authorization": "Bearer BEARERSECRET",
                "Cookie": "sid=COOKIESECRET",
                "x-api-key": "APIKEYSECRET",
            },
        )
    dumped = json.dumps(records(caplog), default=str)
    assert "/v1/whoami" in dumped
    for secret in ("QUERYSECRET", "BEARERSECRET", "COOKIESECRET", "APIKEYSECRET", "token="):
        assert secret not in dumped


async def test_probe_routes_are_logged_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    async with client(build_app([_router()])) as c:
        await c.get("/healthz")
        await c.get("/metrics")
        await c.get("/v1/whoami")
    routes = [r["route"] for r in records(caplog, "mosaic_kit.access")]
    assert routes == ["/v1/whoami"]


async def test_declared_oversized_body_is_refused_before_the_handler() -> None:
    calls: list[str] = []
    async with client(build_app([_router(calls)], max_body_bytes=100)) as c:
        resp = await c.post("/v1/echo", content=b"x" * 101)
    assert resp.status_code == 413
    assert resp.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert resp.json()["code"] == "http.payload_too_large"
    assert resp.headers["x-request-id"]
    assert calls == []


async def _chunks(total: int, size: int = 40) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        chunk = b"x" * min(size, total - sent)
        sent += len(chunk)
        yield chunk


async def test_streamed_oversized_body_is_refused() -> None:
    # No Content-Length: only counting the bytes as they arrive catches this one.
    async with client(build_app([_router()], max_body_bytes=100)) as c:
        resp = await c.post("/v1/echo", content=_chunks(1000))
        json_resp = await c.post(
            "/v1/items", content=_chunks(1000), headers={"content-type": "application/json"}
        )
    assert "content-length" not in resp.request.headers
    assert resp.status_code == 413
    assert resp.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert resp.json()["code"] == "http.payload_too_large"
    assert json_resp.status_code == 413


async def test_body_at_the_limit_is_accepted() -> None:
    async with client(build_app([_router()], max_body_bytes=100)) as c:
        declared = await c.post("/v1/echo", content=b"x" * 100)
        streamed = await c.post("/v1/echo", content=_chunks(100))
    assert declared.json() == {"size": 100}
    assert streamed.json() == {"size": 100}


async def test_zero_limit_means_unlimited() -> None:
    async with client(build_app([_router()], max_body_bytes=0)) as c:
        resp = await c.post("/v1/echo", content=b"x" * 3_000_000)
    assert resp.json() == {"size": 3_000_000}


async def test_unhandled_error_is_a_bare_500_problem_logged_with_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with client(build_app([_router()])) as c:
        resp = await c.get("/v1/crash", headers={"x-request-id": "rid-crash"})
    assert resp.status_code == 500
    assert resp.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert resp.headers["x-request-id"] == "rid-crash"
    body = resp.json()
    assert body["code"] == "http.internal"
    assert "hunter2" not in resp.text
    assert "Traceback" not in resp.text
    (error,) = [r for r in records(caplog, "mosaic_kit.errors") if r["event"] == "unhandled_error"]
    assert error["request_id"] == "rid-crash"
    assert error["error"] == "RuntimeError"
    (access,) = records(caplog, "mosaic_kit.access")
    assert access["status"] == 500


# The middleware on its own, around bare ASGI apps FastAPI would not produce.


def _bare(app: Any, limit: int = 0) -> RequestMiddleware:
    return RequestMiddleware(
        app, metrics=http_metrics(new_registry(process_metrics=False)), max_body_bytes=limit
    )


async def test_bare_app_reading_past_the_limit_gets_a_413() -> None:
    async def reader(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read it all"})

    transport = httpx.ASGITransport(app=_bare(reader, limit=50))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        resp = await c.post("/upload", content=_chunks(200, size=10))
    assert resp.status_code == 413
    assert resp.json()["code"] == "http.payload_too_large"


async def test_error_after_the_response_started_propagates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def half(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-stream")

    transport = httpx.ASGITransport(app=_bare(half))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        with pytest.raises(RuntimeError, match="mid-stream"):
            await c.get("/stream")
    assert any(r["event"] == "unhandled_error_after_response_start" for r in records(caplog))


async def test_non_http_scopes_pass_through_untouched() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}}

    async def receive() -> Any:
        return {}

    async def send(message: Any) -> None:
        pass

    await _bare(app)(scope, receive, send)
    assert seen == [{"type": "lifespan", "asgi": {"version": "3.0"}}]
