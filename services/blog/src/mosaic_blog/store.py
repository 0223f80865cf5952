"""Every SQL statement of the blog service; functions take the caller's connection."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Text, and_, bindparam, cast, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from mosaic_blog.models import Author, Blog
from mosaic_blog.tables import authors, blogs
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
