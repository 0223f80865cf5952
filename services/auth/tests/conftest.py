"""Fixtures: a migrated auth schema on the real PostgreSQL, the app running against real NATS."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from mosaic_auth.app import create_auth_app
from mosaic_auth.service import AuthService
from mosaic_auth.settings import AuthSettings
from mosaic_kit.migrations import upgrade_async

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
        "log_format": "json",
    }
    values.update(overrides)
    return AuthSettings(**values)


@pytest.fixture(scope="module")
def auth_settings(pg_url: str, nats_url: str) -> AuthSettings:
    return make_settings(pg_url, nats_url)


@pytest_asyncio.fixture(scope="module")
async def auth_app(auth_settings: AuthSettings) -> AsyncIterator[FastAPI]:
    await upgrade_async(auth_settings, "mosaic_auth")
    app = create_auth_app(auth_settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest_asyncio.fixture(scope="module")
async def client(auth_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=auth_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as c:
        yield c


@pytest.fixture(scope="module")
def service(auth_app: FastAPI) -> AuthService:
    svc: AuthService = auth_app.state.auth_service
    return svc


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


@pytest_asyncio.fixture(scope="module")
async def admin(client: httpx.AsyncClient, service: AuthService) -> dict[str, str]:
    """Headers of a signed-in ADMIN, created by the real seed routine."""
    seeded = await service.seed()
    creds = seeded["admin"]
    assert creds is not None
    response = await client.post(
        "/v1/auth/signin", json={"email": creds["email"], "password": creds["password"]}
    )
    assert response.status_code == 200, response.text
    return bearer(response.json()["tokens"]["accessToken"])
