"""Alembic wiring shared by every service.

Each service ships its migrations inside its package (`<pkg>/migrations/env.py` + `versions/`), so
the wheel alone can migrate its database: `<service> migrate` calls `upgrade()`. No alembic.ini is
needed; the URL and schema are handed to `env.py` through the Alembic config's attributes.
Concurrent replicas starting at once are serialised by a PostgreSQL advisory lock per schema.
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import command, context
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from mosaic_kit.settings import ServiceSettings

__all__ = [
    "VERSION_TABLE",
    "alembic_config",
    "downgrade",
    "run_env",
    "schema_drift",
    "upgrade",
    "upgrade_async",
]

VERSION_TABLE = "alembic_version"


def alembic_config(settings: ServiceSettings, package: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", f"{package}:migrations")
    cfg.attributes["url"] = settings.sqlalchemy_url()
    cfg.attributes["schema"] = settings.db_schema
    return cfg


def upgrade(settings: ServiceSettings, package: str, revision: str = "head") -> None:
    """Bring the service's schema to `revision`. Blocking; call from a thread inside a loop."""
    command.upgrade(alembic_config(settings, package), revision)


def downgrade(settings: ServiceSettings, package: str, revision: str) -> None:
    command.downgrade(alembic_config(settings, package), revision)


async def upgrade_async(settings: ServiceSettings, package: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, settings, package, revision)


async def schema_drift(settings: ServiceSettings, metadata: MetaData) -> list[Any]:
    """What autogenerate would change to make the migrated schema match `metadata`: empty when
    the migrations create exactly the tables the code declares (a test of every service)."""
    schema = settings.db_schema

    def compare(connection: Connection) -> list[Any]:
        migration = MigrationContext.configure(
            connection,
            opts={"include_object": _not_version_table, "compare_type": True},
        )
        return list(compare_metadata(migration, metadata))

    engine = create_async_engine(
        settings.sqlalchemy_url(), connect_args={"server_settings": {"search_path": schema}}
    )
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


def _not_version_table(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    # Autogenerate must not propose dropping Alembic's own bookkeeping table.
    return not (type_ == "table" and name == VERSION_TABLE)


def run_env(target_metadata: MetaData) -> None:
    """The body of every service's `migrations/env.py` (online mode only)."""
    cfg = context.config
    url: str = cfg.attributes["url"]
    schema: str = cfg.attributes["schema"]

    def do_run(connection: Connection) -> None:
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": schema})
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        connection.execute(text(f'SET search_path TO "{schema}"'))
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=VERSION_TABLE,
            version_table_schema=schema,
            include_schemas=False,
            include_object=_not_version_table,
            transaction_per_migration=False,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def run() -> None:
        engine = create_async_engine(url, connect_args={"server_settings": {"search_path": schema}})
        try:
            async with engine.begin() as conn:
                await conn.run_sync(do_run)
        finally:
            await engine.dispose()

    asyncio.run(run())
