"""Every error a FastAPI app can produce, as an RFC 9457 problem (`mosaic_kit.problem`).

`install_problem_handlers` turns `Problem`, framework errors (404, 405, validation) and any
unexpected exception into `application/problem+json`; every 503 carries a `Retry-After`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request, params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from mosaic_kit.openapi import PROBLEM_CONTENT_TYPE
from mosaic_kit.problem import Problem, unexpected_problem, validation_failed

__all__ = [
    "RETRY_AFTER_SECONDS",
    "field_errors_from_pydantic",
    "install_problem_handlers",
    "problem_response",
]

# Seconds a client is told to wait before retrying a 503: about the time a restarted PostgreSQL
# or NATS needs to accept connections again, short enough to be harmless if it is back sooner.
RETRY_AFTER_SECONDS = 2


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


def _not_json_for_a_json_body(request: Request) -> bool:
    """The route reads a JSON body and the request did not say it sent one (no Content-Type, or
    another type than `application/json` or `*/*+json`)."""
    route = request.scope.get("route")
    body = route.body_field if isinstance(route, APIRoute) else None
    if body is None or isinstance(body.field_info, params.Form):
        return False
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    return media != "application/json" and not media.endswith("+json")


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
        if _not_json_for_a_json_body(request):
            # Said plainly rather than as "body: field required", which is what FastAPI makes of
            # a body it did not read.
            problem = Problem(
                415, "http.unsupported_media_type", "Send the body as application/json"
            )
            return problem_response(problem, request.url.path)
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
