"""The reco schema: a read model fed only by events (blog's and auth's), never by calls.

Migrations in `migrations/versions` create exactly these tables (a test compares them). Every row
remembers the `occurredAt` of the event it reflects (`as_of`), so a replayed or late event never
overwrites a newer state.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, TSVECTOR, UUID

from mosaic_kit.sql.db import new_metadata
from mosaic_kit.sql.processed import processed_events_table

metadata = new_metadata()

# Title outweighs description in the full-text fallback of "readers also liked".
SEARCH_VECTOR = (
    "setweight(to_tsvector('english', coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english', coalesce(description, '')), 'B')"
)

# A blog as recommendations show it, from blog.blog.published / updated / unpublished / deleted.
cards = Table(
    "cards",
    metadata,
    Column("blog_id", UUID(as_uuid=True), primary_key=True),
    Column("slug", String(200), nullable=False, server_default=""),
    Column("title", String(500), nullable=False, server_default=""),
    Column("description", String(2000), nullable=False, server_default=""),
    Column("tags", ARRAY(String(50)), nullable=False, server_default="{}"),
    Column("author_id", UUID(as_uuid=True)),
    Column("published_at", DateTime(timezone=True)),
    # Recommended only while live: unpublished or deleted blogs leave every list.
    Column("live", Boolean, nullable=False, server_default="false"),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Column("search", TSVECTOR, Computed(SEARCH_VECTOR, persisted=True)),
)
_live = text("live")
Index("ix_cards_live_published", cards.c.published_at.desc(), postgresql_where=_live)
Index("ix_cards_live_tags", cards.c.tags, postgresql_using="gin", postgresql_where=_live)
Index("ix_cards_live_search", cards.c.search, postgresql_using="gin", postgresql_where=_live)
Index("ix_cards_author", cards.c.author_id)

# Author names, from auth.user.created / updated.
authors = Table(
    "authors",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("as_of", DateTime(timezone=True), nullable=False),
)

# What each reader did with each blog: blog.blog.liked / unliked / bookmarked / unbookmarked /
# read. Each flag keeps the time of the event that set it, so events may arrive in any order.
signals = Table(
    "signals",
    metadata,
    Column("user_id", UUID(as_uuid=True), primary_key=True),
    Column("blog_id", UUID(as_uuid=True), primary_key=True),
    Column("liked", Boolean, nullable=False, server_default="false"),
    Column("liked_as_of", DateTime(timezone=True)),
    Column("bookmarked", Boolean, nullable=False, server_default="false"),
    Column("bookmarked_as_of", DateTime(timezone=True)),
    Column("reads", Integer, nullable=False, server_default="0"),
    Column("read_as_of", DateTime(timezone=True)),
    # The latest positive signal (a like, a bookmark or a read): what trending decays from.
    Column("engaged_at", DateTime(timezone=True)),
    CheckConstraint("reads >= 0", name="reads"),
)
Index("ix_signals_blog", signals.c.blog_id)
Index("ix_signals_engaged", signals.c.engaged_at)

# Item-item co-engagement, kept incrementally: how many readers like both blogs (both orders
# stored, so a blog's neighbours are one index range).
co_likes = Table(
    "co_likes",
    metadata,
    Column("blog_id", UUID(as_uuid=True), primary_key=True),
    Column("other_id", UUID(as_uuid=True), primary_key=True),
    Column("readers", Integer, nullable=False),
    CheckConstraint("readers >= 0", name="readers"),
)
Index("ix_co_likes_top", co_likes.c.blog_id, co_likes.c.readers.desc())

# How many readers like each blog (its popularity, to temper co-engagement).
like_counts = Table(
    "like_counts",
    metadata,
    Column("blog_id", UUID(as_uuid=True), primary_key=True),
    Column("readers", Integer, nullable=False),
    CheckConstraint("readers >= 0", name="readers"),
)

processed_events = processed_events_table(metadata)
