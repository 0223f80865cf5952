"""Bearer-token authentication for every Mosaic service.

Access tokens are EdDSA JWTs issued by the auth service and verified locally against its JWKS
(`mosaic_kit.jwks`). A verified token is cached by its SHA-256 until it expires, so the request
hot path is one hash, one dict lookup and the revocation check (`mosaic_kit.revocation`), which
runs on every call so that a sign-out takes effect on tokens verified before it.

The verifier itself lives in `mosaic_kit.tokens` (no framework there, so the gateway uses it too).
FastAPI routes depend on `current_principal`, `optional_principal` or `require_roles(...)`; they
use the verifier provided to the app as `TOKEN_VERIFIER` (the chassis does it at start-up).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from mosaic_kit.fastapi.parts import Part
from mosaic_kit.fastapi.routes import api_routes, dependency_calls
from mosaic_kit.problem import forbidden
from mosaic_kit.tokens import Principal, TokenVerifier, token_invalid, token_missing

__all__ = [
    "BEARER_SCHEME",
    "BEARER_SCHEME_NAME",
    "TOKEN_VERIFIER",
    "RequireRoles",
    "current_principal",
    "document_bearer",
    "optional_principal",
    "require_roles",
]

TOKEN_VERIFIER: Part[TokenVerifier] = Part("the token verifier")

# The one security scheme of a service's document ("Authorize" in the docs). Written into the
# document by `document_bearer` rather than declared as a `Security(HTTPBearer())` parameter,
# which would run on every request to parse the header that `_bearer_token` parses anyway (and
# could not tell a wrong scheme from a missing header).
BEARER_SCHEME_NAME = "HTTPBearer"
BEARER_SCHEME: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "description": "An access token issued by auth",
}


def _bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise token_invalid("The Authorization header is not a bearer token")
    return token


def _verifier(request: Request) -> TokenVerifier:
    return TOKEN_VERIFIER.of(request.app)


async def current_principal(request: Request) -> Principal:
    """The authenticated caller; 401 when the bearer token is missing or not acceptable."""
    token = _bearer_token(request)
    if token is None:
        raise token_missing()
    principal = await _verifier(request).verify(token)
    # Lets access logs and handlers further down see who called without re-verifying.
    request.state.principal = principal
    return principal


async def optional_principal(request: Request) -> Principal | None:
    """The caller if a token was sent, None if none was; a bad token is still a 401."""
    if _bearer_token(request) is None:
        return None
    return await current_principal(request)


class RequireRoles:
    """A dependency admitting callers holding ANY of `roles` (403 `auth.forbidden` otherwise).

    No role implies another: a route open to admins too must list "ADMIN" explicitly. A class, not
    a closure, so that what a route requires can be read back (`mosaic_kit.fastapi.gateway`
    publishes it as the route's gateway policy).
    """

    def __init__(self, *roles: str) -> None:
        if not roles:
            raise ValueError("require_roles needs at least one role")
        self.roles = roles
        self._wanted = frozenset(roles)

    async def __call__(
        self, principal: Annotated[Principal, Depends(current_principal)]
    ) -> Principal:
        if principal.roles.isdisjoint(self._wanted):
            raise forbidden(
                "auth.forbidden", "This requires one of the roles: " + ", ".join(self.roles)
            )
        return principal


def require_roles(*roles: str) -> RequireRoles:
    """A dependency admitting callers holding ANY of `roles`; see `RequireRoles`."""
    return RequireRoles(*roles)


def document_bearer(app: FastAPI, document: dict[str, Any]) -> dict[str, Any]:
    """`document` with `BEARER_SCHEME` required by every operation that reads a token."""
    readers = (current_principal, optional_principal)
    used = False
    for route in api_routes(app):
        if not any(call in readers for call in dependency_calls(route)):
            continue
        item = document.get("paths", {}).get(route.path_format, {})
        for method in route.methods or ():
            operation = item.get(method.lower())
            if operation is not None:
                operation["security"] = [{BEARER_SCHEME_NAME: []}]
                used = True
    if used:
        schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER_SCHEME_NAME] = dict(BEARER_SCHEME)
    return document
