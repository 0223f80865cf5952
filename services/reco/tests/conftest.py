"""Fixtures: the reco app on a migrated schema of the real PostgreSQL, on the real NATS, its
tokens signed by a test issuer whose JWKS it reads over NATS as it reads auth's, and `Bus`: the
blog's and auth's events published as those services publish them (to their JetStream streams),
which the app's durable consumers apply."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from reco_support import Bus

from mosaic_devstack.issuer import TokenIssuer
from mosaic_kit.nats.connection import connect
from mosaic_kit.sql.migrations import upgrade_async
from mosaic_reco.app import RECO
from mosaic_reco.settings import RecoSettings


@pytest.fixture
async def settings(
    pg_url: str, nats_url: str, fresh_schema: str, token_issuer: TokenIssuer
) -> RecoSettings:
    tag = uuid.uuid4().hex[:10]
    values = RecoSettings(
        database_url=pg_url,
        nats_url=nats_url,
        db_schema=fresh_schema,
        log_format="json",
        reco_jwks_subject=token_issuer.jwks_subject,
        reco_blog_consumer=f"reco-blog-{tag}",
        reco_authors_consumer=f"reco-authors-{tag}",
    )
    await upgrade_async(values, "mosaic_reco")
    return values


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    nc = await connect(nats_url, "reco-test-bus")
    bus = Bus(nc)
    await bus.start()
    yield bus
    await nc.close()


@pytest.fixture
async def app(settings: RecoSettings, bus: Bus) -> AsyncIterator[Any]:
    application = RECO.app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://reco") as http:
        yield http
