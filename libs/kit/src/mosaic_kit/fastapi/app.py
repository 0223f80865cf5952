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

from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Lifespan

from mosaic_kit.fastapi.auth import document_bearer
from mosaic_kit.fastapi.errors import install_problem_handlers
from mosaic_kit.fastapi.gateway import publish_policies
from mosaic_kit.fastapi.health import docs_router, health_router
from mosaic_kit.fastapi.middleware import RequestMiddleware
from mosaic_kit.metrics import default_registry, http_metrics
from mosaic_kit.openapi import document_problems
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
        docs_url=None,  # served below, from the installed Swagger UI files (no CDN)
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
    for router in (health_router(), docs_router(title), *routers):
        _add_routes(app, router)
    app.add_middleware(
        RequestMiddleware, metrics=http_metrics(registry), max_body_bytes=settings.max_body_bytes
    )
    _document_problems(app)
    return app


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """Put `router`'s routes on the app's own router, flat.

    FastAPI (>= 0.13x) keeps an included router as one nested route that matches its children
    again, through per-request scope bookkeeping: about a fifth of a trivial request's time on
    the chassis (`bench/service_chassis.py`). A router's own prefix, tags, dependencies and
    responses are already in its routes when they are declared, so adding them flat is the same
    app; a router that itself includes others is included as FastAPI does it.
    """
    if any(not isinstance(route, APIRoute | Route) for route in router.routes):
        app.include_router(router)
        return
    app.router.routes.extend(router.routes)


def _document_problems(app: FastAPI) -> None:
    """Document errors as the problem+json they are (see `mosaic_kit.openapi`), the bearer token
    of the routes that read one, and each exposed route's gateway policy
    (`mosaic_kit.fastapi.gateway`)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = document_bearer(app, document_problems(generate()))
            app.openapi_schema = publish_policies(app, document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
