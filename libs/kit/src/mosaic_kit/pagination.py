"""Keyset (cursor) pagination: `?limit=&cursor=` in, `{"items", "nextCursor"}` out.

A cursor is the sort key of the last item of a page, encoded opaquely. The next page is
`WHERE (sort_key) < (cursor)` in the same order, so pages neither repeat nor skip rows while
rows are inserted between requests, and the cost does not grow with the page number as OFFSET's
does. A tampered or foreign cursor is a 400, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

import orjson

from mosaic_kit.problem import Problem

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "decode_cursor",
    "decode_time_id_cursor",
    "decode_time_uuid_cursor",
    "encode_cursor",
    "next_cursor_for",
]

T = TypeVar("T")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def encode_cursor(*key: Any) -> str:
    parts = [k.isoformat() if isinstance(k, datetime) else str(k) for k in key]
    return base64.urlsafe_b64encode(orjson.dumps(parts)).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, size: int) -> list[str]:
    """The `size` string parts of a cursor, or a 400 problem."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeEncodeError, orjson.JSONDecodeError) as exc:
        raise Problem(400, "http.bad_cursor", "The cursor is not valid") from exc
    if (
        not isinstance(parts, list)
        or len(parts) != size
        or not all(isinstance(p, str) for p in parts)
    ):
        raise Problem(400, "http.bad_cursor", "The cursor is not valid")
    return parts


def decode_time_id_cursor(cursor: str) -> tuple[datetime, str]:
    """The common `(created_at, id)` cursor."""
    at, ident = decode_cursor(cursor, 2)
    try:
        return datetime.fromisoformat(at), ident
    except ValueError as exc:
        raise Problem(400, "http.bad_cursor", "The cursor is not valid") from exc


def decode_time_uuid_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """The `(created_at, id)` cursor with a UUID id; None when there is no cursor (page one)."""
    if cursor is None:
        return None
    at, ident = decode_time_id_cursor(cursor)
    try:
        return at, uuid.UUID(ident)
    except ValueError as exc:
        raise Problem(400, "http.bad_cursor", "The cursor is not valid") from exc


def next_cursor_for(rows: Sequence[T], limit: int, key: Any) -> str | None:
    """Callers fetch `limit + 1` rows; an extra row means there is a next page."""
    if len(rows) <= limit:
        return None
    return encode_cursor(*key(rows[limit - 1]))
