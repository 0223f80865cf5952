"""The migrations create exactly the tables the code declares (`tables.py`)."""

from __future__ import annotations

from mosaic_kit.sql.migrations import schema_drift
from mosaic_reco.settings import RecoSettings
from mosaic_reco.tables import metadata


async def test_the_migrations_create_exactly_the_declared_schema(
    settings: RecoSettings,
) -> None:
    # The `settings` fixture has migrated its schema to head.
    assert await schema_drift(settings, metadata) == []
