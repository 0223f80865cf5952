"""Every SQL statement of the reco service (SQLAlchemy Core on the kit's connection)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Float, and_, bindparam, case, cast, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.types import String

from mosaic_kit.sql.db import Connection
from mosaic_reco.models import Card, Engagement
from mosaic_reco.tables import authors, cards, co_likes, like_counts, signals

Flag = Literal["liked", "bookmarked"]


@dataclass(frozen=True)
class Flagged:
    taken: bool  # the event was newer than the flag's time
    flipped: bool  # and changed the flag


async def lock_reader(conn: Connection, user_id: uuid.UUID) -> None:
    """Serialise a reader's signal changes across replicas for this transaction: co-engagement
    reads the reader's other likes, which a concurrent like of theirs would otherwise miss."""
    await conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"reco:{user_id}"))))


# --- cards and authors ---------------------------------------------------------------------------


async def upsert_card(
    conn: Connection, blog_id: uuid.UUID, fields: dict[str, Any], as_of: datetime
) -> bool:
    """A published blog's card, live, unless a newer event already set it; whether it changed."""
    values = {**fields, "blog_id": blog_id, "live": True, "as_of": as_of}
    stmt = insert(cards).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[cards.c.blog_id],
        set_={name: stmt.excluded[name] for name in values if name != "blog_id"},
        where=cards.c.as_of <= stmt.excluded.as_of,
    )
    return bool((await conn.execute(stmt)).rowcount)


async def hide_card(conn: Connection, blog_id: uuid.UUID, as_of: datetime) -> bool:
    """Take it out of every list (unpublished or deleted), unless a newer event set it since."""
    stmt = insert(cards).values(blog_id=blog_id, live=False, as_of=as_of)
    stmt = stmt.on_conflict_do_update(
        index_elements=[cards.c.blog_id],
        set_={"live": False, "as_of": stmt.excluded.as_of},
        where=cards.c.as_of <= stmt.excluded.as_of,
    )
    return bool((await conn.execute(stmt)).rowcount)


async def upsert_author(conn: Connection, author_id: uuid.UUID, name: str, as_of: datetime) -> None:
    stmt = insert(authors).values(id=author_id, name=name, as_of=as_of)
    stmt = stmt.on_conflict_do_update(
        index_elements=[authors.c.id],
        set_={"name": stmt.excluded.name, "as_of": stmt.excluded.as_of},
        where=authors.c.as_of <= stmt.excluded.as_of,
    )
    await conn.execute(stmt)


_card_columns = [
    cards.c.blog_id,
    cards.c.slug,
    cards.c.title,
    cards.c.tags,
    cards.c.author_id,
    authors.c.name.label("author_name"),
    cards.c.published_at,
]
_card_from = cards.outerjoin(authors, authors.c.id == cards.c.author_id)


def _card(row: Any) -> Card:
    return Card(
        blog_id=row.blog_id,
        slug=row.slug,
        title=row.title,
        tags=list(row.tags),
        author_id=row.author_id,
        author_name=row.author_name,
        published_at=row.published_at,
    )


async def live_cards(conn: Connection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Card]:
    if not ids:
        return {}
    stmt = (
        select(*_card_columns).select_from(_card_from).where(cards.c.blog_id.in_(ids), cards.c.live)
    )
    return {row.blog_id: _card(row) for row in await conn.execute(stmt)}


async def is_live(conn: Connection, blog_id: uuid.UUID) -> bool:
    stmt = select(cards.c.blog_id).where(cards.c.blog_id == blog_id, cards.c.live)
    return (await conn.execute(stmt)).first() is not None


async def cards_with_tags(
    conn: Connection, tags: Sequence[str], limit: int, author_not: uuid.UUID | None = None
) -> list[Card]:
    """Live cards sharing a tag with `tags`, newest first."""
    stmt = (
        select(*_card_columns)
        .select_from(_card_from)
        .where(cards.c.live, cards.c.tags.overlap(cast(list(tags), ARRAY(String(50)))))
        # As `ix_cards_live_published` orders (DESC puts NULLs first): read newest first from it.
        .order_by(cards.c.published_at.desc())
        .limit(limit)
    )
    if author_not is not None:
        stmt = stmt.where(cards.c.author_id.is_distinct_from(author_not))
    return [_card(row) for row in await conn.execute(stmt)]


async def authored_by(conn: Connection, user_id: uuid.UUID) -> set[uuid.UUID]:
    rows = await conn.execute(select(cards.c.blog_id).where(cards.c.author_id == user_id))
    return {row.blog_id for row in rows}


# --- signals -------------------------------------------------------------------------------------


async def set_flag(
    conn: Connection,
    user_id: uuid.UUID,
    blog_id: uuid.UUID,
    flag: Flag,
    value: bool,
    as_of: datetime,
) -> Flagged:
    """Set a reader's like or bookmark as of `as_of`. An event older than the one that last set
    the flag changes nothing (events may arrive out of order); a newer one is taken even when it
    confirms the flag (its time is the flag's time now: a like repeated is a recent like)."""
    stamp = signals.c[f"{flag}_as_of"]
    await conn.execute(
        insert(signals).values(user_id=user_id, blog_id=blog_id).on_conflict_do_nothing()
    )
    row = (
        await conn.execute(
            select(signals.c[flag], stamp)
            .where(signals.c.user_id == user_id, signals.c.blog_id == blog_id)
            .with_for_update()
        )
    ).one()
    if row[1] is not None and row[1] >= as_of:
        return Flagged(taken=False, flipped=False)
    values: dict[str, Any] = {flag: value, stamp.name: as_of}
    if value:
        values["engaged_at"] = func.greatest(signals.c.engaged_at, as_of)
    await conn.execute(
        update(signals)
        .where(signals.c.user_id == user_id, signals.c.blog_id == blog_id)
        .values(**values)
    )
    return Flagged(taken=True, flipped=bool(row[0]) != value)


async def add_read(conn: Connection, user_id: uuid.UUID, blog_id: uuid.UUID, at: datetime) -> None:
    stmt = insert(signals).values(
        user_id=user_id, blog_id=blog_id, reads=1, read_as_of=at, engaged_at=at
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[signals.c.user_id, signals.c.blog_id],
        set_={
            "reads": signals.c.reads + 1,
            "read_as_of": func.greatest(signals.c.read_as_of, at),
            "engaged_at": func.greatest(signals.c.engaged_at, at),
        },
    )
    await conn.execute(stmt)


async def engagements(conn: Connection, user_id: uuid.UUID, limit: int) -> list[Engagement]:
    """The reader's signals, most recent first."""
    stmt = (
        select(signals.c.blog_id, signals.c.liked, signals.c.bookmarked, signals.c.reads)
        .where(signals.c.user_id == user_id)
        .order_by(signals.c.engaged_at.desc().nulls_last())
        .limit(limit)
    )
    return [Engagement(r.blog_id, r.liked, r.bookmarked, r.reads) for r in await conn.execute(stmt)]


# --- co-engagement -------------------------------------------------------------------------------


async def liked_window(conn: Connection, user_id: uuid.UUID, size: int) -> list[uuid.UUID]:
    """The reader's `size` most recent likes (by the time of the like), newest first."""
    stmt = (
        select(signals.c.blog_id)
        .where(signals.c.user_id == user_id, signals.c.liked)
        .order_by(signals.c.liked_as_of.desc(), signals.c.blog_id)
        .limit(size)
    )
    return [row.blog_id for row in await conn.execute(stmt)]


async def change_pairs(
    conn: Connection, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]], delta: Literal[1, -1]
) -> None:
    """Count one reader more (or less) for each pair, both ways; pairs down to none go."""
    if not pairs:
        return
    rows = [
        {"blog_id": one, "other_id": two, "readers": 1}
        for a, b in pairs
        for one, two in ((a, b), (b, a))
    ]
    if delta > 0:
        stmt = insert(co_likes).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=[co_likes.c.blog_id, co_likes.c.other_id],
            set_={"readers": co_likes.c.readers + 1},
        )
        await conn.execute(stmt)
        return
    keys = [(row["blog_id"], row["other_id"]) for row in rows]
    chosen = tuple_(co_likes.c.blog_id, co_likes.c.other_id).in_(keys)
    await conn.execute(update(co_likes).where(chosen).values(readers=co_likes.c.readers - 1))
    await conn.execute(co_likes.delete().where(chosen, co_likes.c.readers <= 0))


async def change_like_count(conn: Connection, blog_id: uuid.UUID, delta: Literal[1, -1]) -> None:
    count = insert(like_counts).values(blog_id=blog_id, readers=max(delta, 0))
    count = count.on_conflict_do_update(
        index_elements=[like_counts.c.blog_id],
        set_={"readers": func.greatest(like_counts.c.readers + delta, 0)},
    )
    await conn.execute(count)


_NEIGHBOURS = text(
    """
    SELECT s.seed, top.other_id, top.readers, counts.readers AS likes
    FROM unnest(CAST(:seeds AS uuid[])) AS s(seed)
    CROSS JOIN LATERAL (
        SELECT other_id, readers FROM co_likes
        WHERE blog_id = s.seed ORDER BY readers DESC LIMIT :per_seed
    ) AS top
    JOIN cards ON cards.blog_id = top.other_id AND cards.live
    JOIN like_counts AS counts ON counts.blog_id = top.other_id
    """
)


async def neighbours(
    conn: Connection, seeds: Sequence[uuid.UUID], per_seed: int
) -> list[tuple[uuid.UUID, uuid.UUID, int, int]]:
    """For each seed, its most co-liked live blogs: (seed, other, readers of both, other's likes).

    One index range per seed (`ix_co_likes_top`), however many partners a popular blog has."""
    if not seeds:
        return []
    rows = await conn.execute(_NEIGHBOURS, {"seeds": list(seeds), "per_seed": per_seed})
    return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows]


# --- trending and text similarity ----------------------------------------------------------------

# A like weighs 3, a bookmark 2, reads 1 each up to 3; each decays with the age of the reader's
# latest signal on the blog.
_WEIGHT = (
    case((signals.c.liked, 3.0), else_=0.0)
    + case((signals.c.bookmarked, 2.0), else_=0.0)
    + cast(func.least(signals.c.reads, 3), Float)
)


async def trending(
    conn: Connection,
    since: datetime,
    half_life_hours: float,
    limit: int,
    tags: Sequence[str] = (),
) -> list[tuple[uuid.UUID, float]]:
    """Live blogs by their readers' signals since `since`, each decayed by its age."""
    age_hours = func.extract("epoch", func.now() - signals.c.engaged_at) / 3600.0
    score = func.sum(_WEIGHT * func.power(0.5, age_hours / half_life_hours)).label("score")
    stmt = (
        select(signals.c.blog_id, score)
        .join(cards, and_(cards.c.blog_id == signals.c.blog_id, cards.c.live))
        .where(signals.c.engaged_at >= since)
        .group_by(signals.c.blog_id)
        .order_by(score.desc(), signals.c.blog_id)
        .limit(limit)
    )
    if tags:
        stmt = stmt.where(cards.c.tags.overlap(cast(list(tags), ARRAY(String(50)))))
    return [(row.blog_id, float(row.score)) for row in await conn.execute(stmt)]


_SIMILAR = text(
    """
    WITH source AS (
        SELECT to_tsquery('simple', coalesce(string_agg(quote_literal(lexeme), ' | '), '')) AS q
        FROM cards, unnest(tsvector_to_array(search)) AS lexeme
        WHERE blog_id = :blog_id
    )
    SELECT c.blog_id, ts_rank(c.search, source.q) AS rank
    FROM cards c, source
    WHERE c.live AND c.blog_id <> :blog_id AND c.search @@ source.q
    ORDER BY rank DESC, c.published_at DESC NULLS LAST, c.blog_id
    LIMIT :limit
    """
).bindparams(bindparam("blog_id"), bindparam("limit"))


async def similar_text(
    conn: Connection, blog_id: uuid.UUID, limit: int
) -> list[tuple[uuid.UUID, float]]:
    """Live blogs sharing words with this one's title or description, best match first."""
    rows = await conn.execute(_SIMILAR, {"blog_id": blog_id, "limit": limit})
    return [(row.blog_id, float(row.rank)) for row in rows]
