"""A tiny service for the CLI `serve` test, run as `python kit_serve_app.py serve ...`."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from mosaic_kit.fastapi.app import create_app
from mosaic_kit.fastapi.cli import ServiceCLI
from mosaic_kit.logging import get_logger
from mosaic_kit.settings import ServiceSettings

_log = get_logger("kit_serve_app")
router = APIRouter()


@router.get("/slow")
async def slow(seconds: float = 1.0) -> dict[str, str]:
    _log.info("slow_started")
    await asyncio.sleep(seconds)
    return {"done": "yes"}


@router.get("/gc-frozen")
async def gc_frozen() -> dict[str, int]:
    return {"frozen": gc.get_freeze_count()}


def create(settings: ServiceSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _log.info("lifespan_started")
        yield
        _log.info("lifespan_stopped")

    return create_app(
        settings,
        title="Serve test",
        description="Started by test_cli",
        version="0.0.1",
        routers=[router],
        lifespan=lifespan,
    )


cli = ServiceCLI("kit-serve-test", ServiceSettings, create, package="mosaic_kit", database=False)

if __name__ == "__main__":
    sys.exit(cli.main())
