"""What a worker reports about each request: access log line, metrics, span.

`Observer` is built once per worker from `observability` (config/observability.py) and plugged
into the proxy listener's two hooks (http/server.py): `dispatched` when a request is handed to the
dispatcher (only with tracing: the span starts and the upstream `traceparent` is rewritten),
`ended` when its response is complete or aborted. The admin listener has no hooks: probes and
scrapes are not requests to report. A hook left unset costs the request path one attribute compare.

The observability section is read when a worker starts: a reload does not change it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mosaic_gateway.filters.cache import CACHE_STATUS
from mosaic_gateway.filters.caller import CLIENT, USER
from mosaic_gateway.handlers.forward import UPSTREAM_INSTANCE
from mosaic_gateway.observe.accesslog import UNROUTED, AccessLog
from mosaic_gateway.observe.metrics import METHOD_LABELS, UNMATCHED, Gauge, Metrics
from mosaic_gateway.observe.tracing import (
    SPAN,
    RequestTracer,
    Span,
    SpanExporter,
    incoming_trace_id,
)
from mosaic_gateway.upstream.breaker import STATE_CODES
from mosaic_kit.logging import get_logger

if TYPE_CHECKING:
    import asyncio

    from mosaic_gateway.config import ObservabilitySpec
    from mosaic_gateway.http.server import Exchange, Server
    from mosaic_gateway.lifecycle.runtime import Runtime
    from mosaic_gateway.routing.route import CompiledRoute

_log = get_logger("mosaic_gateway.lifecycle.observer")


class Observer:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        metrics: Metrics | None,
        access_log: AccessLog | None,
        tracer: RequestTracer | None,
    ) -> None:
        self.loop = loop
        self.metrics = metrics
        self.access_log = access_log
        self.tracer = tracer
        self.exporter = tracer.exporter if tracer is not None else None

    # --- hooks (http/server.py) -------------------------------------------------------------

    @property
    def on_dispatch(self) -> Callable[[Exchange], None] | None:
        return self.tracer.start if self.tracer is not None else None

    @property
    def reads_upstream_instance(self) -> bool:
        """Whether `ended` reports the instance tried (handlers/forward.UPSTREAM_INSTANCE)."""
        return self.access_log is not None or self.exporter is not None

    @property
    def on_end(self) -> Callable[[Exchange, bool], None] | None:
        if self.metrics is None and self.access_log is None and self.exporter is None:
            return None
        return self.ended

    def ended(self, exchange: Exchange, aborted: bool) -> None:
        # One frame, the whole report inside the `try` (free in 3.11 until something raises).
        try:
            duration = time.perf_counter() - exchange.started
            # Nothing answered and aborted: the client went away first (nginx's 499).
            status = exchange.status or (499 if aborted else 0)
            # (The server types the route `object`: it cannot know routing's class. No `cast`: a
            # call per request.)
            route: CompiledRoute | None = exchange.route  # type: ignore[assignment]
            if route is None:
                template, backend, fields = UNMATCHED, "", UNROUTED
            else:
                template, backend, fields = route.template, route.backend.name, route.log_fields
            # What the route's filters and handler found out, under their keys (each module owns
            # its own): one look when nothing was stored.
            cache: str | None = None
            instance: str | None = None
            span: Span | None = None
            user_id: str | None = None
            client_id: str | None = None
            state = exchange.state
            if state is not None:  # read here directly (no call per key): once per request
                cache = state.get(CACHE_STATUS)
                instance = state.get(UPSTREAM_INSTANCE)
                span = state.get(SPAN)
                user = state.get(USER)
                if user is not None:
                    user_id = user.user_id
                application = state.get(CLIENT)
                if application is not None:
                    client_id = application.client_id
            method = METHOD_LABELS.get(exchange.method, "OTHER")
            metrics = self.metrics
            if metrics is not None:
                metrics.record(
                    template,
                    backend,
                    method,
                    status,
                    duration,
                    exchange.bytes_out,
                    cache,
                    client_id,
                )
            exporter = self.exporter
            if span is not None and span.sampled and exporter is not None:
                end_ns = time.time_ns()
                exporter.add(
                    (
                        span.trace_id,
                        span.span_id,
                        span.parent_id,
                        end_ns - int(duration * 1e9),
                        end_ns,
                        method,
                        template,
                        exchange.path.decode("latin-1"),
                        status,
                        backend,
                        instance,
                        exchange.request_id.decode("latin-1"),
                        aborted,
                        cache,
                    )
                )
            access_log = self.access_log
            if access_log is not None:
                trace_id: bytes | None
                span_id: bytes | None
                if span is not None:
                    trace_id, span_id = span.trace_id, span.span_id
                else:
                    trace_id = incoming_trace_id(exchange) if exchange.traceparent else None
                    span_id = None
                access_log.record(
                    exchange,
                    status,
                    duration,
                    fields,
                    aborted,
                    trace_id,
                    span_id,
                    instance,
                    cache,
                    user_id,
                    client_id,
                )
        except Exception:  # reporting must never break the connection's flow
            _log.exception("observe_failed", request_id=exchange.request_id.decode("latin-1"))

    # --- life -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.metrics is not None:
            self.metrics.start(self.loop)
        if self.exporter is not None:
            self.exporter.start()

    def stop(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        if self.access_log is not None:
            self.access_log.close()
        if self.exporter is not None:
            self.exporter.stop()


def build_observer(
    settings: ObservabilitySpec,
    loop: asyncio.AbstractEventLoop,
    *,
    admin: bool,
    index: int = 0,
    metrics_dir: str | None = None,
) -> Observer:
    """The worker's observer; metrics only where they can be scraped (an admin listener)."""
    metrics = None
    if settings.metrics.enabled and admin:
        metrics = Metrics(
            settings.metrics.buckets,
            index=index,
            directory=metrics_dir,
            max_clients=settings.metrics.max_clients,
        )
    access_log = None
    if settings.access_log.enabled:
        access_log = AccessLog(loop, settings.access_log.path)
    tracer = None
    tracing = settings.tracing
    if tracing.enabled:
        exporter = None
        if tracing.otlp_endpoint is not None:
            exporter = SpanExporter(tracing.otlp_endpoint, tracing.service_name)
        tracer = RequestTracer(tracing.sample_ratio, exporter)
    return Observer(loop, metrics=metrics, access_log=access_log, tracer=tracer)


def runtime_gauges(runtime: Runtime | None, server: Server) -> list[Gauge]:
    """A worker's gauges, read from its live state when a scrape or a dump asks."""
    gauges: list[Gauge] = [
        (
            "gateway_requests_in_flight",
            (),
            float(sum(len(conn.queue) for conn in list(server.connections))),
        )
    ]
    if runtime is None:
        return gauges
    for name, backend in runtime.backends.items():
        gauges.append(("gateway_backend_panic", (name,), float(backend.panic)))
        for instance in list(backend.instances):
            labels = (name, instance.url)
            gauges.append(
                ("gateway_breaker_state", labels, float(STATE_CODES[instance.breaker.state]))
            )
            gauges.append(("gateway_instance_healthy", labels, float(instance.healthy)))
            gauges.append(("gateway_instance_ejected", labels, float(instance.ejected)))
            gauges.append(("gateway_instance_outstanding", labels, float(instance.outstanding)))
        for scope in backend.scopes:
            for instance in list(scope.instances):
                gauges.append(
                    (
                        "gateway_route_breaker_state",
                        (scope.route, scope.methods, name, instance.url),
                        float(STATE_CODES[instance.breaker.state]),
                    )
                )
    return gauges
