"""OpenTelemetry tracing with W3C trace-context propagation over HTTP and NATS headers.

Tracing is opt-in: without an OTLP endpoint no SDK provider is installed, the OpenTelemetry API
stays a no-op and spans cost next to nothing. Propagation works either way, so an incoming
`traceparent` is still forwarded to downstream calls (and shows up in logs) when this process
records nothing itself.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    # The SDK is imported by `configure_tracing` only: a process that records nothing (the
    # default) does not pay for it at start (~50 ms, psutil included).
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["configure_tracing", "enabled", "extract", "inject", "shutdown_tracing", "tracer"]

# One propagator for every transport: HTTP and NATS headers both carry `traceparent`/`tracestate`.
_propagator = TraceContextTextMapPropagator()
_lock = threading.Lock()
_provider: TracerProvider | None = None


def _traces_url(endpoint: str) -> str:
    # Operators give the collector's base URL (like OTEL_EXPORTER_OTLP_ENDPOINT); the exporter
    # needs the signal path when the endpoint is passed explicitly.
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def configure_tracing(
    service: str,
    instance: str,
    endpoint: str | None,
    *,
    exporter: SpanExporter | None = None,
) -> None:
    """Install the SDK and export spans over OTLP/HTTP to `endpoint`; do nothing when it is None.

    `exporter` adds an extra exporter fed synchronously (tests use an in-memory one). Calling
    again adds processors to the provider installed the first time, because OpenTelemetry allows
    the global provider to be set once per process.
    """
    if endpoint is None and exporter is None:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    processors: list[SpanProcessor] = []
    if endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processors.append(BatchSpanProcessor(OTLPSpanExporter(endpoint=_traces_url(endpoint))))
    if exporter is not None:
        processors.append(SimpleSpanProcessor(exporter))
    global _provider  # noqa: PLW0603 - the process-wide provider is inherently global
    with _lock:
        if _provider is None:
            resource = Resource.create({"service.name": service, "service.instance.id": instance})
            _provider = TracerProvider(resource=resource)
            trace.set_tracer_provider(_provider)
        for processor in processors:
            _provider.add_span_processor(processor)


def enabled() -> bool:
    """Whether spans are recorded in this process."""
    return _provider is not None


def shutdown_tracing() -> None:
    """Flush pending spans; call on process exit so the last batch is not lost."""
    if _provider is not None:
        _provider.shutdown()


def tracer(name: str) -> trace.Tracer:
    """A tracer for instrumentation scope `name` (a no-op one while tracing is off)."""
    return trace.get_tracer(name)


def inject(headers: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """Add the current (or given) trace context to `headers` in place and return them."""
    _propagator.inject(headers, context=context)
    return headers


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context carried by `headers`, for use as a span's parent.

    Header names are matched case-insensitively (HTTP/2 lower-cases them, NATS keeps them).
    """
    if not headers:
        return Context()
    carrier = {key.lower(): value for key, value in headers.items()}
    return _propagator.extract(carrier, context=Context())
