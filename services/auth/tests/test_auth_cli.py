"""`mosaic-auth` as an operator runs it: migrate, seed (idempotent), rotate-keys, version."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import httpx
import jwt
import orjson
import pytest
from auth_support import PASSWORD, bearer, make_settings, signup

from mosaic_auth.api import SERVICE as AUTH_SERVICE
from mosaic_auth.app import create_auth_app
from mosaic_kit.sql.migrations import upgrade_async

BIN = Path(sys.executable).parent / "mosaic-auth"


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def cli_env(pg_url: str, nats_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": pg_url,
        "NATS_URL": nats_url,
        "DB_SCHEMA": f"auth_cli_{uuid.uuid4().hex[:8]}",
        "AUTH_ARGON2_TIME_COST": "1",
        "AUTH_ARGON2_MEMORY_KIB": "8",
        "AUTH_ARGON2_PARALLELISM": "1",
        "AUTH_SIGNING_KEY_SECRET": secrets.token_urlsafe(32),
        "LOG_FORMAT": "json",
    }


async def test_migrate_then_seed_once_then_nothing_more(
    cli_env: dict[str, str], pg_url: str
) -> None:
    migrated = run(["migrate"], cli_env)
    assert migrated.returncode == 0, migrated.stderr
    again = run(["migrate"], cli_env)  # idempotent
    assert again.returncode == 0, again.stderr
    conn = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
    try:
        schema = cli_env["DB_SCHEMA"]
        tables = {
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
            )
        }
        assert {
            "users",
            "sessions",
            "refresh_tokens",
            "api_keys",
            "signing_keys",
            "outbox",
            "processed_events",
            "roles",
            "alembic_version",
        } <= tables
        roles = {r["code"] for r in await conn.fetch(f'SELECT code FROM "{schema}".roles')}
        assert roles == {"LEARNER", "AUTHOR", "EDITOR", "ADMIN"}
    finally:
        await conn.close()

    first = run(["seed"], cli_env)
    assert first.returncode == 0, first.stderr
    seeded = orjson.loads(first.stdout)
    assert seeded["admin"]["email"] == "admin@mosaic.local"
    assert len(seeded["admin"]["password"]) >= 20
    assert seeded["apiKey"]["key"].startswith("mk_")
    # Generated secrets are not written to the logs.
    assert seeded["admin"]["password"] not in first.stderr
    assert seeded["apiKey"]["key"] not in first.stderr
    second = run(["seed"], cli_env)
    assert orjson.loads(second.stdout) == {"admin": None, "apiKey": None}


async def test_rotate_keys_keeps_issued_tokens_valid(pg_url: str, nats_url: str) -> None:
    settings = make_settings(pg_url, nats_url)
    key_secret = settings.auth_signing_key_secret
    assert key_secret is not None
    await upgrade_async(settings, "mosaic_auth")
    app = create_auth_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as client:
            body = await signup(client)
            old_token = body["tokens"]["accessToken"]
            old_kid = jwt.get_unverified_header(old_token)["kid"]
            env = {
                "DATABASE_URL": pg_url,
                "NATS_URL": nats_url,
                "DB_SCHEMA": settings.db_schema,
                "AUTH_SIGNING_KEY_SECRET": key_secret.get_secret_value(),
                "LOG_FORMAT": "json",
            }
            rotated = run(["rotate-keys"], env)
            assert rotated.returncode == 0, rotated.stderr
            new_kid = orjson.loads(rotated.stdout)["kid"]
            assert new_kid != old_kid
            published = {k["kid"] for k in (await client.get("/v1/auth/jwks.json")).json()["keys"]}
            assert {old_kid, new_kid} <= published
            assert (await client.get("/v1/users/me", headers=bearer(old_token))).status_code == 200
            AUTH_SERVICE.of(app).signer.forget_key()  # as after the re-read interval
            signin = await client.post(
                "/v1/auth/signin", json={"email": body["user"]["email"], "password": PASSWORD}
            )
            new_token = signin.json()["tokens"]["accessToken"]
            assert jwt.get_unverified_header(new_token)["kid"] == new_kid
            assert (await client.get("/v1/users/me", headers=bearer(new_token))).status_code == 200


def test_version_and_openapi(cli_env: dict[str, str]) -> None:
    version = run(["version", "--json"], cli_env)
    assert version.returncode == 0, version.stderr
    info = orjson.loads(version.stdout)
    assert info["version"] == "0.1.0"
    assert info["commit"]
    openapi = run(["openapi"], cli_env)
    assert openapi.returncode == 0, openapi.stderr
    paths = orjson.loads(openapi.stdout)["paths"]
    assert {"/v1/auth/signup", "/v1/users/me", "/v1/api-keys"} <= set(paths)


def test_flags_override_environment(cli_env: dict[str, str]) -> None:
    bad = run(["migrate", "--database-url", "postgresql://nobody@127.0.0.1:1/none"], cli_env)
    assert bad.returncode != 0
