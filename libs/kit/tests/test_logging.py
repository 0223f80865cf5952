from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import structlog
from fastapi import APIRouter
from kit_support import (
    INSTANCE,
    SERVICE,
    build_app,
    client,
    follow_stderr,
    span_exporter,
)

from mosaic_kit import tracing
from mosaic_kit.logging import configure_logging, get_logger
from mosaic_kit.settings import ServiceSettings

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"

JsonLines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def json_lines(capsys: pytest.CaptureFixture[str]) -> JsonLines:
    """Logging configured for JSON onto captured stderr; returns a reader of the parsed lines."""
    configure_logging(SERVICE, INSTANCE, "INFO", "json")
    follow_stderr()

    def read() -> list[dict[str, Any]]:
        lines = capsys.readouterr().err.splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    return read


def _fresh_logger() -> Any:
    # structlog caches loggers on first use; a new name sees the configuration just made.
    return get_logger(f"kit_test.{uuid.uuid4().hex}")


def test_json_lines_carry_service_instance_and_fields(json_lines: JsonLines) -> None:
    _fresh_logger().info("order_placed", items=3)
    (line,) = json_lines()
    assert line["event"] == "order_placed"
    assert line["items"] == 3
    assert line["service"] == SERVICE
    assert line["instance"] == INSTANCE
    assert line["level"] == "info"
    assert line["timestamp"].endswith("Z")
    assert "trace_id" not in line


def test_standard_library_records_use_the_same_format(json_lines: JsonLines) -> None:
    import logging

    logging.getLogger("some.library").warning("disk %s is full", "sda1")
    (line,) = json_lines()
    assert line["event"] == "disk sda1 is full"
    assert line["service"] == SERVICE
    assert line["level"] == "warning"


def test_active_span_adds_trace_and_span_ids(json_lines: JsonLines) -> None:
    span_exporter()
    with tracing.tracer("test").start_as_current_span("work") as span:
        _fresh_logger().info("inside_span")
    (line,) = json_lines()
    ctx = span.get_span_context()
    assert line["trace_id"] == format(ctx.trace_id, "032x")
    assert line["span_id"] == format(ctx.span_id, "016x")


def _router(log: Any) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/hello")
    async def hello() -> dict[str, str]:
        log.info("saying_hello")
        return {}

    return router


async def test_request_logs_carry_request_and_trace_ids(json_lines: JsonLines) -> None:
    span_exporter()
    app = build_app([_router(_fresh_logger())])
    async with client(app) as c:
        await c.get("/v1/hello", headers={"x-request-id": "req-42", "traceparent": TRACEPARENT})
    lines = json_lines()
    handler_line = next(line for line in lines if line["event"] == "saying_hello")
    access_line = next(line for line in lines if line["event"] == "http_request")
    for line in (handler_line, access_line):
        assert line["request_id"] == "req-42"
        assert line["trace_id"] == TRACE_ID
        assert line["service"] == SERVICE
        assert line["instance"] == INSTANCE


async def test_trace_id_is_logged_even_when_not_recording(
    json_lines: JsonLines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracing, "_provider", None)
    app = build_app([_router(_fresh_logger())])
    async with client(app) as c:
        await c.get("/v1/hello", headers={"traceparent": TRACEPARENT})
    handler_line = next(line for line in json_lines() if line["event"] == "saying_hello")
    assert handler_line["trace_id"] == TRACE_ID


def test_secret_settings_are_not_logged(json_lines: JsonLines) -> None:
    password = "s3cr3t-Pa55"
    settings = ServiceSettings(
        database_url=f"postgresql://app:{password}@db:5432/app",
        redis_url=f"redis://:{password}@cache:6379",
    )
    log = _fresh_logger()
    log.info("starting", settings=settings, database_url=settings.database_url)
    lines = json_lines()
    assert len(lines) == 1
    assert password not in json.dumps(lines)
    assert "**********" in json.dumps(lines)


async def test_requests_are_answered_and_logged_before_logging_is_configured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A process (or test) that never called configure_logging has structlog's defaults, whose
    # loggers have no level check: the access line must still be written, not crash the request.
    structlog.reset_defaults()
    try:
        app = build_app([_router(_fresh_logger())])
        async with client(app) as c:
            response = await c.get("/v1/hello")
    finally:
        # As kit_support configured it (PerRequestLogger rebinds on configure_logging only).
        configure_logging(SERVICE, INSTANCE, "INFO", "json")
        follow_stderr()
    assert response.status_code == 200
    assert "http_request" in capsys.readouterr().out


def test_an_exception_is_rendered_with_its_traceback(json_lines: JsonLines) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        _fresh_logger().exception("it_failed")
    (line,) = json_lines()
    assert line["event"] == "it_failed"
    assert "ValueError: boom" in line["exception"]
    assert "Traceback" in line["exception"]


def test_values_json_cannot_hold_are_rendered_not_dropped(json_lines: JsonLines) -> None:
    when = uuid.UUID(int=7)
    _fresh_logger().info("odd_values", ident=when, huge=2**80, keys={1: "one"}, raw=object())
    (line,) = json_lines()
    assert line["ident"] == str(when)
    assert line["huge"] == 2**80  # beyond orjson's 64 bits: the standard library renders it
    assert line["keys"] == {"1": "one"}
    assert line["raw"].startswith("<object object")


def test_the_record_pytest_captures_keeps_the_event_dict(
    json_lines: JsonLines, caplog: pytest.LogCaptureFixture
) -> None:
    _fresh_logger().info("captured", n=1)
    (record,) = [r for r in caplog.records if isinstance(r.msg, dict)]
    assert record.msg["event"] == "captured"
    assert record.msg["n"] == 1
    assert json_lines()[0]["n"] == 1
