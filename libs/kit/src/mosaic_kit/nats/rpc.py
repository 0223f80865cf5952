"""Internal request-reply over NATS, served as `nats.micro` services.

Every endpoint is a subject such as `auth.users.get`. Requests are JSON objects; replies are
`{"data": ...}` or `{"error": {"code", "status", "detail"}}`, error replies also carrying the
micro-service error headers so the `nats` CLI shows them. Endpoints of one service name share a
queue group, so replicas split the load, and are discoverable through `$SRV.PING/INFO/STATS`.

A handler raises `mosaic_kit.problem.Problem` for errors the caller can act on; anything else is
logged and answered with a bare internal error. On the calling side, `request` returns the reply's
`data` or raises `RpcError`, which is itself a `Problem`: an HTTP route that lets it through answers
with the remote status and code (503 when nobody serves the subject, 504 on a timeout).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import nats.errors
import orjson
import pydantic
from nats.aio.client import Client
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER, Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig
from opentelemetry import trace

from mosaic_kit import metrics, tracing
from mosaic_kit.logging import get_logger
from mosaic_kit.problem import Problem
from mosaic_kit.settings import ServiceSettings

__all__ = [
    "Endpoint",
    "Handler",
    "RpcError",
    "RpcService",
    "RpcTimeout",
    "RpcUnavailable",
    "request",
    "serve",
    "typed",
]

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

In = TypeVar("In", bound=pydantic.BaseModel)
Out = TypeVar("Out", bound=pydantic.BaseModel)


@dataclass(frozen=True)
class Endpoint:
    """A handler with its request and reply models, published in `$SRV.INFO`.

    The request is validated into `request_model` before the handler runs (422
    `validation_failed` otherwise, the handler never called); the reply is the handler's model as
    JSON (by alias). The endpoint's metadata in `$SRV.INFO` holds both JSON Schemas
    (`request_schema`, `response_schema`), so a caller can read the contract from the bus.
    """

    request_model: type[pydantic.BaseModel]
    response_model: type[pydantic.BaseModel]
    handler: Handler

    def metadata(self) -> dict[str, str]:
        return {
            "request_schema": orjson.dumps(self.request_model.model_json_schema()).decode(),
            "response_schema": orjson.dumps(
                self.response_model.model_json_schema(mode="serialization")
            ).decode(),
        }


def typed(
    request_model: type[In], response_model: type[Out], handler: Callable[[In], Awaitable[Out]]
) -> Endpoint:
    """`handler` as an endpoint taking `request_model` and answering `response_model`."""

    async def run(payload: dict[str, Any]) -> Any:
        answer = await handler(request_model.model_validate(payload))
        if not isinstance(answer, response_model):
            # The handler's bug, not the caller's: a 500, never a 422.
            raise TypeError(f"answered {type(answer).__name__}, not {response_model.__name__}")
        return answer.model_dump(mode="json", by_alias=True)

    return Endpoint(request_model, response_model, run)


_log = get_logger("mosaic_kit.rpc")
_tracer = tracing.tracer("mosaic_kit.rpc")
_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")


class RpcError(Problem):
    """An error reply, or no reply at all. `code`, `status` and `detail` mirror the wire format."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        if status not in HTTPStatus._value2member_map_:
            status = 502
        super().__init__(status, code, detail)


class RpcUnavailable(RpcError):  # noqa: N818 - contract name
    """Nobody serves the subject, or this process has no NATS connection."""

    def __init__(self, detail: str = "The service is unavailable") -> None:
        super().__init__(503, "rpc.unavailable", detail)


class RpcTimeout(RpcError):  # noqa: N818 - contract name
    """No reply within the timeout (the request may still have been processed)."""

    def __init__(self, detail: str = "The service did not answer in time") -> None:
        super().__init__(504, "rpc.timeout", detail)


async def request(
    nc: Client,
    subject: str,
    payload: Mapping[str, Any],
    *,
    timeout: float,  # noqa: ASYNC109 - NATS's own request timeout, part of the contract
) -> Any:
    """Send `payload` to `subject` and return the reply's `data`."""
    body = orjson.dumps(dict(payload))
    with _tracer.start_as_current_span(subject, kind=trace.SpanKind.CLIENT) as span:
        span.set_attribute("messaging.system", "nats")
        span.set_attribute("messaging.destination.name", subject)
        headers = tracing.inject({})
        try:
            reply = await nc.request(subject, body, timeout=timeout, headers=headers or None)
        except nats.errors.NoRespondersError as exc:
            raise RpcUnavailable(f"No service answers {subject}") from exc
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionDrainingError,
            nats.errors.OutboundBufferLimitError,
        ) as exc:
            raise RpcUnavailable(f"No NATS connection to reach {subject}") from exc
        except TimeoutError as exc:  # nats.errors.TimeoutError is one too
            raise RpcTimeout(f"{subject} did not answer within {timeout}s") from exc
        return _decode_reply(subject, reply.data, reply.headers)


def _decode_reply(subject: str, data: bytes, headers: Mapping[str, str] | None) -> Any:
    try:
        body = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        if "error" in body and isinstance(body["error"], dict):
            error = body["error"]
            status = error.get("status")
            raise RpcError(
                status if isinstance(status, int) else 500,
                str(error.get("code") or "internal"),
                str(error.get("detail") or "The service reported an error"),
            )
        if "data" in body:
            return body["data"]
    # A responder that does not speak our envelope (another micro service, a proxy).
    if headers and ERROR_CODE_HEADER in headers:
        code = headers[ERROR_CODE_HEADER]
        status = int(code) if code.isdigit() else 500
        raise RpcError(status, "rpc.remote_error", headers.get(ERROR_HEADER) or code)
    raise RpcError(502, "rpc.bad_reply", f"{subject} answered with an unreadable reply")


class RpcService(Service):
    """A `nats.micro` service whose handlers run concurrently and are drained on `stop()`.

    The client runs a subscription's callbacks one at a time; handlers that wait on a database
    would then queue behind each other, so each request runs in its own task, at most
    `max_in_flight` at once (beyond that the subscription stops reading, which is the backpressure).
    Because the work leaves the micro endpoint's callback at once, its processing-time statistics
    measure dispatch only; request counts are exact.
    """

    def __init__(self, nc: Client, config: ServiceConfig, *, max_in_flight: int = 64) -> None:
        super().__init__(nc, config)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()

    async def add_rpc_endpoint(self, subject: str, handler: Handler | Endpoint) -> None:
        metadata = None
        if isinstance(handler, Endpoint):
            metadata, handler = handler.metadata(), handler.handler
        run = handler

        async def dispatch(req: Request) -> None:
            await self._slots.acquire()
            task = asyncio.create_task(_answer(req, subject, run), name=f"rpc {subject}")
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

        name = _INVALID_NAME_CHARS.sub("_", subject)
        await self.add_endpoint(
            EndpointConfig(name=name, subject=subject, handler=dispatch, metadata=metadata)
        )

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()

    async def stop(self) -> None:
        """Stop taking requests, then wait for the ones being handled to be answered."""
        await super().stop()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)


def discovery_metadata(settings: ServiceSettings) -> dict[str, str]:
    """What a service publishes about itself in `$SRV.INFO` for the gateway to find it."""
    return {"http": settings.http_url(), "instance": settings.instance_id}


async def serve(
    nc: Client,
    *,
    name: str,
    version: str,
    description: str,
    endpoints: Mapping[str, Handler | Endpoint],
    queue_group: str | None = None,
    max_in_flight: int = 64,
    metadata: Mapping[str, str] | None = None,
) -> RpcService:
    """Start service `name` answering each subject of `endpoints` with its handler.

    `metadata` is published in `$SRV.INFO`; services put their HTTP address there
    (`{"http": "http://10.0.0.5:8001"}`) so that the gateway discovers instances through NATS.
    A service with no endpoints is still discoverable.
    """
    service = RpcService(
        nc,
        ServiceConfig(
            name=name,
            version=version,
            description=description,
            queue_group=queue_group,
            metadata=dict(metadata or {}),
        ),
        max_in_flight=max_in_flight,
    )
    await service.start()
    try:
        for subject, handler in endpoints.items():
            await service.add_rpc_endpoint(subject, handler)
        await nc.flush()
    except BaseException:
        await service.stop()
        raise
    _log.info("rpc_serving", service=name, version=version, subjects=sorted(endpoints))
    return service


# RED per NATS endpoint, as HttpMetrics gives per HTTP route. The subject is the endpoint's own
# (declared in code, so a bounded set) and the status the reply's: 200, or the error's.
_REQUESTS = metrics.counter(
    "rpc_requests",
    "NATS request-reply requests answered, by endpoint subject and status.",
    ("subject", "status"),
)
_DURATION = metrics.histogram(
    "rpc_request_duration_seconds",
    "Time from a NATS request's arrival to its reply being sent, by endpoint subject.",
    ("subject",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


async def _answer(req: Request, subject: str, handler: Handler) -> None:
    context = tracing.extract(req.headers)
    with _tracer.start_as_current_span(
        subject, context=context, kind=trace.SpanKind.SERVER
    ) as span:
        span.set_attribute("messaging.system", "nats")
        span.set_attribute("messaging.destination.name", subject)
        started = time.perf_counter()
        error: Problem | None = None
        body = b""
        try:
            result = await handler(_decode_request(req.data))
            body = orjson.dumps({"data": result})
        except Problem as problem:
            error = problem
        except pydantic.ValidationError as exc:
            error = Problem(422, "validation_failed", _summarize(exc))
        except Exception as exc:
            _log.exception("rpc_handler_failed", subject=subject, error=type(exc).__name__)
            error = Problem(500, "internal", "An unexpected error occurred")
        if error is not None:
            span.set_attribute("rpc.error_code", error.code)
            if error.status >= 500:
                span.set_status(trace.StatusCode.ERROR)
            await _respond_error(req, subject, error)
        else:
            await _send(req.respond(body), subject)
        _REQUESTS.labels(subject, str(error.status if error else 200)).inc()
        _DURATION.labels(subject).observe(time.perf_counter() - started)


def _decode_request(data: bytes) -> dict[str, Any]:
    if not data:
        return {}
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, "rpc.malformed_request", "The request is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise Problem(400, "rpc.malformed_request", "The request must be a JSON object")
    return payload


async def _respond_error(req: Request, subject: str, error: Problem) -> None:
    body = orjson.dumps(
        {"error": {"code": error.code, "status": error.status, "detail": error.detail}}
    )
    # Header values cannot carry line breaks.
    description = " ".join(error.detail.split())
    await _send(req.respond_error(str(error.status), description, data=body), subject)


async def _send(reply: Awaitable[None], subject: str) -> None:
    try:
        await reply
    except ValueError:
        # Published without a reply subject: nobody waits for an answer.
        _log.debug("rpc_request_without_reply", subject=subject)
    except (nats.errors.Error, OSError) as exc:
        _log.warning("rpc_reply_failed", subject=subject, error=type(exc).__name__)


def _summarize(exc: pydantic.ValidationError) -> str:
    parts = []
    for item in exc.errors()[:5]:
        where = ".".join(str(p) for p in item.get("loc", ())) or "request"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "The request is not valid"
