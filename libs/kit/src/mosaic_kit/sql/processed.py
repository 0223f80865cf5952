"""The `processed_events` table: which events each durable consumer has applied.

`mosaic_kit.nats.consumer` inserts the event id in the same transaction as the handler's writes;
the primary key makes a second delivery of the same event a no-op.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, MetaData, String, Table, func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["claim", "processed_events_table"]


def processed_events_table(metadata: MetaData) -> Table:
    """Ids of the events each durable consumer has applied (its idempotency record)."""
    existing = metadata.tables.get("processed_events")
    if existing is not None:
        return existing
    return Table(
        "processed_events",
        metadata,
        Column("consumer", String(200), primary_key=True),
        Column("event_id", String(200), primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index("ix_processed_events_processed_at", "processed_at"),
    )


async def claim(conn: AsyncConnection, consumer: str, event_id: str) -> bool:
    """Record that `consumer` applies `event_id` in the caller's transaction: False when it
    already did (then skip the handler)."""
    claimed = await conn.execute(
        insert(_TABLE)
        .values(consumer=consumer, event_id=event_id)
        .on_conflict_do_nothing()
        .returning(_TABLE.c.event_id)
    )
    return claimed.first() is not None


_TABLE = processed_events_table(MetaData())
