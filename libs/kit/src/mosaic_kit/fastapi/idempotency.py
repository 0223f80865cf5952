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
from typing import Annotated, Any

import orjson
from fastapi import Depends, Header, Request
from starlette.responses import Response

from mosaic_kit.fastapi.parts import DATABASE
from mosaic_kit.problem import Problem
from mosaic_kit.sql.db import Database
from mosaic_kit.sql.idempotency import MAX_KEY_LENGTH, IdempotencyStore

__all__ = ["HEADER", "Idempotency", "IdempotencyGuard", "idempotency"]

HEADER = "Idempotency-Key"


class Idempotency:
    """Runs a creating handler at most once per (scope, key)."""

    def __init__(self, db: Database, key: str | None, scope: str) -> None:
        self._store = IdempotencyStore(db, scope, key) if key is not None else None

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
        if self._store is None:
            return _json(status_code, await create())
        request_hash = hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).digest()
        stored = await self._store.claim(request_hash)
        if stored is not None:
            status, body = stored
            if on_replay is not None:
                body = await on_replay(body)
            return _json(status, body, {"Idempotent-Replayed": "true"})
        try:
            body = await create()
        except BaseException:
            await self._store.release()
            raise
        await self._store.complete(
            status_code, {k: v for k, v in body.items() if k not in secret_fields}
        )
        return _json(status_code, body)


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
    """FastAPI dependency; needs the service's `Database` provided as `DATABASE`.

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
    return Idempotency(DATABASE.of(request.app), key, scope)


IdempotencyGuard = Annotated[Idempotency, Depends(idempotency)]
