"""`Idempotency-Key` for creating POSTs: a retried request returns the first result, once.

A client that did not hear back (timeout, dropped connection) may repeat a POST with the same
`Idempotency-Key` header. The first request claims the key in the service's own
`idempotency_keys` table; when it finishes, its status and body are stored there (without secret
fields: tokens and keys are never stored in the clear). A repeat with the same key and the same
body gets that stored answer (`Idempotent-Replayed: true`) and changes nothing; the same key with another body is a 422; a repeat while the first is still running is a
409. A failed first attempt (an error answer) releases the key, so the client may try again.
Keys are scoped by route and caller and kept for `retention`, then pruned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import Depends, Header, Request
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
from starlette.responses import Response

from mosaic_kit.db import Database
from mosaic_kit.errors import Problem

HEADER = "Idempotency-Key"
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


class Idempotency:
    """Runs a creating handler at most once per (scope, key)."""

    def __init__(self, db: Database, key: str | None, scope: str) -> None:
        self._db = db
        self._key = key
        self._scope = scope

    async def run(
        self,
        payload: Any,
        create: Callable[[], Awaitable[dict[str, Any]]],
        *,
        status_code: int = 201,
        secret_fields: tuple[str, ...] = (),
        on_replay: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None,
    ) -> Response:
        """`create()` returns the JSON body of a successful answer.

        Top-level `secret_fields` (tokens, keys) are never written to the table; a replay gets the
        stored body without them, passed through `on_replay` if given (which may mint fresh ones).
        """
        if self._key is None:
            return _json(status_code, await create())
        request_hash = hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).digest()
        stored = await self._claim(request_hash)
        if stored is not None:
            status, body = stored
            if on_replay is not None:
                body = await on_replay(body)
            return _json(status, body, {"Idempotent-Replayed": "true"})
        try:
            body = await create()
        except BaseException:
            await self._release()
            raise
        kept = {k: v for k, v in body.items() if k not in secret_fields}
        async with self._db.transaction() as conn:
            await conn.execute(
                update(_table)
                .where(_table.c.scope == self._scope, _table.c.key == self._key)
                .values(status=status_code, body=orjson.dumps(kept))
            )
        return _json(status_code, body)

    async def _claim(self, request_hash: bytes) -> tuple[int, dict[str, Any]] | None:
        """None when this request now owns the key, else the stored (status, body)."""
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

    async def _release(self) -> None:
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


def _json(status_code: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


async def idempotency(
    request: Request,
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            max_length=MAX_KEY_LENGTH,
            description="Repeat a request with the same key to get the first result again.",
        ),
    ] = None,
) -> Idempotency:
    """FastAPI dependency; needs `app.state.db` (the service's `Database`).

    The scope is the route and the caller (the bearer token's subject if the route has already
    authenticated it, else the API key or nobody), so two callers never share a key.
    """
    if key is not None and not key.strip():
        raise Problem(
            422,
            "validation_failed",
            "Idempotency-Key must not be blank",
            errors=[{"field": "header.Idempotency-Key", "message": "must not be blank"}],
        )
    principal = getattr(request.state, "principal", None)
    caller = getattr(principal, "user_id", None)
    if caller is None:
        # Never the key itself in the table: a digest names the client just as well.
        api_key = request.headers.get("x-api-key", "")
        caller = hashlib.sha256(api_key.encode()).hexdigest()[:16] if api_key else "-"
    scope = f"{request.method} {request.url.path} {caller}"
    db: Database = request.app.state.db
    return Idempotency(db, key, scope)


IdempotencyGuard = Annotated[Idempotency, Depends(idempotency)]
