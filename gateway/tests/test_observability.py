"""The access log and tracing, through a real gateway in front of a real backend."""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import (
    BackendFactory,
    GatewayFactory,
    RawConnection,
    eventually,
    gateway_config,
    plain_client,
)
from obs_support import OtlpCollector, access_lines, upstream_headers
from security_support import StandInAuth, start_nats

pytestmark = pytest.mark.timeout(90)

ROUTES = [{"path": "/items/{id}", "methods": ["GET", "POST"], "backend": "echo"}]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
SECRETS = ("SECRET-TOKEN", "SECRET-KEY", "SECRET-COOKIE", "SECRET-QUERY")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")


def config(url: str, **observability: Any) -> dict[str, Any]:
    document = gateway_config({"echo": {"instances": [url]}}, copy.deepcopy(ROUTES))
    document["observability"] = observability
    return document


def by_request_id(text: str) -> dict[str, dict[str, Any]]:
    return {line["request_id"]: line for line in access_lines(text)}


async def wait_lines(read: Any, *request_ids: str) -> dict[str, dict[str, Any]]:
    await eventually(lambda: set(request_ids) <= set(by_request_id(read())))
    return by_request_id(read())


def traceparent_sent(echo: dict[str, Any]) -> tuple[str, str, str]:
    """(trace id, parent id, flags) of the one traceparent the backend received."""
    sent = upstream_headers(echo, "traceparent")
    assert len(sent) == 1, sent
    match = _TRACEPARENT.fullmatch(sent[0])
    assert match, sent[0]
    return match.group(1), match.group(2), match.group(3)


# --- access log ---------------------------------------------------------------------------------


async def test_access_log_line_per_request_with_its_fields_and_no_secret(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = shared_backends("echo")
    gateway = gateways(config(echo.url, access_log={"enabled": True}))
    client = gateway.client()
    response = await client.get(
        "/items/42?token=SECRET-QUERY&limit=5",
        headers={
            "authorization": "Bearer SECRET-TOKEN",
            "x-api-key": "SECRET-KEY",
            "cookie": "session=SECRET-COOKIE",
            "x-request-id": "req-access-1",
            "traceparent": f"00-{TRACE}-{PARENT}-01",
        },
    )
    assert response.status_code == 200
    # The secrets did reach the backend: the log leaves them out, the proxy does not lose them.
    assert upstream_headers(response.json(), "x-api-key") == ["SECRET-KEY"]
    missing = await client.post("/nothing/here", headers={"x-request-id": "req-access-2"})
    assert missing.status_code == 404
    # A raw exchange, to know exactly how many bytes the client received.
    raw = await RawConnection.open(gateway.port)
    await raw.send(
        b"GET /items/7 HTTP/1.1\r\nhost: x\r\nx-request-id: req-access-3\r\nconnection: close\r\n\r\n"
    )
    received = await asyncio.wait_for(raw.reader.read(), 10)
    await raw.close()

    lines = await wait_lines(gateway.process.output, "req-access-1", "req-access-2", "req-access-3")
    line = lines["req-access-1"]
    assert line["level"] == "info"
    assert line["logger"] == "mosaic_gateway.access"
    assert isinstance(line["worker_pid"], int)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"])
    assert line["method"] == "GET"
    assert line["path"] == "/items/42"  # no query string
    assert line["status"] == 200
    assert line["route"] == "/items/{id}"
    assert line["backend"] == "echo"
    assert line["instance"] == echo.url
    assert line["cache"] is None
    assert line["user_id"] is None
    assert line["client"] == "127.0.0.1"
    assert line["aborted"] is False
    assert line["trace_id"] == TRACE  # tracing is off: the caller's trace id
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] > 0
    assert line["bytes"] > len(response.content)

    unrouted = lines["req-access-2"]
    assert (unrouted["method"], unrouted["path"], unrouted["status"]) == (
        "POST",
        "/nothing/here",
        404,
    )
    assert unrouted["route"] is None
    assert unrouted["backend"] is None
    assert unrouted["instance"] is None
    assert unrouted["trace_id"] is None

    assert lines["req-access-3"]["bytes"] == len(received)

    output = gateway.process.output()
    for secret in SECRETS:
        assert secret not in output


async def test_access_log_reports_a_client_that_left_before_the_answer(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = shared_backends("echo")
    gateway = gateways(config(echo.url, access_log={"enabled": True}))
    raw = await RawConnection.open(gateway.port)
    await raw.send(
        b"GET /items/slow HTTP/1.1\r\nhost: x\r\nx-test-hold: gone\r\nx-request-id: req-gone\r\n\r\n"
    )
    await eventually(lambda: echo.held("gone") == 1)  # forwarded, its answer to come
    await raw.close()
    line = (await wait_lines(gateway.process.output, "req-gone"))["req-gone"]
    echo.release("gone")
    assert line["aborted"] is True
    assert line["status"] == 499
    assert line["route"] == "/items/{id}"
    assert line["bytes"] == 0


async def test_access_log_to_a_file_from_every_worker_and_off_by_default(
    shared_backends: BackendFactory, gateways: GatewayFactory, tmp_path: Path
) -> None:
    echo = shared_backends("echo")
    path = tmp_path / "access.log"
    gateway = gateways(config(echo.url, access_log={"enabled": True, "path": str(path)}), workers=2)
    quiet = gateways(config(echo.url))
    ids = [f"req-file-{n}" for n in range(30)]
    for target in (gateway, quiet):
        # A new connection per request, so both workers serve some of them.
        async with plain_client(
            base_url=target.url, limits=httpx.Limits(max_keepalive_connections=0)
        ) as client:
            for request_id in ids:
                response = await client.get("/items/1", headers={"x-request-id": request_id})
                assert response.status_code == 200
    lines = await wait_lines(path.read_text, *ids)
    assert len(access_lines(path.read_text())) == len(ids)  # one line each, every line whole
    assert len({line["worker_pid"] for line in lines.values()}) == 2
    assert "req-file-" not in gateway.process.output()  # the file, not standard error
    await asyncio.to_thread(quiet.process.stop)  # a stopping worker writes what it holds
    assert access_lines(quiet.process.output()) == []


async def test_access_log_names_the_user_of_a_verified_token_and_never_the_credentials(
    shared_backends: BackendFactory, gateways: GatewayFactory, tmp_path: Path
) -> None:
    echo = shared_backends("echo")
    nats = start_nats(tmp_path / "nats")  # a NATS of its own: no other auth answers here
    auth = StandInAuth()
    try:
        await auth.start(nats.url)
        document = config(echo.url, access_log={"enabled": True})
        document["nats"] = {"url": nats.url}
        document["routes"][0]["auth"] = {"api_key": "required", "jwt": "required"}
        gateway = gateways(document)
        key, _ = auth.issue_key()
        user = str(uuid.uuid4())
        token = auth.token(user_id=user)
        response = await gateway.client().get(
            "/items/1",
            headers={
                "x-api-key": key,
                "authorization": f"Bearer {token}",
                "x-request-id": "req-user",
            },
        )
        assert response.status_code == 200
        refused = await gateway.client().get("/items/1", headers={"x-request-id": "req-nokey"})
        assert refused.status_code == 401
        lines = await wait_lines(gateway.process.output, "req-user", "req-nokey")
        assert lines["req-user"]["user_id"] == user
        assert (lines["req-nokey"]["status"], lines["req-nokey"]["user_id"]) == (401, None)
        assert lines["req-nokey"]["route"] == "/items/{id}"
        output = gateway.process.output()
        assert key not in output
        assert token not in output
        assert token.split(".")[1] not in output  # not even the claims part
    finally:
        await auth.stop()
        nats.stop()


# --- tracing ------------------------------------------------------------------------------------


async def test_tracing_continues_a_valid_trace_with_the_gateway_span_as_parent(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = shared_backends("echo")
    gateway = gateways(config(echo.url, tracing={"enabled": True}, access_log={"enabled": True}))
    client = gateway.client()
    response = await client.get(
        "/items/1",
        headers={
            "traceparent": f"00-{TRACE}-{PARENT}-01",
            "tracestate": "vendor=abc,other=1",
            "x-request-id": "req-trace-1",
        },
    )
    echo_seen = response.json()
    trace_id, parent_id, flags = traceparent_sent(echo_seen)
    assert trace_id == TRACE
    assert parent_id != PARENT
    assert flags == "01"
    assert upstream_headers(echo_seen, "tracestate") == ["vendor=abc,other=1"]
    line = (await wait_lines(gateway.process.output, "req-trace-1"))["req-trace-1"]
    assert (line["trace_id"], line["span_id"]) == (TRACE, parent_id)

    # The caller's decision not to sample is kept.
    unsampled = await client.get("/items/1", headers={"traceparent": f"00-{TRACE}-{PARENT}-00"})
    assert traceparent_sent(unsampled.json())[::2] == (TRACE, "00")

    # A later version with more fields is understood (and answered in version 00).
    future = await client.get(
        "/items/1", headers={"traceparent": f"cc-{TRACE}-{PARENT}-01-what-ever"}
    )
    assert traceparent_sent(future.json())[0] == TRACE

    # No traceparent: a new trace, a new one per request.
    first = traceparent_sent((await client.get("/items/1")).json())
    second = traceparent_sent((await client.get("/items/1")).json())
    assert first[0] != second[0]
    assert first[2] == "01"  # sample_ratio defaults to 1


INVALID_TRACEPARENTS = [
    f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE.upper()}-{PARENT}-01",  # upper-case hex
    f"ff-{TRACE}-{PARENT}-01",  # the forbidden version
    f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
    f"00-{TRACE[:-1]}-{PARENT}-01",  # a short trace id
    f"00-{TRACE}-{PARENT}-1",  # a short flags field
    "not a traceparent",
]


async def test_tracing_replaces_an_invalid_traceparent_and_drops_its_tracestate(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = shared_backends("echo")
    gateway = gateways(config(echo.url, tracing={"enabled": True}))
    client = gateway.client()
    for invalid in INVALID_TRACEPARENTS:
        response = await client.get(
            "/items/1", headers={"traceparent": invalid, "tracestate": "vendor=abc"}
        )
        echo_seen = response.json()
        trace_id, _, flags = traceparent_sent(echo_seen)
        assert trace_id not in invalid.lower(), invalid
        assert trace_id != "0" * 32
        assert flags == "01"
        assert upstream_headers(echo_seen, "tracestate") == [], invalid


async def test_without_tracing_the_traceparent_is_forwarded_unchanged(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = shared_backends("echo")
    gateway = gateways(config(echo.url, access_log={"enabled": True}))
    client = gateway.client()
    for value in (f"00-{TRACE}-{PARENT}-01", "not a traceparent"):
        response = await client.get(
            "/items/1", headers={"traceparent": value, "tracestate": "vendor=abc"}
        )
        assert upstream_headers(response.json(), "traceparent") == [value]
        assert upstream_headers(response.json(), "tracestate") == ["vendor=abc"]
    response = await client.get("/items/1")
    assert upstream_headers(response.json(), "traceparent") == []


async def test_spans_are_exported_over_otlp(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = shared_backends("echo")
    collector = OtlpCollector()
    try:
        gateway = gateways(
            config(echo.url, tracing={"enabled": True, "otlp_endpoint": collector.url})
        )
        client = gateway.client()
        continued = await client.get(
            "/items/5",
            headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "x-request-id": "req-span-1"},
        )
        _, gateway_span, _ = traceparent_sent(continued.json())
        started = await client.get("/items/6", headers={"x-request-id": "req-span-2"})
        new_trace, new_span, _ = traceparent_sent(started.json())
        failed = await client.get(
            "/items/7", headers={"x-test-status": "503", "x-request-id": "req-span-3"}
        )
        assert failed.status_code == 503

        await eventually(lambda: len(collector.spans) >= 3)
        spans = {span["attributes"]["mosaic.request_id"]: span for span in collector.spans}
        span = spans["req-span-1"]
        assert (span["trace_id"], span["span_id"]) == (TRACE, gateway_span)
        assert span["parent_span_id"] == PARENT
        assert span["name"] == "GET /items/{id}"
        assert span["kind"] == 2  # SERVER
        assert span["attributes"]["http.route"] == "/items/{id}"
        assert span["attributes"]["url.path"] == "/items/5"
        assert span["attributes"]["http.response.status_code"] == 200
        assert span["attributes"]["mosaic.instance"] == echo.url
        assert span["resource"]["service.name"] == "mosaic-gateway"
        assert span["end"] > span["start"] > 0
        assert span["status"] == 0  # unset

        root = spans["req-span-2"]
        assert (root["trace_id"], root["span_id"]) == (new_trace, new_span)
        assert root["parent_span_id"] == ""
        assert spans["req-span-3"]["status"] == 2  # error: a 5xx
        assert spans["req-span-3"]["attributes"]["http.response.status_code"] == 503
    finally:
        collector.close()


async def test_sample_ratio_applies_to_new_traces_and_the_caller_decides_for_its_own(
    shared_backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = shared_backends("echo")
    collector = OtlpCollector()
    try:
        gateway = gateways(
            config(
                echo.url,
                tracing={"enabled": True, "sample_ratio": 0, "otlp_endpoint": collector.url},
            )
        )
        client = gateway.client()
        for _ in range(5):
            response = await client.get("/items/1")
            assert traceparent_sent(response.json())[2] == "00"  # not sampled, said upstream
        await client.get("/items/1", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        # A stopping worker exports every span it still holds (not waiting for its next round,
        # test_spans_are_exported_over_otlp does): all there is, is there.
        await asyncio.to_thread(gateway.process.stop)
        assert [span["trace_id"] for span in collector.spans] == [TRACE]
    finally:
        collector.close()
