"""PostgreSQL access: one async engine per process, confined to the service's own schema.

Stores use SQLAlchemy Core (explicit SQL, no unit-of-work magic) on `AsyncConnection`s:
`async with db.transaction() as conn:` opens a transaction that commits on success and rolls back
on error; the transactional outbox writes its event rows on the same connection.
The schema is set through `search_path` at connect time, so table definitions carry no schema
and the same service code runs against any schema name an operator picks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from mosaic_kit.settings import ServiceSettings

# Names that make Alembic migrations deterministic across environments.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


def create_engine(
    url: str, schema: str, pool_size: int = 10, max_overflow: int = 10
) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"server_settings": {"search_path": schema}},
    )


class Database:
    """The process's engine and its schema."""

    def __init__(self, engine: AsyncEngine, schema: str) -> None:
        self.engine = engine
        self.schema = schema

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> Database:
        engine = create_engine(
            settings.sqlalchemy_url(),
            settings.db_schema,
            settings.db_pool_size,
            settings.db_max_overflow,
        )
        return cls(engine, settings.db_schema)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (autobegin; rolled back on exit)."""
        async with self.engine.connect() as conn:
            yield conn

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
