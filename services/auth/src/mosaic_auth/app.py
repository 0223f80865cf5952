"""The auth service on the kit's chassis: what auth adds to it.

Auth verifies its own tokens from its own database (no network hop to itself), answers three NATS
endpoints, and prunes expired sessions and throttle rows.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import FastAPI

from mosaic_auth import __version__, api, oauth_api
from mosaic_auth.rpc import endpoints
from mosaic_auth.service import AuthService, build_service
from mosaic_auth.settings import AuthSettings
from mosaic_kit.chassis.assembly import Assembly, ServiceDefinition
from mosaic_kit.contracts import auth as auth_contracts


class ServiceKeySource:
    """The auth service reads its own JWKS from its database: no network hop to itself."""

    def __init__(self, svc: AuthService) -> None:
        self._svc = svc

    async def fetch(self) -> dict[str, Any]:
        return await self._svc.jwks()


async def assemble(kit: Assembly[AuthSettings]) -> None:
    settings = kit.settings
    svc = build_service(settings, kit.db, kit.revocations)
    await svc.ensure_signing_key()
    kit.provide(api.SERVICE, svc)
    kit.provide(api.SETTINGS, settings)
    kit.verify_tokens(
        ServiceKeySource(svc),
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        # Replayed at start: as far back as the longer-lived of user and client tokens.
        revocation_window=timedelta(
            seconds=max(settings.auth_access_token_ttl, settings.auth_client_token_ttl) + 60
        ),
    )
    kit.serve(endpoints(svc))
    kit.every("auth.prune", 600.0, svc.prune)


AUTH = ServiceDefinition(
    name="auth",
    package="mosaic_auth",
    settings=AuthSettings,
    title="Mosaic auth",
    description="Users, roles, sessions, tokens, API keys and client applications (OAuth2 "
    "client credentials) of the Mosaic platform.",
    rpc_description="Mosaic auth: user profiles, API key checks, signing keys",
    version=__version__,
    routers=[api.router, oauth_api.router, oauth_api.metadata_router],
    assemble=assemble,
    publishes=auth_contracts.AUTH_EVENTS,
)


def create_auth_app(settings: AuthSettings) -> FastAPI:
    return AUTH.app(settings)
