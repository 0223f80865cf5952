"""Every SQL statement of the blog service; functions take the caller's connection."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any, Literal

from sqlalchemy import (
    Select,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    func,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from mosaic_blog.models import Author, Blog
from mosaic_blog.tables import authors, blogs, bookmarks, likes, reads
from mosaic_blog.workflow import State
from mosaic_kit.sql.db import Database

_columns = [
    *[c for c in blogs.c if c.name != "search"],
    authors.c.name.label("author_name"),
    authors.c.profile_pic_url.label("author_pic"),
]
_from = blogs.outerjoin(authors, authors.c.id == blogs.c.author_id)
_live = blogs.c.deleted_at.is_(None)
_public = and_(blogs.c.state == State.PUBLISHED.value, _live)


def _blog(row: Row[Any]) -> Blog:
    return _blog_of(row._mapping)


def _blog_of(m: Mapping[Any, Any]) -> Blog:
    return Blog(
        id=m["id"],
        slug=m["slug"],
        title=m["title"],
        description=m["description"],
        text=m["text"],
        draft_text=m["draft_text"],
        tags=list(m["tags"]),
        img_url=m["img_url"],
        author=Author(m["author_id"], m["author_name"], m["author_pic"]),
        state=State(m["state"]),
        score=m["score"],
        published_at=m["published_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        likes=m["like_count"],
    )


def _select() -> Select[Any]:
    return select(*_columns).select_from(_from)


# The reads by id that requests make (an author's blog, an editor's, a public one on a cache
# miss): built once, run by `Database.read_one` in one round trip.
_live_by_id = _select().where(blogs.c.id == bindparam("blog_id"), _live)
_own_by_id = _live_by_id.where(blogs.c.author_id == bindparam("author_id"))
_public_by_id = _select().where(blogs.c.id == bindparam("blog_id"), _public)


async def read_blog(
    db: Database, blog_id: uuid.UUID, *, public: bool = False, author_id: uuid.UUID | None = None
) -> Blog | None:
    """`get_blog` outside a transaction: a live blog (or a public one, or one of the author's)."""
    if author_id is not None:
        row = await db.read_one(_own_by_id, {"blog_id": blog_id, "author_id": author_id})
    else:
        row = await db.read_one(_public_by_id if public else _live_by_id, {"blog_id": blog_id})
    return _blog_of(row) if row else None


# --- readers' signals ---------------------------------------------------------------------------

Signal = Literal["like", "bookmark"]
_SIGNALS: dict[Signal, Table] = {"like": likes, "bookmark": bookmarks}


async def public_like_count(conn: AsyncConnection, blog_id: uuid.UUID) -> int | None:
    """The like count of a published blog; None when it is not published (or gone)."""
    row = (
        await conn.execute(select(blogs.c.like_count).where(blogs.c.id == blog_id, _public))
    ).first()
    return None if row is None else int(row[0])


async def add_signal(
    conn: AsyncConnection, signal: Signal, blog_id: uuid.UUID, user_id: uuid.UUID
) -> bool:
    """Record it; False when it was already there (a concurrent duplicate waits for the first
    one's commit on the primary key, then finds it)."""
    table = _SIGNALS[signal]
    stmt = (
        insert(table)
        .values(blog_id=blog_id, user_id=user_id)
        .on_conflict_do_nothing()
        .returning(table.c.blog_id)
    )
    return (await conn.execute(stmt)).first() is not None


async def remove_signal(
    conn: AsyncConnection, signal: Signal, blog_id: uuid.UUID, user_id: uuid.UUID
) -> bool:
    """Take it back; False when there was none."""
    table = _SIGNALS[signal]
    stmt = (
        delete(table)
        .where(table.c.blog_id == blog_id, table.c.user_id == user_id)
        .returning(table.c.blog_id)
    )
    return (await conn.execute(stmt)).first() is not None


async def add_to_like_count(conn: AsyncConnection, blog_id: uuid.UUID, delta: int) -> int:
    """The count after adding `delta` (its content did not change: `updated_at` stays)."""
    stmt = (
        update(blogs)
        .where(blogs.c.id == blog_id)
        .values(like_count=blogs.c.like_count + delta)
        .returning(blogs.c.like_count)
    )
    return int((await conn.execute(stmt)).scalar_one())


async def add_read(
    conn: AsyncConnection, blog_id: uuid.UUID, user_id: uuid.UUID, day: date
) -> bool:
    """Record a read on `day`; False when this reader already read it that day."""
    stmt = (
        insert(reads)
        .values(blog_id=blog_id, user_id=user_id, day=day)
        .on_conflict_do_nothing()
        .returning(reads.c.blog_id)
    )
    return (await conn.execute(stmt)).first() is not None


async def insert_blog(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(blogs.insert().values(**values))


async def get_blog(
    conn: AsyncConnection,
    blog_id: uuid.UUID,
    *,
    public: bool = False,
    author_id: uuid.UUID | None = None,
    for_update: bool = False,
) -> Blog | None:
    stmt = _select().where(blogs.c.id == blog_id, _public if public else _live)
    if author_id is not None:
        stmt = stmt.where(blogs.c.author_id == author_id)
    if for_update:
        stmt = stmt.with_for_update(of=blogs)
    row = (await conn.execute(stmt)).first()
    return _blog(row) if row else None


async def get_public_by_slug(conn: AsyncConnection, slug: str) -> Blog | None:
    row = (await conn.execute(_select().where(blogs.c.slug == slug, _public))).first()
    return _blog(row) if row else None


async def update_blog(conn: AsyncConnection, blog_id: uuid.UUID, values: dict[str, Any]) -> None:
    await conn.execute(
        update(blogs).where(blogs.c.id == blog_id).values(**values, updated_at=func.now())
    )


async def list_public(
    conn: AsyncConnection,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    tag: str | None,
) -> list[Blog]:
    """Newest published first; `limit + 1` rows so the caller can tell if a next page exists."""
    stmt = _select().where(_public)
    if tag is not None:
        stmt = stmt.where(blogs.c.tags.contains([tag]))
    if after is not None:
        stmt = stmt.where(tuple_(blogs.c.published_at, blogs.c.id) < tuple_(*after))
    stmt = stmt.order_by(blogs.c.published_at.desc(), blogs.c.id.desc()).limit(limit + 1)
    return [_blog(r) for r in await conn.execute(stmt)]


async def list_by_creation(
    conn: AsyncConnection,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    *,
    author_id: uuid.UUID | None = None,
    states: Sequence[State] = (),
) -> list[Blog]:
    """Newest created first: an author's own blogs, or the editors' queue by state."""
    stmt = _select().where(_live)
    if author_id is not None:
        stmt = stmt.where(blogs.c.author_id == author_id)
    if states:
        stmt = stmt.where(blogs.c.state.in_([s.value for s in states]))
    if after is not None:
        stmt = stmt.where(tuple_(blogs.c.created_at, blogs.c.id) < tuple_(*after))
    stmt = stmt.order_by(blogs.c.created_at.desc(), blogs.c.id.desc()).limit(limit + 1)
    return [_blog(r) for r in await conn.execute(stmt)]


async def similar(conn: AsyncConnection, blog_id: uuid.UUID, limit: int) -> list[Blog]:
    """Published blogs sharing words with this one's title and description, best match first.

    The query is the blog's own search vector turned into an OR of its lexemes (already
    stemmed, so the 'simple' configuration keeps them as they are); ranking uses the stored
    weights, so a match in a title counts more than one in a description.
    """
    # strip() drops positions and weights: "'a' 'b'" as text becomes the query "'a' | 'b'".
    me = blogs.alias("me")  # not the outer query's row: an alias keeps it uncorrelated
    query = (
        select(
            func.to_tsquery(
                "simple", func.replace(cast(func.strip(me.c.search), Text), "' '", "' | '")
            )
        )
        .where(me.c.id == blog_id)
        .scalar_subquery()
    )
    rank = func.ts_rank(blogs.c.search, query)
    stmt = (
        _select()
        .where(_public, blogs.c.id != blog_id, blogs.c.search.op("@@")(query))
        .order_by(rank.desc(), blogs.c.published_at.desc(), blogs.c.id.desc())
        .limit(limit)
    )
    return [_blog(r) for r in await conn.execute(stmt)]


# --- authors (read model) ---------------------------------------------------------------------


async def upsert_author(
    conn: AsyncConnection, author_id: uuid.UUID, name: str, pic: str | None, as_of: datetime
) -> bool:
    """Store a profile unless a newer one is already stored.

    True when what readers see (name or picture) changed; an event that only confirms the
    stored profile, or is older than it, is False.
    """
    before = (
        await conn.execute(
            select(authors.c.name, authors.c.profile_pic_url)
            .where(authors.c.id == author_id)
            .with_for_update()
        )
    ).first()
    stmt = insert(authors).values(id=author_id, name=name, profile_pic_url=pic, as_of=as_of)
    stmt = stmt.on_conflict_do_update(
        index_elements=[authors.c.id],
        set_={
            "name": stmt.excluded.name,
            "profile_pic_url": stmt.excluded.profile_pic_url,
            "as_of": stmt.excluded.as_of,
        },
        where=authors.c.as_of <= stmt.excluded.as_of,
    )
    if (await conn.execute(stmt)).rowcount == 0:
        return False  # an older event than the stored profile
    return before is None or tuple(before) != (name, pic)


async def author_exists(conn: AsyncConnection, author_id: uuid.UUID) -> bool:
    row = (await conn.execute(select(authors.c.id).where(authors.c.id == author_id))).first()
    return row is not None


async def has_published(conn: AsyncConnection, author_id: uuid.UUID) -> bool:
    stmt = select(text("1")).select_from(blogs).where(blogs.c.author_id == author_id, _public)
    return (await conn.execute(stmt.limit(1))).first() is not None
