"""The service assembly against real PostgreSQL and NATS: what a definition declares runs, and
stops in the documented order (the micro service first, NATS and the database last)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any

import nats.errors
import orjson
import pytest
from fastapi import APIRouter, Depends, FastAPI
from kit_support import client, schema_database
from sqlalchemy.ext.asyncio import AsyncConnection

from mosaic_kit.chassis.assembly import NATS, Assembly, ServiceDefinition
from mosaic_kit.events import Event, event_subject, new_event, stream_name
from mosaic_kit.fastapi.auth import TOKEN_VERIFIER, current_principal
from mosaic_kit.fastapi.parts import DATABASE, Part
from mosaic_kit.jwks import StaticKeySource
from mosaic_kit.nats.connection import Client, connect
from mosaic_kit.nats.jetstream import ensure_stream, publish
from mosaic_kit.settings import ServiceSettings
from mosaic_kit.sql.db import Database, new_metadata
from mosaic_kit.sql.outbox import add, outbox_table
from mosaic_kit.sql.processed import processed_events_table
from mosaic_kit.tokens import Principal, TokenVerifier

metadata = new_metadata()
outbox_table(metadata)
processed_events_table(metadata)

GREETING: Part[str] = Part("the greeting")
router = APIRouter()


@router.get("/greeting")
async def greeting(text: Annotated[str, Depends(GREETING)]) -> dict[str, str]:
    return {"greeting": text}


@router.get("/me")
async def me(principal: Annotated[Principal, Depends(current_principal)]) -> dict[str, str]:
    return {"user": principal.user_id}


class Recorder:
    """What the test service saw, and in which state the kit was when it closed."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.jobs = 0
        self.closed: list[str] = []
        self.at_close: dict[str, Any] = {}


def definition(name: str, recorder: Recorder, *, fail: bool = False) -> ServiceDefinition[Any]:
    async def assemble(kit: Assembly[ServiceSettings]) -> None:
        kit.provide(GREETING, f"hello from {kit.settings.instance_id}")

        async def apply(_conn: AsyncConnection, event: Event) -> None:
            recorder.applied.append(event.id)

        async def echo(payload: dict[str, Any]) -> dict[str, Any]:
            return {"echo": payload}

        async def job() -> None:
            recorder.jobs += 1

        async def close() -> None:
            # By now the micro service has stopped answering; NATS and the database still work.
            probe = await connect(kit.settings.nats_url, "assembly-probe")
            try:
                await probe.request(f"{name}.echo", b"{}", timeout=0.5)
                recorder.at_close["rpc"] = "answered"
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                recorder.at_close["rpc"] = "gone"
            finally:
                await probe.close()
            recorder.at_close["nats_connected"] = kit.nats.is_connected
            await kit.db.ping()
            recorder.at_close["db"] = "ok"
            recorder.closed.append("service")

        async def close_first_registered() -> None:
            recorder.closed.append("first registered")

        kit.on_stop(close_first_registered)
        kit.on_stop(close)
        if fail:
            raise RuntimeError("assemble failed")
        kit.verify_tokens(
            StaticKeySource({"keys": []}),
            issuer="https://issuer.test",
            audience="mosaic",
            revocation_window=timedelta(minutes=1),
        )
        kit.consume(
            stream=f"{name}src",
            durable=f"{name}-consumer",
            subjects=[event_subject(f"{name}src.thing.made")],
            handler=apply,
        )
        kit.serve({f"{name}.echo": echo})
        with pytest.raises(ValueError, match="declared twice"):
            kit.serve({f"{name}.echo": echo})
        kit.every(f"{name}.job", 0.05, job)

        async def extra_check() -> None:
            return None

        kit.ready_when("extra", extra_check)
        with pytest.raises(ValueError, match="declared twice"):
            kit.ready_when("db", extra_check)

    return ServiceDefinition(
        name=name,
        package="mosaic_kit",
        settings=ServiceSettings,
        title="Assembly test",
        description="A service assembled by the kit's tests",
        version="1.2.3",
        routers=[router],
        assemble=assemble,
    )


@pytest.fixture
async def db(pg_url: str, fresh_schema: str) -> AsyncIterator[Database]:
    async with schema_database(pg_url, fresh_schema, metadata) as database:
        yield database


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    connection = await connect(nats_url, "test-assembly")
    yield connection
    await connection.close()


def settings(pg_url: str, nats_url: str, schema: str) -> ServiceSettings:
    return ServiceSettings(
        service_name="assembly-test",
        instance_id="assembly-1",
        database_url=pg_url,
        db_schema=schema,
        nats_url=nats_url,
        port=8123,
    )


async def eventually(check: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_what_a_definition_declares_runs_and_stops_in_order(
    pg_url: str, nats_url: str, db: Database, nc: Client
) -> None:
    name = f"t{uuid.uuid4().hex[:10]}"
    js = nc.jetstream()
    await ensure_stream(js, f"{name}src")
    recorder = Recorder()
    app: FastAPI = definition(name, recorder).app(settings(pg_url, nats_url, db.schema))
    try:
        async with app.router.lifespan_context(app):
            # Routes get the typed parts; the kit provided its own ones too.
            async with client(app) as http:
                answer = await http.get("/greeting")
                assert answer.json() == {"greeting": "hello from assembly-1"}
                ready = await http.get("/readyz")
                assert ready.status_code == 200
                assert ready.json()["checks"] == {"db": "ok", "nats": "ok", "extra": "ok"}
                # The messaging contract is served beside the OpenAPI.
                contract = (await http.get("/asyncapi.json")).json()
                assert contract["channels"][f"{name}_echo"]["address"] == f"{name}.echo"
                consumed = f"events.{name}src.thing.made"
                assert contract["channels"][consumed.replace(".", "_")]["address"] == consumed
                # The verifier is wired: a token it cannot verify is refused, not a 500.
                refused = await http.get("/me", headers={"authorization": "Bearer not.a.jwt"})
                assert refused.status_code == 401
            assert DATABASE.of(app).schema == db.schema
            assert NATS.of(app).is_connected
            assert isinstance(TOKEN_VERIFIER.of(app), TokenVerifier)

            # The NATS endpoint answers, and the instance is discoverable with its HTTP address.
            reply = await nc.request(f"{name}.echo", b'{"a": 1}', timeout=2)
            assert orjson.loads(reply.data) == {"data": {"echo": {"a": 1}}}
            info = orjson.loads((await nc.request(f"$SRV.INFO.{name}", b"", timeout=2)).data)
            assert info["metadata"]["http"] == "http://127.0.0.1:8123"

            # Its outbox is relayed to its own stream; the other service's events are applied.
            async with db.transaction() as conn:
                await add(conn, new_event(f"{name}.thing.made", {"n": 1}))

            async def relayed() -> bool:
                info = await js.stream_info(stream_name(name))
                return info.state.messages == 1

            await eventually(relayed)
            event = new_event(f"{name}src.thing.made", {"n": 2})
            await publish(js, event)

            async def applied() -> bool:
                return recorder.applied == [event.id]

            await eventually(applied)

            async def jobs_ran() -> bool:
                return recorder.jobs >= 2

            await eventually(jobs_ran)
    finally:
        await js.delete_stream(stream_name(name))
        await js.delete_stream(stream_name(f"{name}src"))

    assert recorder.closed == ["service", "first registered"]
    assert recorder.at_close == {"rpc": "gone", "nats_connected": True, "db": "ok"}
    jobs_at_stop = recorder.jobs
    await asyncio.sleep(0.2)
    assert recorder.jobs == jobs_at_stop, "the periodic job kept running after the stop"
    assert NATS.of(app).is_closed


async def test_a_failing_assemble_stops_what_had_started(
    pg_url: str, nats_url: str, db: Database
) -> None:
    name = f"t{uuid.uuid4().hex[:10]}"
    recorder = Recorder()
    app = definition(name, recorder, fail=True).app(settings(pg_url, nats_url, db.schema))
    with pytest.raises(RuntimeError, match="assemble failed"):
        async with app.router.lifespan_context(app):
            pytest.fail("the app started although assemble failed")
    assert recorder.closed == ["service", "first registered"]
    assert NATS.of(app).is_closed
    probe = await connect(nats_url, "assembly-probe")
    try:
        await probe.jetstream().stream_info(stream_name(name))
    finally:
        await probe.jetstream().delete_stream(stream_name(name))
        await probe.close()


async def test_a_part_nobody_provided_is_a_500_and_names_the_part() -> None:
    app = definition("never-started", Recorder()).app(
        ServiceSettings(service_name="assembly-test", instance_id="assembly-1")
    )
    with pytest.raises(LookupError, match="the greeting is not provided"):
        GREETING.of(app)
    async with client(app) as http:
        answer = await http.get("/greeting")
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
