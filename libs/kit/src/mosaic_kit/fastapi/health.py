"""Liveness, readiness and metrics endpoints, and the docs page.

`/healthz` answers as long as the event loop does: restarting the process is the only cure for it
failing. `/readyz` runs the checks the service's lifespan put in `app.state.readiness` (say
`{"db": db.ping, "nats": ...}`) concurrently, each under `settings.readiness_timeout`; a failing
one takes the replica out of load balancing without restarting it. Failures are named with the
exception type only: messages can carry hosts or SQL and this endpoint is unauthenticated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from mosaic_kit import swagger_ui
from mosaic_kit.fastapi.parts import Part
from mosaic_kit.logging import get_logger
from mosaic_kit.metrics import render
from mosaic_kit.problem import Problem

__all__ = ["ASYNCAPI", "ReadinessCheck", "docs_router", "health_router", "run_checks"]

ReadinessCheck = Callable[[], Awaitable[Any]]
# The service's AsyncAPI document (`mosaic_kit.asyncapi`), provided by the chassis once assembled.
ASYNCAPI: Part[dict[str, Any]] = Part("the AsyncAPI document")
_log = get_logger("mosaic_kit.health")


def _json(body: Mapping[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _run_one(name: str, check: ReadinessCheck, limit: float) -> str:
    try:
        async with asyncio.timeout(limit):
            await check()
    except TimeoutError:
        _log.warning("readiness_check_failed", check=name, reason="timeout", seconds=limit)
        return "timeout"
    except Exception as exc:
        _log.warning("readiness_check_failed", check=name, error=type(exc).__name__, exc_info=True)
        return f"failed: {type(exc).__name__}"
    return "ok"


async def run_checks(checks: Mapping[str, ReadinessCheck], limit: float) -> dict[str, str]:
    """Run every check at once, each within `limit` seconds.

    Each result is "ok", "timeout" or "failed: <ExceptionType>".
    """
    names = list(checks)
    results = await asyncio.gather(*(_run_one(n, checks[n], limit) for n in names))
    return dict(zip(names, results, strict=True))


def health_router() -> APIRouter:
    """`/healthz`, `/readyz` and `/metrics`, reading what they report from `app.state`."""
    router = APIRouter(tags=["operations"])

    @router.get(
        "/healthz",
        summary="Liveness",
        response_class=Response,
        responses={200: {"content": {"application/json": {}}, "description": "Alive"}},
    )
    async def healthz(request: Request) -> Response:
        state = request.app.state
        return _json(
            {
                "status": "ok",
                "service": state.settings.service_name,
                "instance": state.settings.instance_id,
                "version": state.build.version,
                "commit": state.build.commit,
            }
        )

    @router.get(
        "/readyz",
        summary="Readiness",
        response_class=Response,
        responses={
            200: {"content": {"application/json": {}}, "description": "Every check passed"},
            503: {"content": {"application/json": {}}, "description": "A check failed"},
        },
    )
    async def readyz(request: Request) -> Response:
        state = request.app.state
        checks: Mapping[str, ReadinessCheck] = getattr(state, "readiness", {})
        results = await run_checks(checks, state.settings.readiness_timeout)
        failing = sorted(name for name, result in results.items() if result != "ok")
        if failing:
            return _json({"status": "unavailable", "checks": results, "failing": failing}, 503)
        return _json({"status": "ready", "checks": results})

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        registry = getattr(request.app.state, "metrics_registry", None)
        return Response(render(registry), media_type=CONTENT_TYPE_LATEST)

    return router


def docs_router(title: str) -> APIRouter:
    """`/docs`: Swagger UI on the service's `/openapi.json`, its assets from the installed
    package (`mosaic_kit.swagger_ui`), so the page works without internet."""
    router = APIRouter(include_in_schema=False)
    page = swagger_ui.page(f"{title} - Swagger UI", "/openapi.json", "/docs/assets")

    @router.get("/docs")
    async def docs() -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    @router.get("/asyncapi.json")
    async def asyncapi(request: Request) -> Response:
        try:
            document = ASYNCAPI.of(request.app)
        except LookupError:
            raise Problem(404, detail="This app publishes no AsyncAPI document") from None
        return _json(document)

    @router.get("/docs/assets/{name}")
    async def docs_asset(name: str) -> Response:
        media = swagger_ui.ASSETS.get(name)
        if media is None:
            raise Problem(404, detail="No such asset")
        return Response(
            swagger_ui.asset(name),
            media_type=media,
            headers={"Cache-Control": "public, max-age=86400"},
        )

    return router
