from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi import APIRouter
from kit_support import build_app, client, span_exporter
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mosaic_kit import tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    exp = span_exporter()
    exp.clear()
    return exp


def _router() -> APIRouter:
    router = APIRouter(prefix="/v1/items")

    @router.get("/{item_id}")
    async def get_item(item_id: str) -> dict[str, str]:
        # What an outbound call (HTTP or NATS) made from this handler would carry.
        return {"traceparent": tracing.inject({})["traceparent"]}

    @router.get("/fail/now")
    async def fail() -> None:
        raise RuntimeError("boom")

    return router


async def test_server_span_continues_the_callers_trace(exporter: InMemorySpanExporter) -> None:
    app = build_app([_router()])
    async with client(app) as c:
        resp = await c.get("/v1/items/42", headers={"traceparent": TRACEPARENT})
    assert resp.status_code == 200

    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert span.name == "GET /v1/items/{item_id}"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.parent.is_remote
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/v1/items/{item_id}"
    assert span.attributes["http.response.status_code"] == 200
    # Downstream calls get the same trace with the server span as their parent.
    version, trace_id, parent_id, _flags = resp.json()["traceparent"].split("-")
    assert (version, trace_id) == ("00", TRACE_ID)
    assert parent_id == format(span.context.span_id, "016x")


async def test_exactly_one_server_span_per_request(exporter: InMemorySpanExporter) -> None:
    # FastAPI's own instrumentation must stay off, or every request is traced twice.
    app = build_app([_router()])
    async with client(app) as c:
        await c.get("/v1/items/1")
    server_spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(server_spans) == 1
    assert server_spans[0].parent is None


async def test_server_error_marks_the_span(exporter: InMemorySpanExporter) -> None:
    app = build_app([_router()])
    async with client(app) as c:
        resp = await c.get("/v1/items/fail/now")
    assert resp.status_code == 500
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert span.status.status_code is StatusCode.ERROR
    assert any(event.name == "exception" for event in span.events)


async def test_without_tracing_the_callers_trace_still_propagates(
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracing, "_provider", None)
    assert not tracing.enabled()
    app = build_app([_router()])
    async with client(app) as c:
        resp = await c.get("/v1/items/42", headers={"traceparent": TRACEPARENT})
    assert resp.json()["traceparent"] == TRACEPARENT
    assert exporter.get_finished_spans() == ()


def test_inject_writes_the_current_span(exporter: InMemorySpanExporter) -> None:
    with tracing.tracer("test").start_as_current_span("work") as span:
        headers = tracing.inject({"x-other": "kept"})
    ctx = span.get_span_context()
    assert headers["x-other"] == "kept"
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert int(flags, 16) & 0x01  # sampled


def test_inject_without_a_span_adds_nothing() -> None:
    assert tracing.inject({}) == {}


@pytest.mark.parametrize("name", ["traceparent", "Traceparent", "TRACEPARENT"])
def test_extract_reads_any_header_case(name: str) -> None:
    ctx = trace.get_current_span(tracing.extract({name: TRACEPARENT})).get_span_context()
    assert ctx.is_valid
    assert ctx.is_remote
    assert format(ctx.trace_id, "032x") == TRACE_ID
    assert format(ctx.span_id, "016x") == PARENT_ID


@pytest.mark.parametrize("headers", [None, {}, {"traceparent": "garbage"}])
def test_extract_without_a_valid_traceparent_gives_no_parent(
    headers: dict[str, str] | None,
) -> None:
    assert not trace.get_current_span(tracing.extract(headers)).get_span_context().is_valid


def test_extract_then_inject_round_trips_through_nats_style_headers() -> None:
    ctx = tracing.extract({"traceparent": TRACEPARENT, "tracestate": "vendor=1"})
    out = tracing.inject({}, ctx)
    assert out == {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_no_endpoint_installs_nothing() -> None:
    # A fresh process: this one already has a provider from the other tests.
    result = _run_python(
        """
        from opentelemetry import trace
        from mosaic_kit import tracing
        tracing.configure_tracing("svc", "svc-1", None)
        assert not tracing.enabled()
        assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
        with tracing.tracer("t").start_as_current_span("x") as span:
            assert not span.is_recording()
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A real HTTP endpoint standing in for the OTLP collector."""
    received: list[tuple[str, str, bytes]] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_endpoint_exports_spans_over_otlp_http(
    collector: tuple[str, list[tuple[str, str, bytes]]],
) -> None:
    url, received = collector
    result = _run_python(
        f"""
        from mosaic_kit import tracing
        tracing.configure_tracing("exporting-svc", "exporting-1", {url!r})
        assert tracing.enabled()
        with tracing.tracer("t").start_as_current_span("exported-span"):
            pass
        tracing.shutdown_tracing()
        """
    )
    assert result.returncode == 0, result.stderr
    assert len(received) == 1
    path, content_type, body = received[0]
    # The base URL an operator configures gets the OTLP traces path appended.
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    assert b"exported-span" in body
    assert b"exporting-svc" in body
    assert b"exporting-1" in body


async def test_probes_and_scrapes_make_no_spans(exporter: InMemorySpanExporter) -> None:
    app = build_app([_router()])
    async with client(app) as c:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await c.get(path, headers={"traceparent": TRACEPARENT})).status_code == 200
        await c.get("/v1/items/7")
    server_spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert [s.name for s in server_spans] == ["GET /v1/items/{item_id}"]


async def test_sql_statements_are_spans_inside_the_request(
    exporter: InMemorySpanExporter, pg_url: str
) -> None:
    from sqlalchemy import text

    from mosaic_kit.settings import ServiceSettings
    from mosaic_kit.sql.db import Database

    db = Database.from_settings(ServiceSettings(database_url=pg_url))
    try:
        with tracing.tracer("test").start_as_current_span("request") as parent:
            async with db.connect() as conn:
                await conn.execute(text("SELECT 41 + 1"))
    finally:
        await db.dispose()
    statements = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    (select,) = [s for s in statements if "SELECT 41 + 1" in str((s.attributes or {}).values())]
    assert select.parent is not None
    assert select.parent.span_id == parent.get_span_context().span_id
    assert (select.attributes or {}).get("db.system") == "postgresql"
