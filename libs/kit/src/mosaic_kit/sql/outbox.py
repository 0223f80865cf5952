"""The transactional outbox table: events are written with the state change that caused them.

`add(conn, event)` inserts the event in the caller's transaction, so an event exists if and only if
the change that caused it was committed; it also `NOTIFY`s the relays (`mosaic_kit.nats.relay`),
which PostgreSQL delivers only on commit.
"""

from __future__ import annotations

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from mosaic_kit import tracing
from mosaic_kit.events import Event
from mosaic_kit.sql.db import new_metadata

__all__ = ["NOTIFY_CHANNEL", "add", "outbox_table"]


# One channel for every schema; the payload names the schema so relays ignore other services.
NOTIFY_CHANNEL = "mosaic_outbox"


def outbox_table(metadata: MetaData) -> Table:
    """The outbox of a service's schema (add it to the service's metadata for its migrations)."""
    existing = metadata.tables.get("outbox")
    if existing is not None:
        return existing
    table = Table(
        "outbox",
        metadata,
        Column("id", Uuid(as_uuid=False), primary_key=True),
        # Creation order; timestamps tie within a transaction.
        Column("seq", BigInteger, Identity(), nullable=False, unique=True),
        Column("type", String(200), nullable=False),
        Column("subject", String(255), nullable=False),
        Column("payload", JSONB, nullable=False),
        Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("published_at", DateTime(timezone=True), nullable=True),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        Column("last_error", Text, nullable=True),
    )
    Index(
        "ix_outbox_unpublished",
        table.c.seq,
        postgresql_where=table.c.published_at.is_(None),
    )
    Index(
        "ix_outbox_published_at",
        table.c.published_at,
        postgresql_where=table.c.published_at.is_not(None),
    )
    return table


_outbox = outbox_table(new_metadata())


async def add(conn: AsyncConnection, event: Event) -> None:
    """Record `event` in the caller's transaction, with the current trace context."""
    await conn.execute(
        _outbox.insert().values(
            id=event.id,
            type=event.type,
            subject=event.subject,
            # Plain JSON types, whatever the data held (datetimes, UUIDs).
            payload=orjson.loads(event.to_json()),
            headers=tracing.inject({}),
        )
    )
    await conn.execute(
        text("SELECT pg_notify(:channel, current_schema())"), {"channel": NOTIFY_CHANNEL}
    )
