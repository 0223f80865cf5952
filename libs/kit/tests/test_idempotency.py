"""Idempotency-Key on creating POSTs, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import APIRouter, FastAPI
from kit_support import schema_database
from pydantic import BaseModel
from sqlalchemy import text
from starlette.responses import Response

from mosaic_kit.fastapi.errors import install_problem_handlers
from mosaic_kit.fastapi.idempotency import Idempotency, IdempotencyGuard
from mosaic_kit.fastapi.parts import DATABASE
from mosaic_kit.problem import Problem
from mosaic_kit.sql.db import Database, new_metadata
from mosaic_kit.sql.idempotency import idempotency_table


class Thing(BaseModel):
    name: str
    secret_word: str = "s3cr3t"


class Recorder:
    def __init__(self) -> None:
        self.created: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail_next = False


@pytest_asyncio.fixture
async def db(pg_url: str, fresh_schema: str) -> AsyncIterator[Database]:
    metadata = new_metadata()
    idempotency_table(metadata)
    async with schema_database(pg_url, fresh_schema, metadata) as database:
        yield database


@pytest_asyncio.fixture
async def app(db: Database) -> tuple[FastAPI, Recorder]:
    recorder = Recorder()
    router = APIRouter()

    @router.post("/things", status_code=201)
    async def create_thing(body: Thing, idem: IdempotencyGuard) -> Response:
        async def create() -> dict[str, Any]:
            if recorder.gate is not None:
                await recorder.gate.wait()
            if recorder.fail_next:
                recorder.fail_next = False
                raise Problem(409, "thing.conflict", "not now")
            thing_id = str(uuid.uuid4())
            recorder.created.append(thing_id)
            return {"id": thing_id, "name": body.name, "token": "very-secret-token"}

        async def replay(first: dict[str, Any]) -> dict[str, Any]:
            return {**first, "token": None}

        return await idem.run(body.model_dump(), create, secret_fields=("token",), on_replay=replay)

    application = FastAPI()
    install_problem_handlers(application)
    application.include_router(router)
    DATABASE.provide(application, db)
    return application, recorder


def client(application: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


async def test_without_a_key_every_request_creates(app: tuple[FastAPI, Recorder]) -> None:
    application, recorder = app
    async with client(application) as c:
        for _ in range(2):
            assert (await c.post("/things", json={"name": "a"})).status_code == 201
    assert len(recorder.created) == 2


async def test_a_repeat_returns_the_first_result_and_creates_nothing(
    app: tuple[FastAPI, Recorder], db: Database
) -> None:
    application, recorder = app
    hdr = {"Idempotency-Key": "key-1"}
    async with client(application) as c:
        first = await c.post("/things", json={"name": "a"}, headers=hdr)
        second = await c.post("/things", json={"name": "a"}, headers=hdr)
    assert first.status_code == second.status_code == 201
    assert first.json()["token"] == "very-secret-token"
    assert second.json() == {**first.json(), "token": None}
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(recorder.created) == 1
    async with db.connect() as conn:
        stored = (await conn.execute(text("SELECT body FROM idempotency_keys"))).scalar_one()
    assert b"very-secret-token" not in stored  # secrets are never kept


async def test_same_key_other_body_is_422_and_changes_nothing(
    app: tuple[FastAPI, Recorder],
) -> None:
    application, recorder = app
    hdr = {"Idempotency-Key": "key-2"}
    async with client(application) as c:
        await c.post("/things", json={"name": "a"}, headers=hdr)
        other = await c.post("/things", json={"name": "b"}, headers=hdr)
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency.key_reused"
    assert len(recorder.created) == 1


async def test_keys_are_scoped_per_route_and_caller(app: tuple[FastAPI, Recorder]) -> None:
    application, recorder = app
    async with client(application) as c:
        await c.post(
            "/things", json={"name": "a"}, headers={"Idempotency-Key": "k", "x-api-key": "one"}
        )
        await c.post(
            "/things", json={"name": "a"}, headers={"Idempotency-Key": "k", "x-api-key": "two"}
        )
    assert len(recorder.created) == 2


async def test_a_concurrent_repeat_is_409_while_the_first_runs(
    app: tuple[FastAPI, Recorder],
) -> None:
    application, recorder = app
    recorder.gate = asyncio.Event()
    hdr = {"Idempotency-Key": "key-3"}
    async with client(application) as c:
        first = asyncio.create_task(c.post("/things", json={"name": "a"}, headers=hdr))
        await asyncio.sleep(0.2)
        during = await c.post("/things", json={"name": "a"}, headers=hdr)
        recorder.gate.set()
        done = await first
    assert during.status_code == 409
    assert during.json()["code"] == "idempotency.in_progress"
    assert done.status_code == 201
    assert len(recorder.created) == 1


async def test_a_failed_attempt_releases_the_key(app: tuple[FastAPI, Recorder]) -> None:
    application, recorder = app
    recorder.fail_next = True
    hdr = {"Idempotency-Key": "key-4"}
    async with client(application) as c:
        failed = await c.post("/things", json={"name": "a"}, headers=hdr)
        retried = await c.post("/things", json={"name": "a"}, headers=hdr)
    assert failed.status_code == 409
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert len(recorder.created) == 1


@pytest.mark.parametrize("key", ["", "   ", "x" * 201])
async def test_bad_keys_are_422(app: tuple[FastAPI, Recorder], key: str) -> None:
    application, recorder = app
    async with client(application) as c:
        response = await c.post("/things", json={"name": "a"}, headers={"Idempotency-Key": key})
    assert response.status_code == 422
    assert recorder.created == []


async def test_an_abandoned_claim_is_taken_over(db: Database) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            text(
                "INSERT INTO idempotency_keys (scope, key, request_hash, created_at) "
                "VALUES ('s', 'k', :h, now() - interval '10 minutes')"
            ),
            {"h": __import__("hashlib").sha256(b'{"a":1}').digest()},
        )
    made: list[int] = []

    async def create() -> dict[str, Any]:
        made.append(1)
        return {"ok": True}

    response = await Idempotency(db, "k", "s").run({"a": 1}, create)
    assert response.status_code == 201
    assert made == [1]
