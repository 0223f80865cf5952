"""reader signals: likes, bookmarks, reads, and each blog's like count

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 07:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _signal_table(name: str, *extra: sa.Column) -> None:  # type: ignore[type-arg]
    keys = ["blog_id", "user_id", *(column.name for column in extra)]
    op.create_table(
        name,
        sa.Column("blog_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        *extra,
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["blog_id"], ["blogs.id"], name=op.f(f"fk_{name}_blog_id_blogs")),
        sa.PrimaryKeyConstraint(*keys, name=op.f(f"pk_{name}")),
    )


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column(
        "blogs", sa.Column("like_count", sa.Integer(), server_default="0", nullable=False)
    )
    op.create_check_constraint(op.f("ck_blogs_like_count"), "blogs", "like_count >= 0")
    _signal_table("likes")
    _signal_table("bookmarks")
    _signal_table("reads", sa.Column("day", sa.Date(), nullable=False))


def downgrade() -> None:
    op.drop_table("reads")
    op.drop_table("bookmarks")
    op.drop_table("likes")
    op.drop_constraint(op.f("ck_blogs_like_count"), "blogs", type_="check")
    op.drop_column("blogs", "like_count")
