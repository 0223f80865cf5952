"""A small, real service that follows the service CLI contract, for testing `mosaic up`.

    fake_service.py migrate     creates its schema and table in DATABASE_URL (schema DB_SCHEMA)
    fake_service.py seed        creates an admin and an API key once; prints ONE JSON object
    fake_service.py serve --host H --port P --instance-id I
                                HTTP: /readyz (200 when its table answers and NATS is connected),
                                /env (what it was given), /verify?password=... (checks the admin's),
                                /v1/<service>/jwks.json (an empty key set: what the gateway probes
                                at /v1/auth/jwks.json), /openapi.json (that route, exposed through
                                the gateway with no API key: its `x-mosaic-gateway` policy);
                                announced on NATS as a `nats.micro` service named like the
                                instance without its number (auth-1: auth) with its URL in the
                                metadata, as the real services do for the gateway's discovery

It talks to the real PostgreSQL (asyncpg) and NATS (nats-py) it is pointed at. Knobs, read from the
environment: FAKE_NEVER_READY=1 (/readyz always 503), FAKE_IGNORE_SIGTERM=1 (only SIGKILL stops it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import signal
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import nats
import nats.micro


def log(event: str, **fields: Any) -> None:
    record = {
        "event": event,
        "instance": os.environ.get("INSTANCE_ID"),
        "pid": os.getpid(),
        "time": time.time(),
    }
    print(json.dumps({**record, **fields}), flush=True)


def schema() -> str:
    return os.environ.get("DB_SCHEMA", "fake")


def dsn() -> str:
    return os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def migrate() -> int:
    conn = await asyncpg.connect(dsn())
    try:
        await conn.execute(
            f'CREATE SCHEMA IF NOT EXISTS "{schema()}";'
            f'CREATE TABLE IF NOT EXISTS "{schema()}".accounts ('
            "  kind text PRIMARY KEY, name text NOT NULL, secret_hash text NOT NULL)"
        )
    finally:
        await conn.close()
    print(json.dumps({"event": "migrated", "schema": schema()}), file=sys.stderr)
    return 0


async def seed() -> int:
    conn = await asyncpg.connect(dsn())
    created: dict[str, Any] = {}
    try:
        password = secrets.token_urlsafe(12)
        key = "mk_" + secrets.token_urlsafe(24)
        for kind, name, secret in (
            ("admin", "admin@mosaic.test", password),
            ("apikey", "demo", key),
        ):
            row = await conn.fetchrow(
                f'INSERT INTO "{schema()}".accounts VALUES ($1, $2, $3) '
                "ON CONFLICT (kind) DO NOTHING RETURNING kind",
                kind,
                name,
                digest(secret),
            )
            created[kind] = row is not None
    finally:
        await conn.close()
    # Logs go to stderr: stdout carries nothing but the one JSON object.
    print(json.dumps({"event": "seeded", "created": created}), file=sys.stderr)
    admin = {"email": "admin@mosaic.test", "password": password} if created["admin"] else None
    api_key = {"id": "k1", "name": "demo", "key": key} if created["apikey"] else None
    print(json.dumps({"admin": admin, "apiKey": api_key}))
    return 0


class App:
    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.db: asyncpg.Connection | None = None
        self.nc: Any = None
        self.lock = asyncio.Lock()

    async def start(self, url: str) -> None:
        self.db = await asyncpg.connect(dsn())
        # As its NATS user when `mosaic up` runs NATS with authorization (as the kit does).
        login: dict[str, Any] = {}
        if "NATS_USER" in os.environ:
            login = {
                "user": os.environ["NATS_USER"],
                "password": os.environ.get("NATS_PASSWORD", ""),
                "inbox_prefix": os.environ.get("NATS_INBOX_PREFIX", "_INBOX"),
            }
        self.nc = await nats.connect(os.environ["NATS_URL"].split(","), name=self.instance, **login)
        await nats.micro.add_service(
            self.nc,
            name=self.instance.rsplit("-", 1)[0],
            version="0.0.1",
            metadata={"http": url, "instance": self.instance},
        )

    async def ready(self) -> bool:
        if os.environ.get("FAKE_NEVER_READY") == "1":
            return False
        assert self.db is not None
        async with self.lock:
            await self.db.fetchval(f'SELECT count(*) FROM "{schema()}".accounts')
        return bool(self.nc.is_connected)

    async def verify(self, password: str) -> bool:
        assert self.db is not None
        async with self.lock:
            stored = await self.db.fetchval(
                f'SELECT secret_hash FROM "{schema()}".accounts WHERE kind = $1', "admin"
            )
        return bool(stored == digest(password))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            target = request.split(b" ", 2)[1].decode()
            url = urlsplit(target)
            log("request", path=url.path)
            status, body = await self.route(url.path, parse_qs(url.query))
        except Exception as exc:
            status, body = 500, {"error": repr(exc)}
        payload = json.dumps(body).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
            + payload
        )
        try:
            await writer.drain()
        finally:
            writer.close()

    async def route(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if path == "/readyz":
            return (200, {"status": "ready"}) if await self.ready() else (503, {"status": "no"})
        if path == "/env":
            keys = (
                *("INSTANCE_ID", "DATABASE_URL", "NATS_URL", "NATS_STREAM_REPLICAS"),
                *("DB_SCHEMA", "LOG_FORMAT", "HOST"),
            )
            return 200, {k: os.environ.get(k) for k in keys}
        if path == "/verify":
            ok = await self.verify(query.get("password", [""])[0])
            return (200 if ok else 401), {"ok": ok}
        service = self.instance.rsplit("-", 1)[0]
        if path == f"/v1/{service}/jwks.json":
            return 200, {"keys": []}
        if path == "/openapi.json":
            exposed = {"x-mosaic-gateway": {"api_key": "off"}, "responses": {"200": {}}}
            return 200, {
                "openapi": "3.1.0",
                "info": {"title": service, "version": "0.0.1"},
                "paths": {f"/v1/{service}/jwks.json": {"get": exposed}},
            }
        return 404, {"error": "not found"}


async def serve(host: str, port: int, instance: str) -> int:
    app = App(instance)
    await app.start(f"http://{host}:{port}")
    server = await asyncio.start_server(app.handle, host, port)
    stop = asyncio.Event()
    if os.environ.get("FAKE_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    log("serving", port=port, never_ready=os.environ.get("FAKE_NEVER_READY") == "1")
    await stop.wait()
    server.close()
    await server.wait_closed()
    # Drained, as the real services do: with NATS frozen this hangs, as theirs does.
    await app.nc.drain()
    assert app.db is not None
    await app.db.close()
    log("stopped")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate")
    commands.add_parser("seed")
    srv = commands.add_parser("serve")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--instance-id", required=True)
    args = parser.parse_args()
    if args.command == "migrate":
        return asyncio.run(migrate())
    if args.command == "seed":
        return asyncio.run(seed())
    return asyncio.run(serve(args.host, args.port, args.instance_id))


if __name__ == "__main__":
    sys.exit(main())
