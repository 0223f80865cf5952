"""Fixtures: a migrated auth schema on the real PostgreSQL, the app running against real NATS."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from auth_support import bearer, make_settings
from fastapi import FastAPI

from mosaic_auth.api import SERVICE as AUTH_SERVICE
from mosaic_auth.app import create_auth_app
from mosaic_auth.service import AuthService
from mosaic_auth.settings import AuthSettings
from mosaic_kit.sql.migrations import upgrade_async


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
    svc: AuthService = AUTH_SERVICE.of(auth_app)
    return svc


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
