"""Helpers shared by the auth tests (fixtures live in conftest.py)."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import httpx

from mosaic_auth.settings import AuthSettings

PASSWORD = "correct-horse-9"


def make_settings(pg_url: str, nats_url: str, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "database_url": pg_url,
        "nats_url": nats_url,
        "db_schema": f"auth_{uuid.uuid4().hex[:10]}",
        "instance_id": "auth-test",
        # Cheap hashes keep the suite fast; the algorithm (Argon2id) is the same.
        "auth_argon2_time_cost": 1,
        "auth_argon2_memory_kib": 8,
        "auth_argon2_parallelism": 1,
        "auth_trust_forwarded_for": True,
        "auth_signin_base_delay": 1.0,
        "auth_signing_key_secret": secrets.token_urlsafe(32),
        "log_format": "json",
    }
    values.update(overrides)
    return AuthSettings(**values)


def unique_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def signup(
    client: httpx.AsyncClient, email: str | None = None, name: str = "Test User"
) -> dict[str, Any]:
    response = await client.post(
        "/v1/auth/signup",
        json={"email": email or unique_email(), "password": PASSWORD, "name": name},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


TOKEN_URL = "/v1/oauth/token"


async def register_client(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    scopes: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A new client application (its `clientSecret` included), registered by `admin`."""
    body = {"name": f"app-{uuid.uuid4().hex[:8]}", "scopes": scopes or ["blogs:read"], **extra}
    response = await client.post("/v1/clients", json=body, headers=admin)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def address() -> str:
    """A client address of its own (X-Forwarded-For, which the test settings trust), so that
    one test's failed attempts never throttle another's."""
    return f"198.51.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


async def client_token(
    client: httpx.AsyncClient,
    client_id: str,
    secret: str,
    scope: str | None = None,
    *,
    at: str | None = None,
) -> httpx.Response:
    """`POST /v1/oauth/token` with client_secret_basic."""
    form = {"grant_type": "client_credentials"} | ({"scope": scope} if scope is not None else {})
    return await client.post(
        TOKEN_URL,
        data=form,
        auth=(client_id, secret),
        headers={"X-Forwarded-For": at or address()},
    )
