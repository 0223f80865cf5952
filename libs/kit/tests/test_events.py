"""JetStream events: envelope, streams, durable consumers (idempotency, retries, DLQ), replay."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.js.errors
import pytest
from kit_support import schema_database
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from sqlalchemy import Column, Integer, String, Table, func, make_url, select
from sqlalchemy.ext.asyncio import AsyncConnection

from mosaic_devstack.embedded import free_port
from mosaic_kit.events import (
    DLQ_STREAM,
    Event,
    MalformedEventError,
    RejectEventError,
    dlq_subject,
    new_event,
    stream_name,
)
from mosaic_kit.metrics import default_registry
from mosaic_kit.nats.connection import Client, connect
from mosaic_kit.nats.consumer import DurableConsumer
from mosaic_kit.nats.jetstream import ensure_stream, publish, subscribe_recent
from mosaic_kit.sql.db import Database, create_engine, new_metadata
from mosaic_kit.sql.processed import processed_events_table

metadata = new_metadata()
processed_events_table(metadata)
applied = Table(
    "applied",
    metadata,
    Column("event_id", String(64), nullable=False),
    Column("value", Integer, nullable=False),
)


@pytest.fixture
async def db(pg_url: str, fresh_schema: str) -> AsyncIterator[Database]:
    async with schema_database(pg_url, fresh_schema, metadata, pool_size=4) as database:
        yield database


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(nats_url, "test-events")
    yield client
    await client.close()


@pytest.fixture
async def js(nc: Client) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
async def service(js: JetStreamContext) -> AsyncIterator[str]:
    """A producing service (hence a stream) no other test uses."""
    name = f"t{uuid.uuid4().hex[:10]}"
    await ensure_stream(js, name)
    yield name
    await js.delete_stream(stream_name(name))


@dataclass
class Recorder:
    """A handler that writes a row per application, optionally failing."""

    fail_with: Exception | None = None
    calls: list[str] = field(default_factory=list)

    async def __call__(self, conn: AsyncConnection, event: Event) -> None:
        self.calls.append(event.id)
        await conn.execute(applied.insert().values(event_id=event.id, value=event.data["n"]))
        if self.fail_with is not None:
            raise self.fail_with


async def applied_rows(db: Database) -> list[tuple[str, int]]:
    async with db.connect() as conn:
        rows = await conn.execute(select(applied.c.event_id, applied.c.value))
        return [(r.event_id, r.value) for r in rows]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def settled(js: JetStreamContext, stream: str, durable: str, last_seq: int) -> bool:
    """Every message up to `last_seq` was acknowledged (or terminated) by the consumer."""
    info = await js.consumer_info(stream, durable)
    return info.ack_floor is not None and info.ack_floor.stream_seq >= last_seq


def consumer(
    js: JetStreamContext, db: Database, service: str, handler: Any, **options: Any
) -> DurableConsumer:
    options.setdefault("backoff", (0.1, 0.2))
    options.setdefault("fetch_wait", 0.5)
    return DurableConsumer(
        js,
        db,
        stream=stream_name(service),
        durable=f"{service}-reader",
        filter_subjects=[f"events.{service}.>"],
        handler=handler,
        **options,
    )


async def dead_letter(js: JetStreamContext, durable: str) -> RawStreamMsg:
    got: list[RawStreamMsg] = []

    async def present() -> bool:
        try:
            got.append(await js.get_last_msg(DLQ_STREAM, dlq_subject(durable)))
        except nats.js.errors.NotFoundError:
            return False
        return True

    await eventually(present)
    return got[0]


# --- the envelope ------------------------------------------------------------------------------


def test_event_round_trips_through_json() -> None:
    event = new_event("auth.user.created", {"userId": "u1", "roles": ["USER"]})
    assert event.subject == "events.auth.user.created"
    assert uuid.UUID(event.id).version == 4
    body = event.to_json()
    assert set(Event.from_json(body).to_dict()) == {"id", "type", "occurredAt", "data"}
    assert Event.from_json(body) == event
    assert b'"occurredAt":"' in body
    assert event.occurred_at.tzinfo is not None


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"id": "1", "type": "auth.user.created", "occurredAt": "2025-01-01T00:00:00Z"}',
        b'{"id": "1", "type": "nodots", "occurredAt": "2025-01-01T00:00:00Z", "data": {}}',
        b'{"id": "", "type": "a.b", "occurredAt": "2025-01-01T00:00:00Z", "data": {}}',
        b'{"id": "1", "type": "a.b", "occurredAt": "yesterday", "data": {}}',
        b'{"id": "1", "type": "a.b", "occurredAt": "2025-01-01T00:00:00", "data": {}}',
    ],
)
def test_malformed_envelopes_are_rejected(raw: bytes) -> None:
    with pytest.raises(MalformedEventError):
        Event.from_json(raw)


def test_event_types_are_validated() -> None:
    with pytest.raises(ValueError, match="invalid event type"):
        new_event("auth.user.*", {})
    with pytest.raises(ValueError, match="invalid event type"):
        new_event("created", {})


# --- streams -----------------------------------------------------------------------------------


async def test_ensure_stream_is_idempotent_and_updates(js: JetStreamContext) -> None:
    name = f"t{uuid.uuid4().hex[:10]}"
    try:
        await ensure_stream(js, name)
        await ensure_stream(js, name)  # another replica starting
        await ensure_stream(js, name, max_age=timedelta(days=1))  # a newer release
        info = await js.stream_info(stream_name(name))
        assert info.config.subjects == [f"events.{name}.>"]
        assert info.config.max_age == timedelta(days=1).total_seconds()
        assert info.config.duplicate_window == 120
        dlq = await js.stream_info(DLQ_STREAM)
        assert dlq.config.subjects == ["dlq.>"]
    finally:
        await js.delete_stream(stream_name(name))


async def test_publish_deduplicates_by_event_id(js: JetStreamContext, service: str) -> None:
    event = new_event(f"{service}.thing.created", {"n": 1})
    await publish(js, event)
    await publish(js, event)  # e.g. the outbox relay retrying after a lost ack
    info = await js.stream_info(stream_name(service))
    assert info.state.messages == 1


# --- durable consumers -------------------------------------------------------------------------


async def test_consumer_applies_published_events(
    js: JetStreamContext, db: Database, service: str
) -> None:
    handler = Recorder()
    reader = consumer(js, db, service, handler)
    await reader.start()
    try:
        events = [new_event(f"{service}.thing.created", {"n": n}) for n in range(3)]
        for event in events:
            await publish(js, event)
        await eventually(lambda: settled(js, stream_name(service), reader.durable, 3))
        assert sorted(await applied_rows(db)) == sorted((e.id, n) for n, e in enumerate(events))
    finally:
        await reader.stop()


async def test_consumer_started_before_its_stream_binds_later(
    js: JetStreamContext, db: Database
) -> None:
    # The producing service has not started yet: the consumer's service must start anyway.
    producer = f"t{uuid.uuid4().hex[:10]}"
    handler = Recorder()
    reader = consumer(js, db, producer, handler)
    await reader.start()
    try:
        await ensure_stream(js, producer)
        event = new_event(f"{producer}.thing.created", {"n": 4})
        await publish(js, event)
        await eventually(lambda: _has_rows(db, 1), timeout=10)
        assert await applied_rows(db) == [(event.id, 4)]
    finally:
        await reader.stop()
        await js.delete_stream(stream_name(producer))


async def test_same_event_delivered_twice_is_applied_once(
    js: JetStreamContext, db: Database, service: str
) -> None:
    handler = Recorder()
    reader = consumer(js, db, service, handler)
    await reader.start()
    try:
        event = new_event(f"{service}.thing.created", {"n": 7})
        await publish(js, event)
        # The same event again under another message id: JetStream stores it a second time,
        # as it would when re-published after the duplicate window.
        await js.publish(event.subject, event.to_json(), headers={"Nats-Msg-Id": "other"})
        await eventually(lambda: settled(js, stream_name(service), reader.durable, 2))
        assert await applied_rows(db) == [(event.id, 7)]
        assert handler.calls == [event.id]
    finally:
        await reader.stop()


async def test_failing_handler_ends_in_dlq_after_max_deliver(
    js: JetStreamContext, db: Database, service: str
) -> None:
    handler = Recorder(fail_with=RuntimeError("downstream says no"))
    reader = consumer(js, db, service, handler, max_deliver=3)
    await reader.start()
    try:
        event = new_event(f"{service}.thing.created", {"n": 1})
        await publish(js, event)
        dead = await dead_letter(js, reader.durable)
        assert Event.from_json(dead.data or b"") == event
        assert dead.headers is not None
        assert dead.headers["Mosaic-Dlq-Deliveries"] == "3"
        assert "downstream says no" in dead.headers["Mosaic-Dlq-Reason"]
        assert dead.headers["Mosaic-Dlq-Stream"] == stream_name(service)
        assert dead.headers["Mosaic-Dlq-Subject"] == event.subject
        assert handler.calls == [event.id] * 3
        # Every attempt was rolled back, the idempotency record included.
        assert await applied_rows(db) == []
        await eventually(lambda: settled(js, stream_name(service), reader.durable, 1))
    finally:
        await reader.stop()


async def test_handler_recovering_before_max_deliver_applies_once(
    js: JetStreamContext, db: Database, service: str
) -> None:
    handler = Recorder(fail_with=RuntimeError("flaky"))

    async def flaky(conn: AsyncConnection, event: Event) -> None:
        if len(handler.calls) >= 2:
            handler.fail_with = None
        await handler(conn, event)

    reader = consumer(js, db, service, flaky, max_deliver=5)
    await reader.start()
    try:
        event = new_event(f"{service}.thing.created", {"n": 3})
        await publish(js, event)
        await eventually(lambda: settled(js, stream_name(service), reader.durable, 1))
        assert handler.calls == [event.id] * 3
        assert await applied_rows(db) == [(event.id, 3)]
    finally:
        await reader.stop()


async def test_malformed_and_rejected_messages_go_straight_to_dlq(
    js: JetStreamContext, db: Database, service: str
) -> None:
    handler = Recorder()

    async def picky(conn: AsyncConnection, event: Event) -> None:
        if event.data["n"] < 0:
            raise RejectEventError("negative amounts are never valid")
        await handler(conn, event)

    reader = consumer(js, db, service, picky, max_deliver=5)
    await reader.start()
    try:
        await js.publish(f"events.{service}.thing.created", b"{not json")
        dead = await dead_letter(js, reader.durable)
        assert dead.data == b"{not json"
        assert dead.headers is not None
        assert dead.headers["Mosaic-Dlq-Deliveries"] == "1"
        assert dead.headers["Mosaic-Dlq-Reason"].startswith("malformed event")

        rejected = new_event(f"{service}.thing.created", {"n": -1})
        await publish(js, rejected)
        await eventually(lambda: settled(js, stream_name(service), reader.durable, 2))
        dead = await dead_letter(js, reader.durable)
        assert Event.from_json(dead.data or b"") == rejected
        assert dead.headers is not None
        assert dead.headers["Mosaic-Dlq-Deliveries"] == "1"

        # The consumer is not stuck behind them.
        good = new_event(f"{service}.thing.created", {"n": 5})
        await publish(js, good)
        await eventually(lambda: settled(js, stream_name(service), reader.durable, 3))
        assert await applied_rows(db) == [(good.id, 5)]
    finally:
        await reader.stop()


async def test_consumer_killed_before_ack_does_not_apply_twice(
    nats_url: str, js: JetStreamContext, db: Database, service: str
) -> None:
    doomed_nc = await connect(nats_url, "test-doomed")
    first = Recorder()

    async def apply_then_die(conn: AsyncConnection, event: Event) -> None:
        await first(conn, event)
        # The process "dies" here: its transaction still commits, but the ack cannot be sent.
        await doomed_nc.close()

    doomed = consumer(doomed_nc.jetstream(), db, service, apply_then_die, ack_wait=1.0)
    await doomed.start()
    event = new_event(f"{service}.thing.created", {"n": 9})
    try:
        await publish(js, event)
        await eventually(lambda: _has_rows(db, 1))
    finally:
        await doomed.stop()
        await doomed_nc.close()
    assert not await settled(js, stream_name(service), doomed.durable, 1)

    second = Recorder()
    successor = consumer(js, db, service, second, ack_wait=1.0)
    await successor.start()
    try:
        await eventually(lambda: settled(js, stream_name(service), successor.durable, 1))
        info = await js.consumer_info(stream_name(service), successor.durable)
        assert info.num_redelivered >= 1 or info.delivered.consumer_seq >= 2
    finally:
        await successor.stop()
    assert first.calls == [event.id]
    assert second.calls == []  # recognised as applied: the handler did not run again
    assert await applied_rows(db) == [(event.id, 9)]


class TcpProxy:
    """A TCP relay to PostgreSQL that the test can take down, like a network outage."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._down = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._down = False
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self._server is not None
        self._down = True
        self._server.close()
        await self._server.wait_closed()
        for writer in self._writers:
            writer.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        self._writers.clear()
        self._pipes.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        if self._down:
            # stop() ran while this connection was being set up: it must not outlive the outage.
            writer.close()
            up_writer.close()
            return
        self._writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()


async def test_database_outage_holds_the_event_without_spending_attempts(
    pg_url: str, fresh_schema: str, js: JetStreamContext, db: Database, service: str
) -> None:
    target = make_url(pg_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    await proxy.start()
    proxied_url = target.set(port=proxy.port).render_as_string(hide_password=False)
    proxied = Database(create_engine(proxied_url, fresh_schema, pool_size=2), fresh_schema)
    handler = Recorder()
    # A short ack_wait: holding the message relies on in-progress acks, not on a long timeout;
    # without them the idle replica would be handed the message again and again.
    reader = consumer(js, proxied, service, handler, max_deliver=2, ack_wait=0.6)
    replica = consumer(js, proxied, service, handler, max_deliver=2, ack_wait=0.6)
    await reader.start()
    await replica.start()
    try:
        await proxy.stop()
        event = new_event(f"{service}.thing.created", {"n": 8})
        await publish(js, event)
        await asyncio.sleep(2.0)  # several ack_waits and more than max_deliver retry delays
        info = await js.consumer_info(stream_name(service), reader.durable)
        assert info.num_ack_pending == 1
        assert info.num_redelivered == 0
        assert handler.calls == []

        await proxy.start()
        await eventually(lambda: settled(js, stream_name(service), reader.durable, 1))
        assert await applied_rows(db) == [(event.id, 8)]
        info = await js.consumer_info(stream_name(service), reader.durable)
        assert info.num_redelivered == 0
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.get_last_msg(DLQ_STREAM, dlq_subject(reader.durable))
    finally:
        await reader.stop()
        await replica.stop()
        await proxied.dispose()
        await proxy.stop()


async def _has_rows(db: Database, count: int) -> bool:
    async with db.connect() as conn:
        found = await conn.scalar(select(func.count()).select_from(applied))
    return found == count


async def test_stop_hands_back_unprocessed_messages(
    js: JetStreamContext, db: Database, service: str
) -> None:
    in_handler = asyncio.Event()
    release = asyncio.Event()
    handler = Recorder()

    async def slow(conn: AsyncConnection, event: Event) -> None:
        in_handler.set()
        await release.wait()
        await handler(conn, event)

    reader = consumer(js, db, service, slow, batch=5)
    events = [new_event(f"{service}.thing.created", {"n": n}) for n in range(3)]
    for event in events:
        await publish(js, event)
    await reader.start()
    await asyncio.wait_for(in_handler.wait(), 5)
    stopping = asyncio.create_task(reader.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()  # finishing the message in hand
    release.set()
    await stopping
    assert len(handler.calls) == 1

    # The rest of the batch was handed back (nak), not left to time out after ack_wait (30 s).
    successor = consumer(js, db, service, handler, batch=5)
    await successor.start()
    try:
        await eventually(lambda: settled(js, stream_name(service), successor.durable, 3), 5)
    finally:
        await successor.stop()
    assert sorted(await applied_rows(db)) == sorted((e.id, n) for n, e in enumerate(events))


# --- replay of recent events -------------------------------------------------------------------


async def test_subscribe_recent_replays_window_then_follows(
    js: JetStreamContext, service: str
) -> None:
    old = new_event(f"{service}.session.revoked", {"n": 0})
    await publish(js, old)
    await asyncio.sleep(1.0)
    recent = [new_event(f"{service}.session.revoked", {"n": n}) for n in (1, 2)]
    for event in recent:
        await publish(js, event)
    await publish(js, new_event(f"{service}.other.thing", {"n": -1}))  # not subscribed

    seen: list[Event] = []

    async def collect(event: Event) -> None:
        seen.append(event)

    subscription = await subscribe_recent(
        js,
        [f"events.{service}.session.revoked", f"events.{service}.user.disabled"],
        collect,
        since=timedelta(seconds=0.5),
    )
    try:
        assert await subscription.wait_caught_up(5)
        assert [e.id for e in seen] == [e.id for e in recent]

        live = new_event(f"{service}.user.disabled", {"n": 3})
        await publish(js, live)
        await eventually(lambda: _contains(seen, live))
    finally:
        await subscription.stop()


async def _contains(seen: list[Event], event: Event) -> bool:
    return event in seen


async def test_subscribe_recent_on_empty_window_is_caught_up(
    js: JetStreamContext, service: str
) -> None:
    seen: list[Event] = []

    async def collect(event: Event) -> None:
        seen.append(event)

    subscription = await subscribe_recent(
        js, [f"events.{service}.>"], collect, since=timedelta(minutes=5)
    )
    try:
        assert await subscription.wait_caught_up(2)
        assert seen == []
    finally:
        await subscription.stop()


async def test_subscribe_recent_survives_a_failing_handler(
    js: JetStreamContext, service: str
) -> None:
    seen: list[int] = []

    async def fragile(event: Event) -> None:
        if event.data["n"] == 1:
            raise ValueError("cannot apply")
        seen.append(event.data["n"])

    subscription = await subscribe_recent(
        js, [f"events.{service}.>"], fragile, since=timedelta(minutes=5)
    )
    try:
        for n in (1, 2):
            await publish(js, new_event(f"{service}.thing.done", {"n": n}))
        await eventually(lambda: _equals(seen, [2]))
    finally:
        await subscription.stop()


async def _equals(seen: list[int], expected: list[int]) -> bool:
    return seen == expected


def test_occurred_at_is_utc_with_zone() -> None:
    event = Event(
        id="e1",
        type="a.b",
        occurred_at=datetime(2025, 1, 1, 12, tzinfo=UTC),
        data={},
    )
    assert event.to_dict()["occurredAt"] == "2025-01-01T12:00:00Z"


def _sample(name: str, **labels: str) -> float:
    value = default_registry().get_sample_value(name, labels)
    return value or 0.0


async def test_consumer_metrics_count_outcomes_and_pending(
    js: JetStreamContext, db: Database, service: str
) -> None:
    # What the consumer alerts (deploy/observability) are computed from: a wrong label or a
    # missing increment would leave dead letters and lag invisible.
    async def picky(conn: AsyncConnection, event: Event) -> None:
        if event.data["n"] < 0:
            raise RejectEventError("negative")
        await Recorder()(conn, event)

    reader = consumer(js, db, service, picky)
    durable = reader.durable
    first = new_event(f"{service}.thing.created", {"n": 1})
    events = [first, new_event(f"{service}.thing.created", {"n": -1}), first]
    events.append(new_event(f"{service}.thing.created", {"n": 2}))
    for event in events[:2]:
        await publish(js, event)
    # The same event again under another message id: a redelivery the consumer must skip.
    await js.publish(first.subject, first.to_json(), headers={"Nats-Msg-Id": "again"})
    await publish(js, events[3])
    await reader.start()
    try:
        await eventually(lambda: settled(js, stream_name(service), durable, 4))
    finally:
        await reader.stop()
    assert _sample("consumer_events_total", consumer=durable, outcome="applied") == 2
    assert _sample("consumer_events_total", consumer=durable, outcome="duplicate") == 1
    assert _sample("consumer_events_total", consumer=durable, outcome="dead_lettered") == 1
    # Present, not merely absent (which _sample would also read as 0): the idle fetch set it.
    assert default_registry().get_sample_value("consumer_pending", {"consumer": durable}) == 0
