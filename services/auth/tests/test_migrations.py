"""The migrations create exactly the tables the code declares (`tables.py`)."""

from __future__ import annotations

from mosaic_auth.settings import AuthSettings
from mosaic_auth.tables import metadata
from mosaic_kit.sql.migrations import schema_drift, upgrade_async


async def test_the_migrations_create_exactly_the_declared_schema(
    pg_url: str, fresh_schema: str
) -> None:
    settings = AuthSettings(database_url=pg_url, db_schema=fresh_schema)
    await upgrade_async(settings, "mosaic_auth")
    assert await schema_drift(settings, metadata) == []
