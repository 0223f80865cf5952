"""`mosaic-reco rebuild`: the read model replayed from the streams, swapped in while serving.

1. A fresh schema (`<schema>_next_<hex>`) gets the read model's tables (`tables.metadata`).
2. The blog's and auth's streams are replayed into it from their first message, by ephemeral
   consumers, through the same handlers the live consumers run, recording each event in its
   `processed_events` under the live consumers' names.
3. The swap, in one transaction on the live schema: `processed_events` is locked against writes
   (a live consumer claims an event there before applying it, so none commits meanwhile), the
   streams are replayed to their current end, the migration stamp is copied, and the schemas
   trade names (`<schema>` becomes `<schema>_old_<hex>`, the fresh one `<schema>`). PostgreSQL
   re-plans every cached statement when a schema is renamed, so the service's next statement
   reads the new tables; readers are never blocked (a lock on writes only).
4. The old schema is dropped.

Nothing is lost at the swap: any event a live consumer applied before it was in the stream
before the lock, so the final replay has it; an event after it is applied by the live consumer
to the new schema, or skipped there if the replay applied it already (the same consumer name in
`processed_events`). The service's database role needs the right to create schemas.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from mosaic_kit.events import (
    Event,
    MalformedEventError,
    RejectEventError,
    event_subject,
    stream_name,
)
from mosaic_kit.logging import get_logger
from mosaic_kit.nats.connection import NatsCredentials, connect
from mosaic_kit.sql import processed
from mosaic_kit.sql.db import Database
from mosaic_reco.service import BLOG_EVENTS, USER_EVENTS, RecoService
from mosaic_reco.settings import RecoSettings
from mosaic_reco.tables import metadata

log = get_logger("mosaic_reco.rebuild")

BATCH = 500
Handler = Callable[[AsyncConnection, Event], Awaitable[None]]


@dataclass
class Replay:
    """One stream replayed into the fresh schema, as one live consumer would apply it."""

    service: str
    consumer: str
    subjects: list[str]
    handler: Handler
    applied: int = 0
    position: int = 0  # the last stream sequence replayed


@dataclass(frozen=True)
class Rebuilt:
    schema: str
    events: int
    seconds: float


async def rebuild(settings: RecoSettings) -> Rebuilt:
    began = time.monotonic()
    live = settings.db_schema
    tag = uuid.uuid4().hex[:8]
    fresh, old = f"{live}_next_{tag}", f"{live}_old_{tag}"
    db = Database.from_settings(settings)
    into = Database.from_settings(settings.model_copy(update={"db_schema": fresh}))
    nc = await connect(
        settings.nats_url,
        f"reco/rebuild-{tag}",
        credentials=NatsCredentials.from_settings(settings),
    )
    svc = RecoService(into, trending_half_life_hours=settings.reco_trending_half_life)
    replays = [
        Replay(
            "blog",
            settings.reco_blog_consumer,
            [event_subject(model.TYPE) for model in BLOG_EVENTS],
            svc.apply_blog_event,
        ),
        Replay(
            "auth",
            settings.reco_authors_consumer,
            [event_subject(model.TYPE) for model in USER_EVENTS],
            svc.apply_user_event,
        ),
    ]
    try:
        async with db.transaction() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{fresh}"'))
        async with into.transaction() as conn:
            await conn.run_sync(metadata.create_all)
        js = nc.jetstream()
        for feed in replays:
            await _replay(js, into, feed)
        log.info("rebuild_replayed", schema=fresh, events=sum(f.applied for f in replays))
        async with db.transaction() as conn:
            # Writes of the live consumers wait from here to the commit; reads go on.
            await conn.execute(text("LOCK TABLE processed_events IN SHARE ROW EXCLUSIVE MODE"))
            for feed in replays:
                await _replay(js, into, feed)
            await conn.execute(
                # The names are identifiers checked by the settings (ServiceSettings.db_schema).
                text(f'CREATE TABLE "{fresh}".alembic_version AS SELECT * FROM alembic_version')  # noqa: S608
            )
            await conn.execute(text(f'ALTER SCHEMA "{live}" RENAME TO "{old}"'))
            await conn.execute(text(f'ALTER SCHEMA "{fresh}" RENAME TO "{live}"'))
        async with db.transaction() as conn:
            await conn.execute(text(f'DROP SCHEMA "{old}" CASCADE'))
    except BaseException:
        async with db.transaction() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{fresh}" CASCADE'))
        raise
    finally:
        await nc.close()
        await into.dispose()
        await db.dispose()
    done = Rebuilt(live, sum(f.applied for f in replays), time.monotonic() - began)
    log.info("rebuild_swapped", schema=live, events=done.events, seconds=round(done.seconds, 2))
    return done


async def _replay(js: JetStreamContext, into: Database, feed: Replay) -> None:
    """Apply the stream's events after `feed.position` up to its current end."""
    stream = stream_name(feed.service)
    try:
        end = (await js.stream_info(stream)).state.last_seq
    except nats.js.errors.NotFoundError:
        return  # nothing was ever published there
    if end <= feed.position:
        return
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=feed.position + 1,
        filter_subjects=feed.subjects,
        inactive_threshold=60.0,
    )
    sub = await js.pull_subscribe("", stream=stream, config=config)
    try:
        while feed.position < end:
            try:
                messages = await sub.fetch(BATCH, timeout=2.0)
            except nats.errors.TimeoutError:
                break  # the rest of the range holds none of these subjects
            async with into.transaction() as conn:
                for msg in messages:
                    feed.position = max(feed.position, msg.metadata.sequence.stream)
                    if await _apply(conn, feed, msg.data):
                        feed.applied += 1
    finally:
        await sub.unsubscribe()
    feed.position = max(feed.position, end)


async def _apply(conn: AsyncConnection, feed: Replay, data: bytes) -> bool:
    try:
        event = Event.from_json(data)
    except MalformedEventError:
        return False  # the live consumer dead-letters it; so does the model: it is left out
    if not await processed.claim(conn, feed.consumer, event.id):
        return False
    try:
        async with conn.begin_nested():
            await feed.handler(conn, event)
    except RejectEventError:
        return False  # outside its contract: the live consumer dead-letters it too
    return True
