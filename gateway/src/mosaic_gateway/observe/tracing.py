"""A span per request: W3C trace context in and out, spans exported over OTLP by a thread.

The OpenTelemetry SDK is not used on the request path: a span there would cost an SDK object,
context switching and locks per request. The gateway's span is three ids and a flag
(`Span`); `RequestTracer.start` (when a request is handed to the proxy) reads the client's
`traceparent`, keeps its trace id and sampling decision when it is valid (a new trace when it
is missing or invalid, sampled at `sample_ratio`), draws the gateway's span id, and sends
upstream a `traceparent` naming that span as the parent. `tracestate` is forwarded as it came,
except after an invalid `traceparent` (W3C: it belongs to the trace that was dropped).

A sampled span's record (a tuple) is queued when the request ends; `SpanExporter`, a daemon
thread, turns queued records into SDK `ReadableSpan`s once a second and hands them to the OTLP
(HTTP/protobuf) exporter. The queue is bounded: when the collector cannot keep up, spans are
dropped (and counted), never the requests slowed.

With tracing off none of this runs: the client's `traceparent` and `tracestate` are forwarded
unchanged like any other allowed header, so the upstream continues the caller's trace.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections import deque
from random import getrandbits
from typing import TYPE_CHECKING

from mosaic_gateway.http.server import StateKey
from mosaic_kit.logging import get_logger

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

    from mosaic_gateway.http.server import Exchange

_log = get_logger("mosaic_gateway.observe.tracing")

_TRACEPARENT_RE = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
_LOW_64 = (1 << 64) - 1
_TRACEPARENT = b"traceparent"
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
_TRACEPARENT_ONLY = frozenset({b"traceparent"})

# (trace id, span id, parent span id | None, start ns, end ns, method, route, path, status,
#  backend, instance | None, request id, aborted, cache status | None)
SpanRecord = tuple[
    bytes, bytes, bytes | None, int, int, str, str, str, int, str, str | None, str, bool, str | None
]


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, int] | None:
    """(trace id, parent id, flags) of a valid `traceparent` (W3C Trace Context), else None.

    Version 00 must be exactly `00-<32 hex>-<16 hex>-<2 hex>`; a later version may carry more
    fields after a `-`; version ff, upper-case hex and all-zero ids are invalid."""
    value = value.strip(b" \t")
    match = _TRACEPARENT_RE.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags = match.groups()
    if version == b"ff" or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    if len(value) != 55 and (version == b"00" or value[55:56] != b"-"):
        return None
    return trace_id, parent_id, int(flags, 16)


class Span:
    """The gateway's span of one request: what the upstream and the access log are told."""

    __slots__ = ("parent_id", "sampled", "span_id", "trace_id")

    def __init__(
        self, trace_id: bytes, span_id: bytes, parent_id: bytes | None, sampled: bool
    ) -> None:
        self.trace_id = trace_id  # 32 lower-case hex digits
        self.span_id = span_id  # 16 lower-case hex digits
        self.parent_id = parent_id  # the caller's span, if it sent a valid traceparent
        self.sampled = sampled


# The request's span, once `RequestTracer.start` made it.
SPAN: StateKey[Span] = StateKey("span")


class RequestTracer:
    """Starts each request's span and rewrites the `traceparent` sent upstream."""

    __slots__ = ("_bound", "exporter")

    def __init__(self, sample_ratio: float, exporter: SpanExporter | None) -> None:
        # A new trace is sampled when the low 64 bits of its id fall below this bound (the
        # trace-id-ratio rule, so any component using it agrees on the same trace).
        self._bound = int(sample_ratio * (1 << 64))
        self.exporter = exporter

    def start(self, exchange: Exchange) -> None:
        incoming = exchange.traceparent
        parsed = None if incoming is None else parse_traceparent(incoming)
        parent_id: bytes | None
        if parsed is None:
            number = getrandbits(128) or 1
            trace_id = b"%032x" % number
            parent_id = None
            sampled = (number & _LOW_64) < self._bound
        else:
            trace_id, parent_id, flags = parsed
            sampled = bool(flags & 1)  # the caller decided
        span_id = b"%016x" % (getrandbits(64) or 1)
        value = b"00-%b-%b-%b" % (trace_id, span_id, b"01" if sampled else b"00")
        if incoming is None:
            exchange.headers.append((_TRACEPARENT, value))
        else:
            drop = _TRACE_HEADERS if parsed is None else _TRACEPARENT_ONLY
            headers = [item for item in exchange.headers if item[0] not in drop]
            headers.append((_TRACEPARENT, value))
            exchange.headers = headers
        exchange.put(SPAN, Span(trace_id, span_id, parent_id, sampled))


def incoming_trace_id(exchange: Exchange) -> bytes | None:
    """With tracing off: the trace id of the client's valid `traceparent`, for the access log."""
    value = exchange.traceparent
    if value is None:
        return None
    parsed = parse_traceparent(value)
    return None if parsed is None else parsed[0]


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a collector's base URL (or the traces URL itself)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


class SpanExporter:
    """Exports queued span records over OTLP/HTTP from a daemon thread, in batches."""

    def __init__(
        self,
        endpoint: str,
        service_name: str,
        *,
        interval: float = 1.0,
        batch: int = 512,
        max_queue: int = 8192,
        timeout: float = 10.0,
    ) -> None:
        self.url = traces_url(endpoint)
        self.service_name = service_name
        self.interval = interval
        self.batch = batch
        self.max_queue = max_queue
        self.timeout = timeout
        # deque: append (event loop) and popleft (thread) are atomic without a lock.
        self._queue: deque[SpanRecord] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.exported = 0
        self.failed_batches = 0

    def add(self, record: SpanRecord) -> None:
        if len(self._queue) >= self.max_queue:
            if not self.dropped:
                _log.warning("trace_spans_dropped", reason="export queue full", url=self.url)
            self.dropped += 1
            return
        self._queue.append(record)

    def start(self) -> None:
        # Started in the worker process (after the fork): threads do not survive a fork.
        self._thread = threading.Thread(target=self._run, name="otlp-span-export", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Export what is queued (within `timeout`: a worker's exit is not held up by a
        collector that does not answer) and end the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import SpanExportResult

        exporter = OTLPSpanExporter(endpoint=self.url, timeout=self.timeout)
        resource = Resource.create(
            {
                "service.name": self.service_name,
                "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
            }
        )
        try:
            while True:
                stopping = self._stop.wait(self.interval)
                while self._queue:
                    records: list[SpanRecord] = []
                    while self._queue and len(records) < self.batch:
                        records.append(self._queue.popleft())
                    result = exporter.export([_readable(r, resource) for r in records])
                    if result == SpanExportResult.SUCCESS:
                        self.exported += len(records)
                    else:
                        self.failed_batches += 1
                        _log.warning("trace_export_failed", url=self.url, spans=len(records))
                        break  # the rest waits for the next round
                if stopping:
                    return
        except Exception:
            _log.exception("trace_exporter_crashed", url=self.url)
        finally:
            exporter.shutdown()  # type: ignore[no-untyped-call]


def _readable(record: SpanRecord, resource: object) -> ReadableSpan:
    """A span record as the SDK's span, for the OTLP encoder (in the exporting thread)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    (
        trace_id,
        span_id,
        parent_id,
        start_ns,
        end_ns,
        method,
        route,
        path,
        status,
        backend,
        instance,
        request_id,
        aborted,
        cache,
    ) = record
    trace = int(trace_id, 16)
    flags = TraceFlags(TraceFlags.SAMPLED)
    context = SpanContext(trace, int(span_id, 16), is_remote=False, trace_flags=flags)
    parent = (
        None
        if parent_id is None
        else SpanContext(trace, int(parent_id, 16), is_remote=True, trace_flags=flags)
    )
    attributes: dict[str, str | int | bool] = {
        "http.request.method": method,
        "url.path": path,
        "http.route": route,
        "http.response.status_code": status,
        "mosaic.request_id": request_id,
        "mosaic.backend": backend,
    }
    if instance is not None:
        attributes["mosaic.instance"] = instance
    if cache is not None:
        attributes["mosaic.cache"] = cache
    if aborted:
        attributes["mosaic.aborted"] = True
    failed = aborted or status >= 500
    assert isinstance(resource, Resource)
    return ReadableSpan(
        name=f"{method} {route}",
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        kind=SpanKind.SERVER,
        status=Status(StatusCode.ERROR) if failed else Status(StatusCode.UNSET),
        start_time=start_ns,
        end_time=end_ns,
        instrumentation_scope=InstrumentationScope("mosaic_gateway"),
    )
