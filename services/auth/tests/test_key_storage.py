"""Private signing keys at rest: encrypted with AUTH_SIGNING_KEY_SECRET, or refused without it.

The rows are read straight from PostgreSQL, and the service is run as the operator runs it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from auth_support import make_settings
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from mosaic_auth import keys
from mosaic_auth.service import AuthService, build_service
from mosaic_auth.settings import AuthSettings
from mosaic_devstack.embedded import free_port
from mosaic_kit.revocation import RevocationSet
from mosaic_kit.sql.db import Database
from mosaic_kit.sql.migrations import upgrade_async

BIN = Path(sys.executable).parent / "mosaic-auth"
REFUSAL = "AUTH_SIGNING_KEY_SECRET is not set"


def _env(pg_url: str, nats_url: str, schema: str, **extra: str) -> dict[str, str]:
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k not in {"AUTH_SIGNING_KEY_SECRET", "AUTH_ALLOW_PLAINTEXT_KEYS", "SECRETS_DIR"}
    }
    return {
        **inherited,
        "DATABASE_URL": pg_url,
        "NATS_URL": nats_url,
        "DB_SCHEMA": schema,
        "AUTH_ARGON2_TIME_COST": "1",
        "AUTH_ARGON2_MEMORY_KIB": "8",
        "AUTH_ARGON2_PARALLELISM": "1",
        "LOG_FORMAT": "json",
        **extra,
    }


async def _key_rows(pg_url: str, schema: str) -> dict[str, bytes]:
    conn = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
    try:
        rows = await conn.fetch(f'SELECT kid, private_pem FROM "{schema}".signing_keys')
    finally:
        await conn.close()
    return {r["kid"]: bytes(r["private_pem"]) for r in rows}


def _plaintext_forms(pair: keys.KeyPair) -> list[bytes]:
    """What a reader of the row must not find: the key as PEM, DER or its raw 32 bytes."""
    der = pair.private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    raw = pair.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return [keys.to_pem(pair, None), der, raw]


def _assert_encrypted(row: bytes, kid: str, secret: str) -> keys.KeyPair:
    assert keys.is_encrypted(row)
    assert b"BEGIN PRIVATE KEY" not in row
    with pytest.raises(TypeError):  # unreadable without the secret
        serialization.load_pem_private_key(row, password=None)
    pair = keys.from_pem(kid, row, secret)
    for plain in _plaintext_forms(pair):
        assert plain not in row
    return pair


async def test_the_running_service_stores_its_key_encrypted(
    service: AuthService, auth_settings: AuthSettings, pg_url: str
) -> None:
    secret = auth_settings.auth_signing_key_secret
    assert secret is not None
    active = await service.ensure_signing_key()
    rows = await _key_rows(pg_url, auth_settings.db_schema)
    pair = _assert_encrypted(rows[active.kid], active.kid, secret.get_secret_value())
    assert pair.public_jwk == active.public_jwk


async def test_without_a_secret_the_service_refuses_to_start_unless_plaintext_is_allowed(
    pg_url: str, nats_url: str
) -> None:
    settings = make_settings(pg_url, nats_url, auth_signing_key_secret=None)
    await upgrade_async(settings, "mosaic_auth")
    env = _env(pg_url, nats_url, settings.db_schema)
    port = free_port()
    serve = [str(BIN), "serve", "--port", str(port)]

    refused = await asyncio.create_subprocess_exec(
        *serve, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(refused.communicate(), 30)
    finally:
        if refused.returncode is None:  # it started after all
            refused.kill()
            await refused.wait()
    assert refused.returncode == 2, out + err
    assert REFUSAL.encode() in err
    assert b"AUTH_ALLOW_PLAINTEXT_KEYS=true" in err
    assert b"Traceback" not in err
    assert await _key_rows(pg_url, settings.db_schema) == {}

    allowed = {**env, "AUTH_ALLOW_PLAINTEXT_KEYS": "true"}
    proc = await asyncio.create_subprocess_exec(
        *serve, env=allowed, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            deadline = time.monotonic() + 60
            while True:
                assert proc.returncode is None, "exited with AUTH_ALLOW_PLAINTEXT_KEYS=true"
                try:
                    ready = await http.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                    if ready.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "not ready with AUTH_ALLOW_PLAINTEXT_KEYS=true"
                await asyncio.sleep(0.1)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0
    # What "allowed" means: the key sits in plaintext.
    assert [
        keys.is_encrypted(row) for row in (await _key_rows(pg_url, settings.db_schema)).values()
    ] == [False]


async def test_plaintext_keys_are_encrypted_in_place_once_a_secret_is_set(
    pg_url: str, nats_url: str
) -> None:
    base = make_settings(pg_url, nats_url, auth_signing_key_secret=None)
    await upgrade_async(base, "mosaic_auth")

    def configured(**changes: Any) -> AuthSettings:
        return base.model_copy(update=changes)

    with pytest.raises(keys.KeyStorageError, match=REFUSAL):
        build_service(base, Database.from_settings(base), RevocationSet())

    async def run(settings: AuthSettings, action: str) -> Any:
        db = Database.from_settings(settings)
        try:
            svc = build_service(settings, db, RevocationSet())
            return await getattr(svc, action)()
        finally:
            await db.dispose()

    plain = await run(configured(auth_allow_plaintext_keys=True), "ensure_signing_key")
    rows = await _key_rows(pg_url, base.db_schema)
    assert not keys.is_encrypted(rows[plain.kid])

    secret = secrets.token_urlsafe(32)
    with_secret = configured(auth_signing_key_secret=SecretStr(secret))
    active = await run(with_secret, "ensure_signing_key")
    assert active.kid == plain.kid  # the same key, now encrypted: issued tokens stay valid
    rows = await _key_rows(pg_url, base.db_schema)
    assert list(rows) == [plain.kid]
    assert _assert_encrypted(rows[plain.kid], plain.kid, secret).public_jwk == plain.public_jwk

    new_kid = await run(with_secret, "rotate_keys")
    rows = await _key_rows(pg_url, base.db_schema)
    assert set(rows) == {plain.kid, new_kid}
    for kid, pem in rows.items():
        _assert_encrypted(pem, kid, secret)

    # Another secret, or none, cannot read them: refused with the reason, nothing changed.
    for other, reason in (
        (configured(auth_signing_key_secret=SecretStr("another")), "cannot be decrypted"),
        (configured(auth_allow_plaintext_keys=True), "is stored encrypted"),
    ):
        with pytest.raises(keys.KeyStorageError, match=reason):
            await run(other, "ensure_signing_key")
    assert await _key_rows(pg_url, base.db_schema) == rows
