"""The per-request chassis as one pure ASGI middleware.

For each HTTP request it: picks the request id (the client's `x-request-id` if sane, else a new
one), echoes it on the response and binds it to the log context; continues the caller's W3C trace
(a server span when tracing is on); refuses bodies above the configured size with a 413
problem; answers an unhandled exception with a bare 500 problem (logged with the request id,
which an outer handler would not have); records RED metrics by route template; and writes one
access-log line. It is deliberately a single layer that wraps `send` once: every extra ASGI layer
costs on each request.

The access log never contains headers (so no Authorization or cookies) nor the query string.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Collection
from contextvars import Token

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, StatusCode
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mosaic_kit import tracing
from mosaic_kit.fastapi.errors import problem_response
from mosaic_kit.logging import PerRequestLogger, get_logger
from mosaic_kit.metrics import UNMATCHED_ROUTE, HttpMetrics
from mosaic_kit.problem import Problem, unexpected_problem

__all__ = ["REQUEST_ID_HEADER", "BodyTooLarge", "RequestMiddleware", "route_template"]

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RAW = REQUEST_ID_HEADER.encode()
_SANE_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_TRACE_HEADERS = {b"traceparent": "traceparent", b"tracestate": "tracestate"}
_DEFAULT_QUIET = frozenset({"/healthz", "/readyz", "/metrics"})

_access_log = PerRequestLogger("mosaic_kit.access")
_error_log = get_logger("mosaic_kit.errors")
_tracer = tracing.tracer("mosaic_kit.http")


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit.

    An HTTPException so FastAPI re-raises it from body parsing and the problem handlers answer 413.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body exceeds {limit} bytes")


def route_template(scope: Scope) -> str:
    """The template of the route that handled `scope`, or `unmatched`.

    FastAPI (>= 0.13x) keeps routes of included routers un-flattened: `scope["route"]` is the
    route as declared inside its router, without the include prefixes, and the full template is on
    the effective route context. Plain Starlette routes inside FastAPI's router (the docs pages)
    leave only their endpoint in the scope.
    """
    fastapi_scope = scope.get("fastapi")
    if isinstance(fastapi_scope, dict):
        effective = fastapi_scope.get("effective_route_context")
        path = getattr(effective, "path_format", None)
        if isinstance(path, str):
            return path
    route = scope.get("route")
    path = getattr(route, "path_format", None)
    if isinstance(path, str):
        return path
    endpoint = scope.get("endpoint")
    app = scope.get("app")
    if endpoint is not None and app is not None:
        for candidate in getattr(app, "routes", ()):
            if getattr(candidate, "endpoint", None) is endpoint:
                path = getattr(candidate, "path_format", None)
                if isinstance(path, str):
                    return path
    return UNMATCHED_ROUTE


def _new_request_id() -> str:
    # 128 random bits as 32 hex digits, like uuid4().hex, for a quarter of its cost.
    return os.urandom(16).hex()


class RequestMiddleware:
    """See the module docstring. `max_body_bytes=0` disables the size limit."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: HttpMetrics,
        max_body_bytes: int = 0,
        quiet_routes: Collection[str] = _DEFAULT_QUIET,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        # Probes and scrapes hit these every few seconds; their access lines go to DEBUG.
        self.quiet_routes = frozenset(quiet_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        request_id: str | None = None
        trace_headers: dict[str, str] = {}
        content_length: bytes | None = None
        for name, value in scope["headers"]:
            if name == _REQUEST_ID_RAW:
                if _SANE_REQUEST_ID.fullmatch(value):
                    request_id = value.decode("ascii")
            elif name in _TRACE_HEADERS:
                trace_headers[_TRACE_HEADERS[name]] = value.decode("latin-1")
            elif name == b"content-length":
                content_length = value
        if request_id is None:
            request_id = _new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        method: str = scope["method"]

        # Probes and scrapes (every few seconds, from every replica) would be most of the spans.
        quiet = scope["path"] in self.quiet_routes
        span, token = _enter_trace(trace_headers, method, scope["path"], record=not quiet)

        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", ()))
                if not any(key.lower() == _REQUEST_ID_RAW for key, _ in headers):
                    headers.append((_REQUEST_ID_RAW, request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        limit = self.max_body_bytes
        app_receive = receive
        if limit:
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise BodyTooLarge(limit)
                return message

            app_receive = limited_receive

        self.metrics.in_flight.inc()
        # Tokens rather than `bound_contextvars`, whose generator-based context manager costs
        # several times more per request.
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            try:
                if limit and _declared_too_large(content_length, limit):
                    problem = Problem(413, detail=BodyTooLarge(limit).detail)
                    await problem_response(problem, scope["path"])(scope, receive, send_wrapper)
                else:
                    await self.app(scope, app_receive, send_wrapper)
            except Exception as exc:
                if response_started:
                    # Too late for an error response; the server drops the connection.
                    _error_log.exception("unhandled_error_after_response_start")
                    raise
                response = self._error_response(exc, scope, span)
                await response(scope, receive, send_wrapper)
            finally:
                self._finish(scope, method, status, started, span)
        finally:
            structlog.contextvars.reset_contextvars(**bound)
            self.metrics.in_flight.dec()
            if token is not None:
                otel_context.detach(token)

    @staticmethod
    def _error_response(exc: Exception, scope: Scope, span: trace.Span | None) -> Response:
        if isinstance(exc, BodyTooLarge):
            # A route outside FastAPI's body parsing read past the limit.
            return problem_response(Problem(413, detail=exc.detail), scope["path"])
        # Answered here rather than by an outer handler so the log line carries the request id.
        problem = unexpected_problem(exc, scope["path"])
        if span is not None:
            span.record_exception(exc)
        return problem_response(problem)

    def _finish(
        self, scope: Scope, method: str, status: int, started: float, span: trace.Span | None
    ) -> None:
        elapsed = time.perf_counter() - started
        route = route_template(scope)
        self.metrics.observe(method, route, status, elapsed)
        if span is not None:
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)
            span.end()
        quiet = route in self.quiet_routes
        # Asked first: a line the level drops would still run structlog's processor chain.
        access_log = _access_log.at(logging.DEBUG if quiet else logging.INFO)
        if access_log is None:
            return
        log = access_log.debug if quiet else access_log.info
        log(
            "http_request",
            method=method,
            path=scope["path"],
            route=route,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
        )


def _enter_trace(
    trace_headers: dict[str, str], method: str, path: str, *, record: bool = True
) -> tuple[trace.Span | None, Token[Context] | None]:
    """Start the server span (tracing on, `record`) or adopt the caller's context."""
    parent = tracing.extract(trace_headers) if trace_headers else None
    if record and tracing.enabled():
        span = _tracer.start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        return span, otel_context.attach(trace.set_span_in_context(span, parent))
    if parent is not None:
        # Not recording, but logs and outbound calls still carry the caller's trace.
        return None, otel_context.attach(parent)
    return None, None


def _declared_too_large(content_length: bytes | None, limit: int) -> bool:
    if content_length is None:
        return False
    try:
        return int(content_length) > limit
    except ValueError:
        # The server rejects a malformed Content-Length before we get here; the streamed count
        # still applies if one slips through.
        return False
