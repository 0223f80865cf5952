"""Assembles the auth service: database, NATS, outbox relay, RPC endpoints, HTTP routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI

from mosaic_auth import __version__
from mosaic_auth.api import router
from mosaic_auth.passwords import Passwords
from mosaic_auth.rpc import endpoints
from mosaic_auth.service import AuthService
from mosaic_auth.settings import AuthSettings
from mosaic_kit.fastapi.app import create_app
from mosaic_kit.jwks import JwksCache
from mosaic_kit.nats import jetstream, rpc
from mosaic_kit.nats.connection import connect, readiness_check
from mosaic_kit.nats.relay import OutboxRelay
from mosaic_kit.nats.revocation import follow_revocations
from mosaic_kit.periodic import Periodic
from mosaic_kit.revocation import RevocationSet
from mosaic_kit.sql.db import Database
from mosaic_kit.tokens import TokenVerifier


class ServiceKeySource:
    """The auth service reads its own JWKS from its database: no network hop to itself."""

    def __init__(self, svc: AuthService) -> None:
        self._svc = svc

    async def fetch(self) -> dict[str, Any]:
        return await self._svc.jwks()


def build_service(settings: AuthSettings, db: Database, revocations: RevocationSet) -> AuthService:
    passwords = Passwords(
        settings.auth_argon2_time_cost,
        settings.auth_argon2_memory_kib,
        settings.auth_argon2_parallelism,
    )
    return AuthService(db, settings, passwords, revocations)


def create_auth_app(settings: AuthSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            db = Database.from_settings(settings)
            stack.push_async_callback(db.dispose)
            nc = await connect(settings.nats_url, name=f"auth/{settings.instance_id}")
            stack.push_async_callback(nc.drain)
            js = nc.jetstream()
            await jetstream.ensure_stream(js, "auth")

            revocations = RevocationSet()
            svc = build_service(settings, db, revocations)
            await svc.ensure_signing_key()
            jwks = JwksCache(ServiceKeySource(svc))
            stack.push_async_callback(jwks.aclose)
            app.state.auth_service = svc
            app.state.db = db
            app.state.token_verifier = TokenVerifier(
                jwks,
                revocations=revocations,
                issuer=settings.auth_issuer,
                audience=settings.auth_audience,
            )

            relay = OutboxRelay(db, js, service="auth")
            await relay.start()
            stack.push_async_callback(relay.stop)
            feed = await follow_revocations(
                js, revocations, since=timedelta(seconds=settings.auth_access_token_ttl + 60)
            )
            stack.push_async_callback(feed.stop)
            micro = await rpc.serve(
                nc,
                name="auth",
                version=__version__,
                description="Mosaic auth: user profiles, API key checks, signing keys",
                endpoints=endpoints(svc),
                metadata=rpc.discovery_metadata(settings),
            )
            stack.push_async_callback(micro.stop)

            housekeeping = Periodic("auth.prune", 600.0, svc.prune)
            housekeeping.start()
            stack.push_async_callback(housekeeping.stop)

            app.state.readiness = {"db": db.ping, "nats": readiness_check(nc)}
            yield

    return create_app(
        settings,
        title="Mosaic auth",
        description="Users, roles, sessions, tokens and API keys of the Mosaic platform.",
        version=__version__,
        routers=[router],
        lifespan=lifespan,
    )
