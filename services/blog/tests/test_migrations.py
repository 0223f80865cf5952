"""The migrations create exactly the tables the code declares (`tables.py`)."""

from __future__ import annotations

from mosaic_blog.settings import BlogSettings
from mosaic_blog.tables import metadata
from mosaic_kit.sql.migrations import schema_drift, upgrade_async


async def test_the_migrations_create_exactly_the_declared_schema(
    pg_url: str, fresh_schema: str
) -> None:
    settings = BlogSettings(database_url=pg_url, db_schema=fresh_schema)
    await upgrade_async(settings, "mosaic_blog")
    assert await schema_drift(settings, metadata) == []
