"""A dependency out of reach is a 503 problem with Retry-After, not a 500 (real servers, no mocks).

Each case makes a real driver fail the way an outage does: PostgreSQL refusing connections,
PostgreSQL ending a connection in the middle of a query, a NATS connection that is gone. A SQL
error that is the query's own fault stays a 500.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import httpx
import nats
import pytest
from fastapi import APIRouter, FastAPI
from kit_support import build_app, records
from sqlalchemy import text

from mosaic_devstack.embedded import EmbeddedNats, free_port
from mosaic_kit.openapi import PROBLEM_CONTENT_TYPE
from mosaic_kit.sql.db import Database, create_engine

Route = Callable[[], Coroutine[Any, Any, object]]


def _app(route: Route) -> FastAPI:
    router = APIRouter()
    router.add_api_route("/v1/thing", route, methods=["POST"])
    return build_app([router])


@asynccontextmanager
async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def _post(route: Route) -> httpx.Response:
    async with _client(_app(route)) as c:
        return await c.post("/v1/thing")


def _assert_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert resp.headers["retry-after"] == "2"
    body = resp.json()
    assert body["code"] == "service.unavailable"
    assert body["status"] == 503
    assert "Traceback" not in resp.text


def _database(url: str) -> Database:
    return Database(create_engine(url, "public", pool_size=1, max_overflow=0), "public")


async def test_database_refusing_connections_is_503(caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens on the port: what a stopped or restarting PostgreSQL looks like.
    db = _database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/postgres")

    async def write() -> None:
        async with db.transaction() as conn:
            await conn.execute(text("SELECT 1"))

    try:
        resp = await _post(write)
    finally:
        await db.dispose()
    _assert_unavailable(resp)
    logged = records(caplog, "mosaic_kit.errors")
    assert [r["event"] for r in logged] == ["dependency_unavailable"]
    assert logged[0]["cause"] == "ConnectionRefusedError"


async def test_connection_ended_mid_query_is_503(pg_url: str) -> None:
    db = _database(pg_url)
    marker = f"victim-{uuid.uuid4().hex}"

    async def slow_query() -> None:
        async with db.connect() as conn:
            await conn.execute(text(f"SET application_name = '{marker}'"))
            await conn.execute(text("SELECT pg_sleep(30)"))

    async def end_it() -> None:
        # What PostgreSQL does to every session when it shuts down (admin_shutdown, 57P01).
        killer = _database(pg_url)
        try:
            for _ in range(200):
                async with killer.connect() as conn:
                    ended = await conn.scalar(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE application_name = :name AND state = 'active'"
                        ),
                        {"name": marker},
                    )
                if ended:
                    return
                await asyncio.sleep(0.02)
        finally:
            await killer.dispose()

    try:
        resp, _ = await asyncio.wait_for(asyncio.gather(_post(slow_query), end_it()), 20)
    finally:
        await db.dispose()
    _assert_unavailable(resp)


async def test_a_sql_error_of_the_query_itself_stays_500(pg_url: str) -> None:
    db = _database(pg_url)

    async def broken() -> None:
        async with db.connect() as conn:
            await conn.execute(text("SELECT 1 / 0"))

    try:
        resp = await _post(broken)
    finally:
        await db.dispose()
    assert resp.status_code == 500
    assert resp.json()["code"] == "http.internal"
    assert "retry-after" not in resp.headers


async def test_nats_connection_gone_is_503(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    await nc.close()

    async def publish() -> None:
        await nc.publish("mosaic.test.unavailable", b"x")

    _assert_unavailable(await _post(publish))


async def test_nats_not_answering_is_503(own_nats: EmbeddedNats) -> None:
    nc = await nats.connect(own_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    own_nats.stop()

    async def ask() -> None:
        # Made while the client reconnects: buffered, and nobody can answer it.
        await nc.request("mosaic.test.unavailable", b"x", timeout=0.3)

    try:
        _assert_unavailable(await _post(ask))
    finally:
        await nc.close()
