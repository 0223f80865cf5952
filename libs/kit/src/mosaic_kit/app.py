"""`create_app`: a FastAPI application with the Mosaic chassis installed.

Every service builds its app here so they all share: problem+json errors (also in the OpenAPI
schema), the request middleware (request id, trace context, access log, RED metrics, body
limit), `/healthz` `/readyz` `/metrics`, and docs at `/docs` + `/openapi.json`.

Responses: FastAPI serializes routes with a declared return type or `response_model` straight to
JSON bytes in pydantic-core, which is faster than any response class (a custom default class, even
orjson's, switches that path off). So the default class is kept and routes should declare their
return types; `OrjsonResponse` is there for handlers that build plain dicts themselves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from starlette.responses import JSONResponse
from starlette.types import Lifespan

from mosaic_kit.errors import PROBLEM_CONTENT_TYPE, install_problem_handlers
from mosaic_kit.health import health_router
from mosaic_kit.metrics import default_registry, http_metrics
from mosaic_kit.middleware import RequestMiddleware
from mosaic_kit.settings import ServiceSettings
from mosaic_kit.version import BuildInfo, resolve_commit

__all__ = ["OrjsonResponse", "create_app"]

# FastAPI's built-in OpenTelemetry instrumentation would open a second server span (and log
# exceptions with stack traces to an OTel logger); RequestMiddleware owns both concerns.
_NO_FASTAPI_TELEMETRY: Any = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}

_PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; `code` is stable and machine-readable.",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "examples": ["validation_failed"]},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


class OrjsonResponse(JSONResponse):
    """JSON rendered by orjson, for handlers returning ready-made dicts and lists."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def create_app(
    settings: ServiceSettings,
    *,
    title: str,
    description: str,
    version: str,
    routers: Sequence[APIRouter],
    lifespan: Lifespan[FastAPI] | None = None,
    commit: str | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """Build the service's app. Nothing here does I/O: connections belong in `lifespan`.

    The lifespan fills `app.state.readiness` (`{name: async check}`) for `/readyz`. `commit`
    defaults to `$MOSAIC_GIT_COMMIT`, then the checkout's HEAD; services pass
    `mosaic_kit.version.build_info(package).commit`. `registry` isolates metrics (tests).
    """
    app = FastAPI(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
        telemetry=_NO_FASTAPI_TELEMETRY,
    )
    registry = registry or default_registry()
    app.state.settings = settings
    app.state.build = BuildInfo(version=version, commit=commit or resolve_commit())
    app.state.readiness = {}
    app.state.metrics_registry = registry
    install_problem_handlers(app)
    app.include_router(health_router())
    for router in routers:
        app.include_router(router)
    app.add_middleware(
        RequestMiddleware, metrics=http_metrics(registry), max_body_bytes=settings.max_body_bytes
    )
    _document_problems(app)
    return app


def _document_problems(app: FastAPI) -> None:
    """Describe validation errors as the problem+json they are, not FastAPI's default shape."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_problem_schema(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _with_problem_schema(schema: dict[str, Any]) -> dict[str, Any]:
    problem = {
        "description": "Problem details (RFC 9457)",
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses") if isinstance(operation, dict) else None
            if isinstance(responses, dict) and "422" in responses:
                responses["422"] = {**problem, "description": "Validation failed"}
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = _PROBLEM_SCHEMA
    # FastAPI's validation-error models are unreferenced now (unless a route names them);
    # the first refers to the second, hence the order.
    for name in ("HTTPValidationError", "ValidationError"):
        others = {key: value for key, value in schemas.items() if key != name}
        in_use = f"#/components/schemas/{name}" in json.dumps([schema.get("paths"), others])
        if name in schemas and not in_use:
            del schemas[name]
    return schema
