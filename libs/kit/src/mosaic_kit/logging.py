"""Structured logging: JSON lines in production, a readable console on a TTY.

Every record carries the service and instance; request-scoped values (`request_id`, `trace_id`)
are bound in context variables by the HTTP middleware and NATS handlers, so plain
`log.info("...")` calls pick them up. The standard library's loggers (uvicorn, alembic, asyncio)
are routed through the same renderer so a process writes one format only.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import uuid
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from opentelemetry import trace

__all__ = [
    "Logger",
    "PerRequestLogger",
    "bind_context",
    "clear_context",
    "configure_logging",
    "describe_error",
    "get_logger",
    "render_json",
]

Logger = structlog.stdlib.BoundLogger

# "generation" is bumped by every configure_logging, so loggers bound once can tell they are stale.
_configured = {"generation": 0}


def _add_trace_context(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid and "trace_id" not in event:
        event["trace_id"] = format(span_context.trace_id, "032x")
        event["span_id"] = format(span_context.span_id, "016x")
    return event


def _fallback(value: Any) -> Any:
    """What JSON cannot hold as is: its `__structlog__()` if it has one, else its repr (which is
    how `SecretStr` shows as `SecretStr('**********')`). UUIDs and times as orjson writes them,
    so a line that takes the standard library's path reads the same."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    render = getattr(value, "__structlog__", None)
    return render() if callable(render) else repr(value)


def render_json(event: MutableMapping[str, Any], **_kw: Any) -> str:
    """One JSON line (orjson: datetimes and UUIDs as strings; ~10x the standard library's speed)."""
    try:
        return orjson.dumps(event, default=_fallback, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):  # an int beyond 64 bits, a cycle...
        return json.dumps(event, default=_fallback)


class _JsonFormatter(structlog.stdlib.ProcessorFormatter):
    """The JSON formatter, with a short path for structlog's own records (nearly every line).

    structlog's formatter copies each record first (so that other handlers see it unchanged) and
    then runs its chain; for a record that structlog made, the event dict is already complete: a
    copy of it, the exception rendered, and the line. The record itself is left untouched, so
    pytest's log capture still sees the event dict. Other records (uvicorn, alembic) take the
    general path, through the same pre-chain and renderer.
    """

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "_logger", None) is None or not isinstance(record.msg, dict):
            return super().format(record)
        event: MutableMapping[str, Any] = dict(record.msg)
        if "exc_info" in event:
            event = structlog.processors.format_exc_info(None, "", event)
        return render_json(event)


def configure_logging(service: str, instance: str, level: str = "INFO", fmt: str = "auto") -> None:
    """Set up structlog and the standard library logging once per process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    static = {"service": service, "instance": instance}

    def add_static(
        _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in static.items():
            event.setdefault(key, value)
        return event

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_static,
        _add_trace_context,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=render_json)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        # The level is checked first: a filtered-out call (a DEBUG access line of a probe) then
        # costs one comparison instead of the whole chain.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: loggers created at import time must pick up configure_logging() later.
        cache_logger_on_first_use=False,
    )
    formatter_class = _JsonFormatter if use_json else structlog.stdlib.ProcessorFormatter
    formatter = formatter_class(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _noop,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # No renderer shows the caller's file and line, thread, process or task name, so the
    # standard library need not compute them for every record (the logging HOWTO's
    # "Optimization" switches); the formatter copies each record, which doubles that cost.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    _configured["generation"] += 1
    # uvicorn's own access log duplicates ours (which carries request ids); keep its errors.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def _noop(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event


def describe_error(exc: BaseException) -> str:
    """`exc` in one log field: its type, and its message when it has one (never a traceback)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def get_logger(name: str | None = None) -> Logger:
    """A structlog logger; bound context (request id, trace id) is added on each call."""
    logger: Logger = structlog.stdlib.get_logger(name)
    return logger


class PerRequestLogger:
    """A logger for the lines written on every request (the access log).

    A `get_logger` logger is a lazy proxy that binds a fresh logger on every call, because
    loggers are not cached (see configure_logging): several microseconds per line, even one the
    level then drops. This one binds once per `configure_logging` and reuses that logger.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._generation = -1
        self._logger: Logger | None = None

    def get(self) -> Logger:
        generation = _configured["generation"]
        if self._logger is None or self._generation != generation:
            self._logger = get_logger(self._name).bind()
            self._generation = generation
        return self._logger

    def at(self, level: int) -> Logger | None:
        """The logger, or None when the configuration drops `level`. structlog's default
        configuration (no `configure_logging` yet, as in some tests) logs everything and has no
        such check."""
        logger = self.get()
        check = getattr(logger, "isEnabledFor", None)
        return logger if check is None or check(level) else None


bind_context = structlog.contextvars.bind_contextvars
clear_context = structlog.contextvars.clear_contextvars
