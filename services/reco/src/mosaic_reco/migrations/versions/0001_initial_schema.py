"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-12-07 06:57:35.893240
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "authors",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_authors")),
    )
    op.create_table(
        "cards",
        sa.Column("blog_id", sa.UUID(), nullable=False),
        sa.Column("slug", sa.String(length=200), server_default="", nullable=False),
        sa.Column("title", sa.String(length=500), server_default="", nullable=False),
        sa.Column("description", sa.String(length=2000), server_default="", nullable=False),
        sa.Column(
            "tags", postgresql.ARRAY(sa.String(length=50)), server_default="{}", nullable=False
        ),
        sa.Column("author_id", sa.UUID(), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("live", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "search",
            postgresql.TSVECTOR(),
            sa.Computed(
                "setweight(to_tsvector('english', coalesce(title, '')), 'A') || setweight(to_tsvector('english', coalesce(description, '')), 'B')",
                persisted=True,
            ),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("blog_id", name=op.f("pk_cards")),
    )
    op.create_index("ix_cards_author", "cards", ["author_id"], unique=False)
    op.create_index(
        "ix_cards_live_published",
        "cards",
        [sa.literal_column("published_at DESC")],
        unique=False,
        postgresql_where=sa.text("live"),
    )
    op.create_index(
        "ix_cards_live_search",
        "cards",
        ["search"],
        unique=False,
        postgresql_using="gin",
        postgresql_where=sa.text("live"),
    )
    op.create_index(
        "ix_cards_live_tags",
        "cards",
        ["tags"],
        unique=False,
        postgresql_using="gin",
        postgresql_where=sa.text("live"),
    )
    op.create_table(
        "co_likes",
        sa.Column("blog_id", sa.UUID(), nullable=False),
        sa.Column("other_id", sa.UUID(), nullable=False),
        sa.Column("readers", sa.Integer(), nullable=False),
        sa.CheckConstraint("readers >= 0", name=op.f("ck_co_likes_readers")),
        sa.PrimaryKeyConstraint("blog_id", "other_id", name=op.f("pk_co_likes")),
    )
    op.create_index(
        "ix_co_likes_top", "co_likes", ["blog_id", sa.literal_column("readers DESC")], unique=False
    )
    op.create_table(
        "like_counts",
        sa.Column("blog_id", sa.UUID(), nullable=False),
        sa.Column("readers", sa.Integer(), nullable=False),
        sa.CheckConstraint("readers >= 0", name=op.f("ck_like_counts_readers")),
        sa.PrimaryKeyConstraint("blog_id", name=op.f("pk_like_counts")),
    )
    op.create_table(
        "processed_events",
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column(
            "processed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("consumer", "event_id", name=op.f("pk_processed_events")),
    )
    op.create_index(
        "ix_processed_events_processed_at", "processed_events", ["processed_at"], unique=False
    )
    op.create_table(
        "signals",
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("blog_id", sa.UUID(), nullable=False),
        sa.Column("liked", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("liked_as_of", sa.DateTime(timezone=True), nullable=True),
        sa.Column("bookmarked", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("bookmarked_as_of", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reads", sa.Integer(), server_default="0", nullable=False),
        sa.Column("read_as_of", sa.DateTime(timezone=True), nullable=True),
        sa.Column("engaged_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("reads >= 0", name=op.f("ck_signals_reads")),
        sa.PrimaryKeyConstraint("user_id", "blog_id", name=op.f("pk_signals")),
    )
    op.create_index("ix_signals_blog", "signals", ["blog_id"], unique=False)
    op.create_index("ix_signals_engaged", "signals", ["engaged_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_signals_engaged", table_name="signals")
    op.drop_index("ix_signals_blog", table_name="signals")
    op.drop_table("signals")
    op.drop_index("ix_processed_events_processed_at", table_name="processed_events")
    op.drop_table("processed_events")
    op.drop_table("like_counts")
    op.drop_index("ix_co_likes_top", table_name="co_likes")
    op.drop_table("co_likes")
    op.drop_index(
        "ix_cards_live_tags",
        table_name="cards",
        postgresql_using="gin",
        postgresql_where=sa.text("live"),
    )
    op.drop_index(
        "ix_cards_live_search",
        table_name="cards",
        postgresql_using="gin",
        postgresql_where=sa.text("live"),
    )
    op.drop_index("ix_cards_live_published", table_name="cards", postgresql_where=sa.text("live"))
    op.drop_index("ix_cards_author", table_name="cards")
    op.drop_table("cards")
    op.drop_table("authors")
