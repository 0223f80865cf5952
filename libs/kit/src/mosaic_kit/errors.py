"""RFC 9457 problem details, the one error format of every Mosaic HTTP response.

Business code raises `Problem` (or one of the helpers below) with a stable machine-readable `code`
such as `auth.email_taken`; `install_problem_handlers` turns it, framework errors (404, 405,
validation) and any unexpected exception into `application/problem+json`. An unexpected exception
is logged with its traceback and answered with a bare 500: never a stack trace to a client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from mosaic_kit.logging import get_logger
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
    "validation_failed",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"
_log = get_logger("mosaic_kit.errors")


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
