"""The blog schema. Migrations in `migrations/versions` create exactly these tables."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    Computed,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, TSVECTOR, UUID

from mosaic_kit.sql.db import new_metadata
from mosaic_kit.sql.idempotency import idempotency_table
from mosaic_kit.sql.outbox import outbox_table
from mosaic_kit.sql.processed import processed_events_table

metadata = new_metadata()

# Title outweighs description in full-text search (weights A and B).
SEARCH_VECTOR = (
    "setweight(to_tsvector('english', coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english', coalesce(description, '')), 'B')"
)

blogs = Table(
    "blogs",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("slug", String(200), nullable=False),
    Column("title", String(500), nullable=False),
    Column("description", String(2000), nullable=False),
    Column("text", Text),
    Column("draft_text", Text, nullable=False, server_default=""),
    Column("tags", ARRAY(String(50)), nullable=False),
    Column("img_url", Text, nullable=False),
    Column("author_id", UUID(as_uuid=True), nullable=False),
    Column("state", String(16), nullable=False),
    Column("score", Integer, nullable=False, server_default="0"),
    # Kept by the transaction that adds or removes a like: the public view reads one row.
    Column("like_count", Integer, nullable=False, server_default="0"),
    Column("published_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deleted_at", DateTime(timezone=True)),
    Column("search", TSVECTOR, Computed(SEARCH_VECTOR, persisted=True)),
    CheckConstraint("state IN ('draft', 'submitted', 'published')", name="state"),
    CheckConstraint("like_count >= 0", name="like_count"),
)
_live = text("deleted_at IS NULL")
_public = text("state = 'published' AND deleted_at IS NULL")
# A deleted blog frees its slug.
Index("uq_blogs_slug_live", blogs.c.slug, unique=True, postgresql_where=_live)
Index(
    "ix_blogs_public_order",
    blogs.c.published_at.desc(),
    blogs.c.id.desc(),
    postgresql_where=_public,
)
Index("ix_blogs_public_tags", blogs.c.tags, postgresql_using="gin", postgresql_where=_public)
Index("ix_blogs_search", blogs.c.search, postgresql_using="gin", postgresql_where=_public)
Index(
    "ix_blogs_author_order",
    blogs.c.author_id,
    blogs.c.created_at.desc(),
    blogs.c.id.desc(),
    postgresql_where=_live,
)
Index(
    "ix_blogs_state_order",
    blogs.c.state,
    blogs.c.created_at.desc(),
    blogs.c.id.desc(),
    postgresql_where=_live,
)

# The local read model of author profiles, fed by auth.user.* events.
authors = Table(
    "authors",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("profile_pic_url", Text),
    # occurredAt of the event this row reflects: an older event never overwrites a newer one.
    Column("as_of", DateTime(timezone=True), nullable=False),
)


def _signal_table(name: str, *extra: Column[Any]) -> Table:
    """A reader's signal on a blog: one row per (blog, user[, ...]), its key makes it idempotent."""
    return Table(
        name,
        metadata,
        Column("blog_id", UUID(as_uuid=True), ForeignKey("blogs.id"), primary_key=True),
        Column("user_id", UUID(as_uuid=True), primary_key=True),
        *extra,
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


likes = _signal_table("likes")
bookmarks = _signal_table("bookmarks")
# One row per reader, blog and UTC day: reading again the same day counts once.
reads = _signal_table("reads", Column("day", Date, primary_key=True))

outbox = outbox_table(metadata)
processed_events = processed_events_table(metadata)
idempotency_keys = idempotency_table(metadata)
