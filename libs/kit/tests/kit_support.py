"""Shared helpers for the kit's HTTP-side tests (imported by test modules, not collected).

Importing this module configures logging once at collection time: structlog caches each logger
on first use, so it must be configured before any test makes a kit module log.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from sqlalchemy import MetaData, text

from mosaic_kit import tracing
from mosaic_kit.fastapi.app import create_app
from mosaic_kit.logging import configure_logging
from mosaic_kit.metrics import new_registry
from mosaic_kit.settings import ServiceSettings
from mosaic_kit.sql.db import Database, create_engine

SERVICE = "kit-test"
INSTANCE = "kit-test-1"

configure_logging(SERVICE, INSTANCE, "INFO", "json")


@functools.cache
def span_exporter() -> InMemorySpanExporter:
    """An in-memory exporter attached to this process' tracer provider (installed once)."""
    exporter = InMemorySpanExporter()
    tracing.configure_tracing(SERVICE, INSTANCE, None, exporter=exporter)
    return exporter


def settings(**overrides: Any) -> ServiceSettings:
    return ServiceSettings(service_name=SERVICE, instance_id=INSTANCE, **overrides)


def build_app(
    routers: Sequence[APIRouter] = (),
    *,
    registry: CollectorRegistry | None = None,
    **setting_overrides: Any,
) -> FastAPI:
    return create_app(
        settings(**setting_overrides),
        title="Kit test",
        description="An app built by the kit's tests",
        version="9.8.7",
        commit="abc1234",
        routers=routers,
        registry=registry or new_registry(process_metrics=False),
    )


@asynccontextmanager
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def records(caplog: Any, logger: str | None = None) -> list[dict[str, Any]]:
    """The structlog event dicts captured by pytest's handler (optionally from one logger)."""
    out = []
    for record in caplog.records:
        if isinstance(record.msg, dict) and (logger is None or record.name == logger):
            out.append(record.msg)
    return out


def quiet_httpx() -> None:
    # httpx logs every request URL at INFO, query strings included; keep it out of assertions.
    logging.getLogger("httpx").setLevel(logging.WARNING)


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at write time (pytest swaps it per test and phase)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def follow_stderr() -> None:
    """Make the root log handler write to the current stderr, so capsys sees log lines and a
    test that configured logging under capsys leaves no handler on a closed stream."""
    for handler in logging.getLogger().handlers:
        # Exactly ours: pytest's capture handlers are StreamHandler subclasses.
        if type(handler) is logging.StreamHandler:
            handler.setStream(_CurrentStderr())


quiet_httpx()
follow_stderr()


@asynccontextmanager
async def schema_database(
    pg_url: str, schema: str, metadata: MetaData, *, pool_size: int = 4
) -> AsyncIterator[Database]:
    """A `Database` on a new schema holding `metadata`'s tables, dropped afterwards."""
    database = Database(create_engine(pg_url, schema, pool_size=pool_size), schema)
    async with database.transaction() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await conn.run_sync(metadata.create_all)
    try:
        yield database
    finally:
        async with database.transaction() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await database.dispose()


async def row_counts(db: Database, skip: frozenset[str] = frozenset()) -> dict[str, int]:
    """Rows of every table of `db`'s schema but `skip`: a write of any kind changes one of them
    (how a test shows that refused input changed nothing)."""
    async with db.connect() as conn:
        tables = (
            await conn.execute(
                text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                {"s": db.schema},
            )
        ).scalars()
        return {
            name: int(await conn.scalar(text(f'SELECT count(*) FROM "{name}"')))
            for name in list(tables)
            if name not in skip
        }
