"""RFC 9457 problem details, the one error format of every Mosaic HTTP response.

Business code raises `Problem` (or one of the helpers below) with a stable machine-readable `code`
such as `auth.email_taken`; `install_problem_handlers` turns it, framework errors (404, 405,
validation) and any unexpected exception into `application/problem+json`. An unexpected exception
is logged with its traceback and answered with a bare 500: never a stack trace to a client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from mosaic_kit.logging import get_logger

PROBLEM_CONTENT_TYPE = "application/problem+json"
_log = get_logger("mosaic_kit.errors")

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


def problem_response(problem: Problem, instance: str | None = None) -> Response:
    body = problem.to_dict()
    if instance:
        body["instance"] = instance
    return Response(
        orjson.dumps(body),
        status_code=problem.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


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
        _log.exception("unhandled_error", path=request.url.path, error=type(exc).__name__)
        return problem_response(Problem(500, detail="An unexpected error occurred"))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)
