"""The `idempotency_keys` table: the claims and stored answers behind `Idempotency-Key`.

The rules (who may claim a key, what a repeat gets) are `mosaic_kit.fastapi.idempotency`'s; this
module only stores them. A claim is a row without a status; a finished request fills in its
status and body; a failed one deletes its claim; `prune` drops rows older than the retention.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert

from mosaic_kit.problem import Problem
from mosaic_kit.sql.db import Database

__all__ = ["ABANDONED_AFTER", "MAX_KEY_LENGTH", "IdempotencyStore", "idempotency_table", "prune"]

MAX_KEY_LENGTH = 200
# A claim older than this whose request never finished (the process died) may be taken over.
ABANDONED_AFTER = timedelta(minutes=2)


def idempotency_table(metadata: MetaData) -> Table:
    return Table(
        "idempotency_keys",
        metadata,
        Column("scope", String(300), primary_key=True),
        Column("key", String(MAX_KEY_LENGTH), primary_key=True),
        Column("request_hash", LargeBinary(32), nullable=False),
        Column("status", Integer),
        Column("body", LargeBinary),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


_table = idempotency_table(MetaData())


class IdempotencyStore:
    """One (scope, key) in the service's `idempotency_keys` table."""

    def __init__(self, db: Database, scope: str, key: str) -> None:
        self._db = db
        self._scope = scope
        self._key = key

    async def claim(self, request_hash: bytes) -> tuple[int, dict[str, Any]] | None:
        """None when this request now owns the key, else the stored (status, body).

        422 `idempotency.key_reused` when the key was used for another request; 409
        `idempotency.in_progress` while the first is still running (and not abandoned)."""
        async with self._db.transaction() as conn:
            claimed = await conn.execute(
                insert(_table)
                .values(scope=self._scope, key=self._key, request_hash=request_hash)
                .on_conflict_do_nothing()
                .returning(_table.c.key)
            )
            if claimed.first() is not None:
                return None
            row = (
                await conn.execute(
                    select(
                        _table.c.request_hash,
                        _table.c.status,
                        _table.c.body,
                        (func.now() - _table.c.created_at).label("age"),
                    )
                    .where(_table.c.scope == self._scope, _table.c.key == self._key)
                    .with_for_update()
                )
            ).one()
            if row.request_hash != request_hash:
                raise Problem(
                    422,
                    "idempotency.key_reused",
                    "This Idempotency-Key was used with a different request",
                )
            if row.status is not None:
                stored: dict[str, Any] = orjson.loads(row.body)
                return row.status, stored
            if row.age < ABANDONED_AFTER:
                raise Problem(
                    409,
                    "idempotency.in_progress",
                    "A request with this Idempotency-Key is still being processed",
                )
            # The first attempt died mid-way: this one takes the key over.
            await conn.execute(
                update(_table)
                .where(_table.c.scope == self._scope, _table.c.key == self._key)
                .values(created_at=func.now())
            )
            return None

    async def complete(self, status: int, body: dict[str, Any]) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                update(_table)
                .where(_table.c.scope == self._scope, _table.c.key == self._key)
                .values(status=status, body=orjson.dumps(body))
            )

    async def release(self) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                delete(_table).where(
                    _table.c.scope == self._scope,
                    _table.c.key == self._key,
                    _table.c.status.is_(None),
                )
            )


async def prune(db: Database, retention: timedelta = timedelta(hours=24)) -> int:
    async with db.transaction() as conn:
        result = await conn.execute(
            delete(_table).where(_table.c.created_at < func.now() - retention)
        )
    return int(result.rowcount)
