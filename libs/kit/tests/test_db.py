"""What a database read costs on the wire, and that a connection the server closed is replaced."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    MetaData,
    String,
    Table,
    Uuid,
    bindparam,
    exc,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from mosaic_kit.sql.db import ConstraintError, Database, create_engine


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[Database]:
    # One connection, so every checkout below gets the same one.
    database = Database(create_engine(pg_url, "public", pool_size=1), "public")
    try:
        yield database
    finally:
        await database.dispose()


async def _sent_by(db: Database, *statements: str) -> list[str]:
    """The queries besides `statements` that the driver sent while `db.connect()` ran them
    (asyncpg's query log shows simple queries; the prepared statements SQLAlchemy runs are not
    logged, so the statements themselves need not appear)."""
    async with db.engine.connect() as conn:  # opens the pool's connection
        raw: Any = (await conn.get_raw_connection()).driver_connection
    sent: list[str] = []

    def log(record: Any) -> None:
        sent.append(record.query)

    raw.add_query_logger(log)
    try:
        async with db.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        raw.remove_query_logger(log)
    return [query for query in sent if query not in statements]


async def test_a_read_costs_no_pre_ping(db: Database) -> None:
    # A pre-ping (BEGIN, ";", ROLLBACK) would show up here: three round trips on every request
    # that reads. What is left is the read's own transaction (see Database.connect).
    assert await _sent_by(db, "SELECT 1") == ["BEGIN;", "ROLLBACK;"]


async def test_a_read_connection_is_rolled_back(db: Database) -> None:
    async with db.connect() as conn:
        await conn.execute(text("CREATE TABLE read_only_probe (id int)"))
    async with db.connect() as conn:
        found = await conn.execute(text("SELECT to_regclass('read_only_probe')"))
        assert found.scalar_one() is None


async def test_transactions_still_span_their_statements(db: Database) -> None:
    async with db.transaction() as conn:
        first = (await conn.execute(text("SELECT pg_current_xact_id()"))).scalar_one()
        second = (await conn.execute(text("SELECT pg_current_xact_id()"))).scalar_one()
    assert first == second


async def test_a_connection_the_server_closed_is_replaced_on_checkout(
    db: Database, pg_url: str
) -> None:
    async with db.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    # What a server restart does to every pooled connection, done to this one only.
    other = Database(create_engine(pg_url, "public", pool_size=1), "public")
    try:
        async with other.connect() as conn:
            assert (await conn.execute(text(f"SELECT pg_terminate_backend({pid})"))).scalar_one()
    finally:
        await other.dispose()
    await asyncio.sleep(0.2)  # the driver sees the socket end on a later loop turn
    async with db.connect() as conn:
        again = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    assert again != pid


async def test_a_broken_constraint_is_a_constraint_error_and_nothing_is_written(
    db: Database,
) -> None:
    name = f"probe_{uuid.uuid4().hex[:8]}"
    async with db.transaction() as conn:
        await conn.execute(
            text(f"CREATE TABLE {name} (id int CONSTRAINT uq_{name}_id UNIQUE, note text)")
        )
    try:
        async with db.transaction() as conn:
            await conn.execute(text(f"INSERT INTO {name} VALUES (1, 'first')"))

        async def second_then_duplicate() -> None:
            async with db.transaction() as conn:
                await conn.execute(text(f"INSERT INTO {name} VALUES (2, 'second')"))
                await conn.execute(text(f"INSERT INTO {name} VALUES (1, 'again')"))

        with pytest.raises(ConstraintError) as caught:
            await second_then_duplicate()
        assert caught.value.constraint == f"uq_{name}_id"
        assert isinstance(caught.value.__cause__, exc.IntegrityError)
        async with db.connect() as conn:
            notes = (await conn.execute(text(f"SELECT note FROM {name} ORDER BY id"))).scalars()
            assert list(notes) == ["first"]  # the whole transaction was rolled back
    finally:
        async with db.transaction() as conn:
            await conn.execute(text(f"DROP TABLE {name}"))


async def test_other_database_errors_pass_through_unchanged(db: Database) -> None:
    async def query_a_missing_table() -> None:
        async with db.transaction() as conn:
            await conn.execute(text("SELECT * FROM no_such_table_here"))

    with pytest.raises(exc.ProgrammingError):
        await query_a_missing_table()


# --- read_one: the hot read in one round trip ----------------------------------------------------

_metadata = MetaData()
_things = Table(
    "read_one_things",
    _metadata,
    Column("id", Uuid(as_uuid=True), primary_key=True),
    Column("name", String(50), nullable=False),
    Column("tags", ARRAY(String(20)), nullable=False),
    Column("doc", JSONB, nullable=True),
)
_by_id = select(
    _things.c.id,
    _things.c.name,
    func.coalesce(_things.c.tags, []).label("tags"),  # a literal bound by SQLAlchemy
).where(_things.c.id == bindparam("thing_id", type_=_things.c.id.type))


@pytest.fixture
async def things(db: Database) -> AsyncIterator[uuid.UUID]:
    thing = uuid.uuid4()
    async with db.transaction() as conn:
        await conn.run_sync(_metadata.create_all)
        await conn.execute(_things.insert().values(id=thing, name="first", tags=["a", "b"]))
    try:
        yield thing
    finally:
        async with db.transaction() as conn:
            await conn.run_sync(_metadata.drop_all)


async def test_read_one_answers_what_sqlalchemy_answers(db: Database, things: uuid.UUID) -> None:
    async with db.connect() as conn:
        expected = dict((await conn.execute(_by_id, {"thing_id": things})).one()._mapping)
    assert await db.read_one(_by_id, {"thing_id": things}) == expected
    assert expected == {"id": things, "name": "first", "tags": ["a", "b"]}
    assert await db.read_one(_by_id, {"thing_id": uuid.uuid4()}) is None


async def test_read_one_is_one_statement_without_a_transaction(
    db: Database, things: uuid.UUID
) -> None:
    await db.read_one(_by_id, {"thing_id": things})  # compiled and prepared
    async with db.engine.connect() as conn:
        raw: Any = (await conn.get_raw_connection()).driver_connection
    sent: list[str] = []

    def log(record: Any) -> None:
        sent.append(record.query)

    raw.add_query_logger(log)
    try:
        await db.read_one(_by_id, {"thing_id": things})
    finally:
        raw.remove_query_logger(log)
    assert "BEGIN;" not in sent
    assert "ROLLBACK;" not in sent


async def test_read_one_refuses_what_it_cannot_run_faithfully(db: Database) -> None:
    with pytest.raises(KeyError, match="thing_id"):
        await db.read_one(_by_id, {})
    by_doc = select(_things.c.id).where(_things.c.doc == bindparam("doc", type_=JSONB))
    with pytest.raises(ValueError, match="needs SQLAlchemy's conversion"):
        await db.read_one(by_doc, {"doc": {"a": 1}})
