"""The `processed_events` table: which events each durable consumer has applied.

`mosaic_kit.nats.consumer` inserts the event id in the same transaction as the handler's writes;
the primary key makes a second delivery of the same event a no-op.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, MetaData, String, Table, func

__all__ = ["processed_events_table"]


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
