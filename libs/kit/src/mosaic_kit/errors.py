"""RFC 9457 problem details, the one error format of every Mosaic HTTP response.

Business code raises `Problem` (or one of the helpers below) with a stable machine-readable `code`
such as `auth.email_taken`; `install_problem_handlers` turns it, framework errors (404, 405,
validation) and any unexpected exception into `application/problem+json`. An unexpected exception
is logged with its traceback and answered with a bare 500: never a stack trace to a client.

One exception to that: a failure to *reach* a dependency (PostgreSQL refusing or dropping the
connection, the pool timing out, NATS disconnected or not answering) is not a bug of this service
but a passing outage, so `unexpected_problem` answers it with a 503 `service.unavailable` and a
`Retry-After`, which clients and the gateway retry, and logs one line without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import asyncpg
import nats.errors
import nats.js.errors
import orjson
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from mosaic_kit.logging import get_logger
from mosaic_kit.openapi import PROBLEM_CONTENT_TYPE
from mosaic_kit.problem import Problem, default_code

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "Problem",
    "bad_request",
    "conflict",
    "default_code",
    "field_errors_from_pydantic",
    "forbidden",
    "install_problem_handlers",
    "not_found",
    "problem_response",
    "unauthorized",
    "unavailable_cause",
    "unexpected_problem",
    "validation_failed",
]

# Seconds a client is told to wait before retrying a 503: about the time a restarted PostgreSQL
# or NATS needs to accept connections again, short enough to be harmless if it is back sooner.
RETRY_AFTER_SECONDS = 2
_log = get_logger("mosaic_kit.errors")

# Errors that mean a dependency cannot be reached right now, whatever the request was. Not in
# the list: query cancellations (a statement timeout is this service's business), serialization
# failures and deadlocks (the transaction lost, not the server), and every other SQL error.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    # Connection refused or reset, host unreachable, socket gone, connect timeout; NATS's own
    # TimeoutError is one too.
    OSError,
    # SQLAlchemy's pool found no connection within its timeout, or a connection it had died.
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.DisconnectionError,
    # PostgreSQL closed the connection or refused it (starting up, shutting down, crashed, full).
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    # NATS: no connection now (closed, reconnecting, draining, buffer full), or nobody answered.
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.FlushTimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)
# Bounds the walk along `__cause__`/`__context__` (drivers wrap an error two or three times).
_MAX_CHAIN = 16


def problem_response(problem: Problem, instance: str | None = None) -> Response:
    body = problem.to_dict()
    if instance:
        body["instance"] = instance
    headers = problem.headers
    if problem.status == 503 and "retry-after" not in {name.lower() for name in headers}:
        # Every 503 says when to come back, whoever raised it.
        headers = {**headers, "Retry-After": str(RETRY_AFTER_SECONDS)}
    return Response(
        orjson.dumps(body),
        status_code=problem.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, what it wraps (cause, context, the members of a group), depth first, bounded."""
    seen: set[int] = set()
    pending = [exc]
    while pending and len(seen) < _MAX_CHAIN:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__context__, current.__cause__):
            if linked is not None:
                pending.append(linked)


def unavailable_cause(exc: BaseException) -> BaseException | None:
    """The error in `exc`'s chain saying a dependency cannot be reached now, if there is one."""
    for current in _chain(exc):
        if isinstance(current, _UNREACHABLE):
            return current
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            # The dialect recognised a lost connection ("connection is closed", ...).
            return current
    return None


def unexpected_problem(exc: Exception, path: str) -> Problem:
    """The problem an exception no handler knew is answered with; logs it (once, here).

    A dependency out of reach is a 503 with `Retry-After`, logged as a warning without a
    traceback (an outage would otherwise bury the logs in identical ones); anything else is a
    bug: a bare 500, logged with its traceback.
    """
    cause = unavailable_cause(exc)
    if cause is not None:
        _log.warning(
            "dependency_unavailable",
            path=path,
            error=type(exc).__name__,
            cause=type(cause).__name__,
        )
        return Problem(
            503,
            "service.unavailable",
            "A dependency of this service is unavailable; retry shortly",
        )  # `problem_response` adds the Retry-After every 503 carries
    _log.exception("unhandled_error", path=path, error=type(exc).__name__)
    return Problem(500, detail="An unexpected error occurred")


def bad_request(code: str, detail: str) -> Problem:
    return Problem(400, code, detail)


def unauthorized(
    code: str = "auth.unauthorized", detail: str = "Authentication required"
) -> Problem:
    return Problem(401, code, detail, headers={"WWW-Authenticate": "Bearer"})


def forbidden(code: str = "auth.forbidden", detail: str = "Not allowed") -> Problem:
    return Problem(403, code, detail)


def not_found(code: str = "http.not_found", detail: str = "Not found") -> Problem:
    return Problem(404, code, detail)


def conflict(code: str, detail: str) -> Problem:
    return Problem(409, code, detail)


def validation_failed(errors: Sequence[Mapping[str, str]], detail: str | None = None) -> Problem:
    return Problem(422, "validation_failed", detail or "The request is not valid", errors=errors)


def field_errors_from_pydantic(errors: Sequence[Any]) -> list[dict[str, str]]:
    """Pydantic/FastAPI error entries as `{field, message}`; `body.` prefixes are dropped."""
    out: list[dict[str, str]] = []
    for err in errors:
        loc = [str(part) for part in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            where = loc[0]
            loc = loc[1:]
            field = ".".join(loc) if loc else where
            if where != "body" and loc:
                field = f"{where}.{field}"
        else:
            field = ".".join(loc) or "body"
        out.append({"field": field, "message": str(err.get("msg", "invalid"))})
    return out


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error `app` can produce an RFC 9457 problem."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return problem_response(exc, request.url.path)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else None
        problem = Problem(exc.status_code, detail=detail, headers=exc.headers)
        return problem_response(problem, request.url.path)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = field_errors_from_pydantic(exc.errors())
        # A body that is not JSON at all is a 400, not a field error.
        if any(e["message"].startswith("JSON decode error") for e in errors):
            return problem_response(
                Problem(400, "http.malformed_json", "The body is not valid JSON"), request.url.path
            )
        return problem_response(validation_failed(errors), request.url.path)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        return problem_response(unexpected_problem(exc, request.url.path))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)
