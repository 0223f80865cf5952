"""Keyset cursors: opaque, round-trip exactly, and bad ones are a 400 problem."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from mosaic_kit.pagination import (
    decode_time_uuid_cursor,
    encode_cursor,
    next_cursor_for,
)
from mosaic_kit.problem import Problem


def test_a_cursor_round_trips_time_and_id() -> None:
    at, ident = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), uuid.uuid4()
    assert decode_time_uuid_cursor(encode_cursor(at, ident)) == (at, ident)
    assert decode_time_uuid_cursor(None) is None


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "%%%",
        "bm90IGpzb24",
        encode_cursor("x"),
        # Fixed values: the test ids must be the same in every test process (pytest-xdist).
        encode_cursor("not-a-time", uuid.UUID(int=7)),
        encode_cursor(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "not-a-uuid"),
    ],
)
def test_bad_cursors_are_400(cursor: str) -> None:
    with pytest.raises(Problem) as info:
        decode_time_uuid_cursor(cursor)
    assert info.value.status == 400
    assert info.value.code == "http.bad_cursor"


def test_next_cursor_only_when_an_extra_row_was_fetched() -> None:
    rows = [(i, i) for i in range(3)]
    assert next_cursor_for(rows[:2], 2, lambda r: r) is None
    assert next_cursor_for(rows, 2, lambda r: r) == encode_cursor(1, 1)
