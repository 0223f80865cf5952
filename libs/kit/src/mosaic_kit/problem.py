"""RFC 9457 problem details, the one error format of Mosaic, free of any web framework.

Business code raises `Problem` (or one of the helpers below) with a stable machine-readable `code`
such as `auth.email_taken`; the FastAPI adapter (`mosaic_kit.fastapi.errors`) renders it as
`application/problem+json`, the NATS adapter as an error reply. An unexpected exception becomes a
bare 500 (`unexpected_problem` logs it with its traceback): never a stack trace to a client.

One exception to that: a failure to *reach* a dependency (PostgreSQL refusing or dropping the
connection, the pool timing out, NATS disconnected or not answering) is not a bug of this service
but a passing outage, so `unexpected_problem` answers it with a 503 `service.unavailable`, which
clients and the gateway retry, and logs one line without a traceback. Which errors mean that is
the adapters' knowledge: each registers a test with `treat_as_unreachable` when it is imported
(`mosaic_kit.sql.outages`, `mosaic_kit.nats.outages`); an `OSError` always counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from mosaic_kit.logging import get_logger

__all__ = [
    "Problem",
    "bad_request",
    "conflict",
    "default_code",
    "forbidden",
    "not_found",
    "treat_as_unreachable",
    "unauthorized",
    "unavailable_cause",
    "unexpected_problem",
    "validation_failed",
]

_log = get_logger("mosaic_kit.errors")

# Tests telling that an error means a dependency cannot be reached right now, whatever the request
# was. Connection refused or reset, host unreachable, socket gone, connect timeout: always.
_unreachable: list[Callable[[BaseException], bool]] = [lambda exc: isinstance(exc, OSError)]
# Bounds the walk along `__cause__`/`__context__` (drivers wrap an error two or three times).
_MAX_CHAIN = 16

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}


def default_code(status: int) -> str:
    """The generic code for a status, e.g. 404 -> `http.not_found`."""
    return "http." + _STATUS_CODES.get(status, str(status))


class Problem(Exception):  # noqa: N818 - RFC 9457 calls it a problem
    """An error a client can act on. `code` is stable; `detail` is for humans."""

    def __init__(
        self,
        status: int,
        code: str | None = None,
        detail: str | None = None,
        *,
        title: str | None = None,
        errors: Sequence[Mapping[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code or default_code(status)
        self.title = title or HTTPStatus(status).phrase
        self.detail = detail or self.title
        self.errors = list(errors) if errors else None
        self.headers = dict(headers) if headers else {}
        super().__init__(f"{self.status} {self.code}: {self.detail}")

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"urn:mosaic:problem:{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def treat_as_unreachable(check: Callable[[BaseException], bool]) -> None:
    """Count the errors `check` accepts as "a dependency cannot be reached now" (idempotent)."""
    if check not in _unreachable:
        _unreachable.append(check)


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
        if any(check(current) for check in _unreachable):
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
