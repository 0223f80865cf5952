"""PostgreSQL access: one async engine per process, confined to the service's own schema.

Stores use SQLAlchemy Core (explicit SQL, no unit-of-work magic) on `AsyncConnection`s:
`async with db.transaction() as conn:` opens a transaction that commits on success and rolls back
on error; the transactional outbox writes its event rows on the same connection.
The schema is set through `search_path` at connect time, so table definitions carry no schema
and the same service code runs against any schema name an operator picks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import MetaData, Select, event, exc, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from mosaic_kit import tracing
from mosaic_kit.problem import treat_as_unreachable
from mosaic_kit.settings import ServiceSettings
from mosaic_kit.sql import outages

__all__ = [
    "NAMING_CONVENTION",
    "Connection",
    "ConstraintError",
    "Database",
    "create_engine",
    "new_metadata",
    "trace_statements",
]

# What stores take and services pass along, named so that a service layer needs no SQLAlchemy.
Connection = AsyncConnection

# Any process that talks to PostgreSQL answers its outages as 503s, not as bugs.
treat_as_unreachable(outages.postgres_unreachable)

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


def create_engine(url: str, schema: str, pool_size: int = 10, max_overflow: int = 0) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=1800,
        connect_args={"server_settings": {"search_path": schema}},
    )
    # Instead of `pool_pre_ping`, which costs three round trips (BEGIN, `;`, ROLLBACK) on every
    # checkout: asyncpg marks a connection closed as soon as its socket ends (a server restart
    # or crash), so asking it is free. A connection that dies mid-query is still recognised as a
    # disconnect by SQLAlchemy, which then drops the whole pool.
    event.listen(engine.sync_engine.pool, "checkout", _refuse_closed)
    return engine


def trace_statements() -> None:
    """A client span per statement (`db.system: postgresql`, the SQL text) when this process
    records traces, so one trace shows the request, its SQL and its NATS calls. Patches asyncpg
    once per process (raw driver reads included); costs nothing while tracing is off."""
    if tracing.enabled():
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def _refuse_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    if dbapi_connection.driver_connection.is_closed():
        # The pool discards this connection and checks out (or opens) another.
        raise exc.DisconnectionError("connection closed by the server")


class ConstraintError(Exception):
    """A write in `Database.transaction()` broke a unique, foreign-key or check constraint.

    Raised in place of SQLAlchemy's `IntegrityError` (its `__cause__`), so a service layer can turn
    "this e-mail is taken" into a problem without depending on the driver. `constraint` is the
    constraint's name when PostgreSQL reported it (`uq_users_email`, ...)."""

    def __init__(self, constraint: str | None) -> None:
        self.constraint = constraint
        super().__init__(f"constraint violated: {constraint or 'unknown'}")


def _constraint_name(error: exc.IntegrityError) -> str | None:
    # asyncpg's exception, wrapped by SQLAlchemy's adapter, carries the name PostgreSQL sent.
    driver_error = getattr(error.orig, "__cause__", None)
    name = getattr(driver_error, "constraint_name", None)
    return name if isinstance(name, str) else None


@dataclass(frozen=True)
class _Prepared:
    """A SELECT compiled once for `Database.read_one`: its SQL, where each argument comes from,
    and how each column is converted (None: as the driver returns it)."""

    sql: str
    arguments: tuple[tuple[str, Any], ...]  # (parameter name, its default or _REQUIRED)
    columns: tuple[tuple[str, Callable[[Any], Any] | None], ...]


_REQUIRED = object()


class Database:
    """The process's engine and its schema."""

    def __init__(self, engine: AsyncEngine, schema: str) -> None:
        self.engine = engine
        self.schema = schema
        self._prepared: dict[Select[Any], _Prepared] = {}

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> Database:
        trace_statements()
        engine = create_engine(
            settings.sqlalchemy_url(),
            settings.db_schema,
            settings.db_pool_size,
            settings.db_max_overflow,
        )
        return cls(engine, settings.db_schema)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits on success and rolls back on error; a broken constraint
        (at a statement or at the commit) raises `ConstraintError`."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except exc.IntegrityError as error:
            raise ConstraintError(_constraint_name(error)) from error

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (autobegin; rolled back on exit).

        Not autocommit, though that saves the BEGIN and ROLLBACK round trips: measured with
        `bench/blog_reads.py`, autocommit reads gave the deep listing pages a p99 of 290 to 390 ms
        and requests over 2 s, against 163 ms and none inside a transaction (and `users/me` a
        p99 of 192 against 95 ms), for about 20 % more requests per second."""
        async with self.engine.connect() as conn:
            yield conn

    async def read_one(
        self, statement: Select[Any], params: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The first row of a hot read, as a dict, in one round trip; None when there is none.

        For the reads every request makes (auth's session check): the statement runs straight on
        the pooled connection's asyncpg driver, as a single autocommitted statement (one
        snapshot, like any statement), without the BEGIN/ROLLBACK of `connect()` and without
        SQLAlchemy's execution and result layers. It is compiled once per statement object, so
        pass a module-level constant with `bindparam`s. A statement whose parameters would need
        SQLAlchemy's type conversion (JSON, enums...) is refused with ValueError when first used;
        column conversions (arrays...) are applied as SQLAlchemy would.
        """
        prepared = self._prepared.get(statement)
        if prepared is None:
            prepared = self._prepared[statement] = self._prepare(statement)
        arguments = [params.get(name, default) for name, default in prepared.arguments]
        if any(value is _REQUIRED for value in arguments):
            missing = [
                name
                for (name, _), value in zip(prepared.arguments, arguments, strict=True)
                if value is _REQUIRED
            ]
            raise KeyError(f"read_one: no value for {missing}")
        async with self.engine.connect() as conn:
            driver: Any = (await conn.get_raw_connection()).driver_connection
            row = await driver.fetchrow(prepared.sql, *arguments)
        if row is None:
            return None
        return {
            name: value if convert is None else convert(value)
            for (name, convert), value in zip(prepared.columns, row.values(), strict=True)
        }

    def _prepare(self, statement: Select[Any]) -> _Prepared:
        dialect = self.engine.dialect
        compiled = statement.compile(dialect=dialect)
        arguments = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            if bind.type.dialect_impl(dialect).bind_processor(dialect) is not None:
                raise ValueError(f"read_one: parameter {name!r} needs SQLAlchemy's conversion")
            arguments.append((name, _REQUIRED if bind.required else bind.value))
        columns = tuple(
            (column.name, column.type.dialect_impl(dialect).result_processor(dialect, None))
            for column in statement.selected_columns
        )
        return _Prepared(str(compiled), tuple(arguments), columns)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
