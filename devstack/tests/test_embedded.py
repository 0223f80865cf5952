"""The embedded servers are real: PostgreSQL answers SQL, NATS does JetStream, data survives."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import nats

from mosaic_devstack.embedded import EmbeddedNats, EmbeddedPostgres, pid_alive


async def test_postgres_starts_answers_and_keeps_data_across_restart(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", durable=True)
    assert server.init() is True
    server.start()
    pid = server.pid
    assert pid is not None
    try:
        dsn = server.url.replace("+asyncpg", "")
        conn = await asyncpg.connect(dsn)
        await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        await conn.close()
    finally:
        server.stop()
    assert not pid_alive(pid)
    # Second start on the same folder: no initdb, same data.
    again = EmbeddedPostgres(tmp_path / "pg")
    assert again.init() is False
    again.start()
    try:
        conn = await asyncpg.connect(again.url.replace("+asyncpg", ""))
        assert await conn.fetchval("SELECT v FROM kept") == 42
        await conn.close()
    finally:
        again.stop()


async def test_nats_jetstream_stream_survives_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="PROBE", subjects=["probe.>"])
        ack = await js.publish("probe.one", b"hello")
        assert ack.seq == 1
        await nc.close()
        server.restart()
        nc = await nats.connect(server.url)
        msg = await nc.jetstream().get_msg("PROBE", 1)
        assert msg.data == b"hello"
        await nc.close()
    finally:
        server.stop()
