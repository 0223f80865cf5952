"""Transactional outbox: only committed events are relayed, in order, once, outages included."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats.js.errors
import pytest
from kit_support import schema_database
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from sqlalchemy import Column, String, Table, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from mosaic_devstack.embedded import EmbeddedNats
from mosaic_kit.events import Event, new_event, stream_name
from mosaic_kit.metrics import default_registry
from mosaic_kit.nats.connection import Client, connect
from mosaic_kit.nats.consumer import DurableConsumer
from mosaic_kit.nats.jetstream import ensure_stream
from mosaic_kit.nats.relay import OutboxRelay
from mosaic_kit.sql.db import Database, new_metadata
from mosaic_kit.sql.outbox import add, outbox_table
from mosaic_kit.sql.processed import processed_events_table

metadata = new_metadata()
outbox = outbox_table(metadata)
processed_events_table(metadata)
received = Table("received", metadata, Column("event_id", String(64), nullable=False))


class BoomError(Exception):
    pass


@pytest.fixture
async def db(pg_url: str, fresh_schema: str) -> AsyncIterator[Database]:
    async with schema_database(pg_url, fresh_schema, metadata, pool_size=6) as database:
        yield database


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(nats_url, "test-outbox")
    yield client
    await client.close()


@pytest.fixture
async def service(nc: Client) -> AsyncIterator[str]:
    name = f"t{uuid.uuid4().hex[:10]}"
    js = nc.jetstream()
    await ensure_stream(js, name)
    yield name
    await js.delete_stream(stream_name(name))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def write(db: Database, *events: Event) -> None:
    for event in events:
        async with db.transaction() as conn:
            await add(conn, event)


async def unpublished(db: Database) -> int:
    async with db.connect() as conn:
        count = await conn.scalar(
            select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
        )
    return int(count or 0)


async def stored(js: JetStreamContext, service: str) -> int:
    info = await js.stream_info(stream_name(service))
    return info.state.messages


async def tap(nc: Client, service: str) -> tuple[list[Msg], Any]:
    """Every publication on the service's subjects, duplicates included (a core subscription
    sees what JetStream's duplicate window later drops)."""
    seen: list[Msg] = []

    async def on_msg(msg: Msg) -> None:
        seen.append(msg)

    sub = await nc.subscribe(f"events.{service}.>", cb=on_msg)
    await nc.flush()
    return seen, sub


async def test_rolled_back_transaction_publishes_nothing(
    nc: Client, db: Database, service: str
) -> None:
    async def failing_business_transaction() -> None:
        async with db.transaction() as conn:
            await add(conn, new_event(f"{service}.user.created", {}))
            raise BoomError

    with pytest.raises(BoomError):
        await failing_business_transaction()
    relay = OutboxRelay(db, nc, service=service)
    assert await relay.relay_once() == 0
    async with db.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(outbox)) == 0
    assert await stored(nc.jetstream(), service) == 0


async def test_committed_events_are_relayed_in_order_and_marked(
    nc: Client, db: Database, service: str
) -> None:
    seen, sub = await tap(nc, service)
    events = [new_event(f"{service}.user.created", {"n": n}) for n in range(5)]
    trace_id = int(uuid.uuid4().hex, 16)
    request_span = SpanContext(trace_id, 0x42, False, TraceFlags(TraceFlags.SAMPLED))
    with trace.use_span(NonRecordingSpan(request_span)):
        await write(db, *events)
    relay = OutboxRelay(db, nc, service=service, poll_interval=0.1)
    await relay.start()
    try:
        await eventually(lambda: _equals(unpublished(db), 0))
    finally:
        await relay.stop()
        await sub.unsubscribe()
    assert [Event.from_json(m.data) for m in seen] == events
    first = seen[0]
    assert first.headers is not None
    assert first.headers["Nats-Msg-Id"] == events[0].id
    # The trace of the request that wrote the event, not of the relay.
    assert format(trace_id, "032x") in first.headers["traceparent"]
    assert await stored(nc.jetstream(), service) == 5
    async with db.connect() as conn:
        rows = (await conn.execute(select(outbox.c.published_at, outbox.c.attempts))).all()
    assert all(r.published_at is not None and r.attempts == 0 for r in rows)


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_notify_wakes_the_relay_without_waiting_for_the_poll(
    nc: Client, db: Database, service: str
) -> None:
    relay = OutboxRelay(db, nc, service=service, poll_interval=60)
    await relay.start()
    try:
        await asyncio.sleep(0.3)  # the first poll has happened and found nothing
        await write(db, new_event(f"{service}.user.created", {}))
        await eventually(lambda: _equals(unpublished(db), 0), timeout=5)
    finally:
        await relay.stop()
    assert await stored(nc.jetstream(), service) == 1


async def test_two_relays_never_publish_a_row_twice(
    nats_url: str, nc: Client, db: Database, service: str
) -> None:
    events = [new_event(f"{service}.user.created", {"n": n}) for n in range(40)]
    await write(db, *events)
    seen, sub = await tap(nc, service)
    other_nc = await connect(nats_url, "test-outbox-2")
    relays = [
        OutboxRelay(db, nc, service=service, batch=4, poll_interval=0.05),
        OutboxRelay(db, other_nc, service=service, batch=4, poll_interval=0.05),
    ]
    try:
        await asyncio.gather(*(r.start() for r in relays))
        await eventually(lambda: _equals(unpublished(db), 0))
        await nc.flush()
        await asyncio.sleep(0.2)  # let any stray duplicate arrive
    finally:
        await asyncio.gather(*(r.stop() for r in relays))
        await other_nc.close()
        await sub.unsubscribe()
    published_ids = [Event.from_json(m.data).id for m in seen]
    assert len(published_ids) == len(events)
    assert set(published_ids) == {e.id for e in events}
    info = await nc.jetstream().stream_info(stream_name(service))
    assert info.state.last_seq == len(events)


async def test_events_survive_a_nats_outage_and_arrive_once(
    own_nats: EmbeddedNats, db: Database
) -> None:
    service = "outage"
    nc = await connect(own_nats.url, "test-outage", reconnect_wait=0.1)
    js = nc.jetstream()
    await ensure_stream(js, service)
    calls: list[str] = []

    async def on_event(conn: AsyncConnection, event: Event) -> None:
        calls.append(event.id)
        await conn.execute(received.insert().values(event_id=event.id))

    reader = DurableConsumer(
        js,
        db,
        stream=stream_name(service),
        durable="outage-reader",
        filter_subjects=["events.outage.>"],
        handler=on_event,
        fetch_wait=0.5,
        backoff=(0.1,),
    )
    relay = OutboxRelay(
        db, js, service=service, poll_interval=0.1, publish_timeout=0.3, max_retry_delay=0.3
    )
    await reader.start()
    await relay.start()
    try:
        await asyncio.to_thread(own_nats.stop)
        event = new_event("outage.user.created", {"n": 1})
        await write(db, event)  # the business transaction commits while NATS is down

        async def attempted() -> bool:
            async with db.connect() as conn:
                row = (await conn.execute(select(outbox.c.attempts, outbox.c.published_at))).one()
            return row.attempts >= 2 and row.published_at is None

        await eventually(attempted)

        await asyncio.to_thread(own_nats.start)
        await eventually(lambda: _equals(unpublished(db), 0), timeout=15)
        await eventually(lambda: _equals(_received(db), 1), timeout=15)
        await asyncio.sleep(0.3)  # a second delivery would be applied by now
        assert await _received(db) == 1
        assert calls == [event.id]
        # Publications buffered during the outage were flushed on reconnect, then the relay
        # published again: the stream's duplicate window kept a single copy.
        assert (await js.stream_info(stream_name(service))).state.messages == 1
    finally:
        await relay.stop()
        await reader.stop()
        await nc.close()


async def _received(db: Database) -> int:
    async with db.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(received)) or 0)


async def test_failures_are_recorded_and_rows_kept(nc: Client, db: Database) -> None:
    # No stream captures these subjects: publishing fails until one exists.
    name = f"t{uuid.uuid4().hex[:10]}"
    event = new_event(f"{name}.user.created", {})
    await write(db, event)
    relay = OutboxRelay(db, nc, service=name, publish_timeout=1)
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await relay.relay_once()
    async with db.connect() as conn:
        row = (await conn.execute(select(outbox))).one()
    assert row.published_at is None
    assert row.attempts == 1
    assert "NoStreamResponse" in row.last_error

    js = nc.jetstream()
    await ensure_stream(js, name)
    try:
        assert await relay.relay_once() == 1
    finally:
        await js.delete_stream(stream_name(name))


async def test_prune_deletes_old_published_rows_only(
    nc: Client, db: Database, service: str
) -> None:
    old, recent, pending = (new_event(f"{service}.user.created", {"n": n}) for n in range(3))
    await write(db, old, recent)
    relay = OutboxRelay(db, nc, service=service)
    assert await relay.relay_once() == 2
    await write(db, pending)
    async with db.transaction() as conn:
        await conn.execute(
            update(outbox)
            .where(outbox.c.id == old.id)
            .values(published_at=func.now() - text("interval '2 days'"))
        )
    assert await relay.prune() == 1
    async with db.connect() as conn:
        left = set((await conn.execute(select(outbox.c.id))).scalars())
    assert left == {recent.id, pending.id}


def _sample(name: str, service: str) -> float:
    return default_registry().get_sample_value(name, {"service": service}) or 0.0


async def test_backlog_and_failure_metrics_follow_the_outbox(nc: Client, db: Database) -> None:
    # The outbox alerts (deploy/observability) read these: rows stuck behind a failing publish
    # must show as a backlog with an age, and drain to zero once publishing works.
    name = f"t{uuid.uuid4().hex[:10]}"
    await write(db, *(new_event(f"{name}.user.created", {"n": n}) for n in range(3)))
    relay = OutboxRelay(db, nc, service=name, publish_timeout=1)
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await relay.relay_once()
    assert _sample("outbox_publish_failures_total", name) == 1
    backlog, oldest = await relay.measure_backlog()
    assert backlog == 3
    assert oldest > 0
    assert _sample("outbox_backlog", name) == 3
    assert _sample("outbox_oldest_unpublished_seconds", name) == oldest

    js = nc.jetstream()
    await ensure_stream(js, name)
    try:
        assert await relay.relay_once() == 3
        assert await relay.measure_backlog() == (0, 0.0)
    finally:
        await js.delete_stream(stream_name(name))
    assert _sample("outbox_published_total", name) == 3
    assert _sample("outbox_backlog", name) == 0


async def test_a_running_relay_reports_the_backlog_while_publishing_fails(
    nc: Client, db: Database
) -> None:
    # The backlog grows exactly while the relay cannot publish: that is when the gauge must move.
    name = f"t{uuid.uuid4().hex[:10]}"  # no stream captures its subjects
    await write(db, *(new_event(f"{name}.user.created", {"n": n}) for n in range(2)))
    relay = OutboxRelay(db, nc, service=name, publish_timeout=0.5, poll_interval=0.1)
    await relay.start()
    try:

        async def reported() -> bool:
            return _sample("outbox_backlog", name) == 2

        await eventually(reported)
        assert _sample("outbox_oldest_unpublished_seconds", name) > 0
        assert _sample("outbox_publish_failures_total", name) >= 1
    finally:
        await relay.stop()
