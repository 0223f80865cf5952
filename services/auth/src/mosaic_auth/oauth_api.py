"""The OAuth 2.0 endpoints of the auth service (transport only): token (RFC 6749 §4.4, client
credentials), revocation (RFC 7009), introspection (RFC 7662) and the server's metadata
(RFC 8414). The rules are `mosaic_auth.clients`.

These speak OAuth's own wire format, not the API's JSON: form-encoded requests, snake_case
answers, errors as RFC 6749 §5.2 `{"error", "error_description"}` with `Cache-Control: no-store`
(what OAuth client libraries parse), never problem+json. Only failures outside OAuth's scope (the
database unreachable: 503) stay problems.

At the gateway they need no API key: the application authenticates with its client credentials
(HTTP Basic or the body), as OAuth clients do everywhere.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote_plus

from fastapi import APIRouter, Depends, Request, Response, Security
from fastapi.openapi.models import HTTPBase
from fastapi.responses import JSONResponse
from fastapi.security.base import SecurityBase
from pydantic import BaseModel, Field

from mosaic_auth.api import Service, Settings, client_info
from mosaic_auth.clients import (
    SCOPES,
    OAuthError,
    invalid_client,
    invalid_request,
    unsupported_grant_type,
)
from mosaic_auth.service import ClientInfo
from mosaic_kit.fastapi.auth import TOKEN_VERIFIER
from mosaic_kit.fastapi.gateway import through_gateway
from mosaic_kit.gateway_policy import JSON_BODY
from mosaic_kit.openapi import route_responses

__all__ = ["metadata_router", "router"]

FORM = "application/x-www-form-urlencoded"
# A revocation or introspection request carries a token (at most 8 KiB, mosaic_kit.tokens):
# twice that is far more than any well-formed request here needs.
MAX_FORM_BYTES = 16 * 1024
MAX_FORM_FIELDS = 20
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
# Machines asking for a token every few minutes each: a budget per client address (per gateway
# worker) far above that; auth's own throttle (per client id and per address, in its database)
# is what bounds secret guessing.
OAUTH_RATE_LIMIT: dict[str, Any] = {"requests": 300, "per": "1m", "by": "address"}
# The client's `Authorization: Basic` must reach auth (the gateway forwards only what a route
# allows); no API key: the client credentials are the caller's identity here.
OAUTH_POLICY = through_gateway(
    api_key=False, body=JSON_BODY, headers=["authorization"], rate_limit=OAUTH_RATE_LIMIT
)

Origin = Annotated[ClientInfo, Depends(client_info)]


class ClientBasic(SecurityBase):
    """Documents `client_secret_basic` (OpenAPI `http`/`basic`) without reading the header:
    FastAPI's `HTTPBasic` would answer a malformed one with a problem, and these endpoints
    answer in RFC 6749 form (`_credentials` reads it)."""

    def __init__(self) -> None:
        self.model = HTTPBase(
            scheme="basic",
            description="client_secret_basic: the client id and secret, each form-urlencoded "
            "(RFC 6749 §2.3.1); or client_id and client_secret in the form instead",
        )
        self.scheme_name = "ClientBasic"

    async def __call__(self) -> None:
        return None


router = APIRouter(prefix="/v1/oauth", tags=["oauth"], dependencies=[Security(ClientBasic())])
# RFC 8414 §3: the metadata lives at the root, under /.well-known.
metadata_router = APIRouter(tags=["oauth"])


# --- documentation of the wire format (the handlers build the answers themselves) -----------


class OAuthErrorBody(BaseModel):
    """RFC 6749 §5.2 error (never problem+json on these endpoints)."""

    error: Literal[
        "invalid_request",
        "invalid_client",
        "invalid_scope",
        "unsupported_grant_type",
        "slow_down",
    ]
    error_description: str


class TokenAnswer(BaseModel):
    access_token: str = Field(description="An RFC 9068 JWT (typ at+jwt), signed like all tokens.")
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Seconds the token lives (at most 900).")
    scope: str = Field(description="The scopes granted, space-separated.")


class Introspection(BaseModel):
    """RFC 7662 §2.2: only `active` when the token is not the caller's live token."""

    active: bool
    client_id: str | None = None
    scope: str | None = None
    exp: int | None = None
    iat: int | None = None
    jti: str | None = None
    iss: str | None = None
    aud: list[str] | None = None
    token_type: Literal["Bearer"] | None = None


class AuthorizationServerMetadata(BaseModel):
    issuer: str
    token_endpoint: str
    revocation_endpoint: str
    introspection_endpoint: str
    jwks_uri: str
    grant_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]
    introspection_endpoint_auth_methods_supported: list[str]
    scopes_supported: list[str]
    response_types_supported: list[str]
    service_documentation: str


_ERROR = {"model": OAuthErrorBody}
_CHALLENGE = {
    "WWW-Authenticate": {"description": 'Basic realm="mosaic"', "schema": {"type": "string"}}
}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}},
}


def _oauth_responses(answer: type[BaseModel] | None, **extra: Any) -> dict[int | str, Any]:
    documented = route_responses(answer=answer)
    documented[400] = {**_ERROR, "description": "`invalid_request` (and as listed per endpoint)"}
    documented[401] = {
        **_ERROR,
        "description": "`invalid_client`: unknown client, wrong secret, disabled client, no or "
        "unsupported client authentication",
        "headers": _CHALLENGE,
    }
    documented[429] = {
        **_ERROR,
        "description": "`slow_down`: too many failed client authentications from this client id "
        "or address",
        "headers": _RETRY_AFTER,
    }
    documented.update(extra)
    return documented


def _form_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required}
    return {"requestBody": {"required": True, "content": {FORM: {"schema": schema}}}}


_CLIENT_FIELDS = {
    "client_id": {"type": "string", "description": "client_secret_post (else HTTP Basic)"},
    "client_secret": {"type": "string", "description": "client_secret_post (else HTTP Basic)"},
}
_TOKEN_FIELDS = {
    "token": {"type": "string"},
    "token_type_hint": {"type": "string", "description": "Ignored: access tokens only."},
    **_CLIENT_FIELDS,
}


# --- reading a request ------------------------------------------------------------------------


async def _form(request: Request) -> dict[str, str]:
    """The form's parameters; `invalid_request` for anything but one well-formed form.

    A parameter without a value counts as absent (RFC 6749 §3.1); one sent twice is refused
    (§3.2); unknown ones are ignored (§3.2).
    """
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != FORM:
        raise invalid_request(f"The body must be {FORM}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise invalid_request("The body is too large")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except ValueError:  # not UTF-8 (UnicodeDecodeError is one), or too many fields
        raise invalid_request("The body is not a valid form") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise invalid_request(f"The parameter {name} is repeated")
        if "\x00" in name or "\x00" in value:
            raise invalid_request("The body holds a NUL character")
        form[name] = value
    return {name: value for name, value in form.items() if value}


def _credentials(request: Request, form: dict[str, str]) -> tuple[str, str]:
    """(client id, secret) from HTTP Basic (`client_secret_basic`) or the body
    (`client_secret_post`); using both is `invalid_request`, neither `invalid_client`."""
    header = request.headers.get("authorization")
    body_id, body_secret = form.get("client_id"), form.get("client_secret")
    if header is None:
        if body_id is None or body_secret is None:
            raise invalid_client("Authenticate with HTTP Basic or client_id and client_secret")
        return body_id, body_secret
    if body_secret is not None:
        raise invalid_request("Use one client authentication method, not two")
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise invalid_client("Authenticate with HTTP Basic or client_id and client_secret")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        raw_id, colon, raw_secret = decoded.partition(":")
        # RFC 6749 §2.3.1: both are form-urlencoded before they are put in the header.
        client_id = unquote_plus(raw_id, errors="strict")
        secret = unquote_plus(raw_secret, errors="strict")
    except (binascii.Error, ValueError):
        raise invalid_client("The Basic credentials are malformed") from None
    if not colon or not client_id or "\x00" in client_id or "\x00" in secret:
        raise invalid_client("The Basic credentials are malformed")
    # §3.2.1 lets a client name itself in the body too; it must name the same client.
    if body_id is not None and body_id != client_id:
        raise invalid_request("client_id in the body is not the authenticated client")
    return client_id, secret


def _error(exc: OAuthError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers={**NO_STORE, **exc.headers})


# --- the endpoints ----------------------------------------------------------------------------


@router.post(
    "/token",
    openapi_extra={
        **OAUTH_POLICY,
        **_form_body(
            {
                "grant_type": {"type": "string", "description": "`client_credentials`"},
                "scope": {
                    "type": "string",
                    "description": "Space-separated; default: all the client's scopes.",
                },
                **_CLIENT_FIELDS,
            },
            ["grant_type"],
        ),
    },
    summary="Get an access token with client credentials (RFC 6749 §4.4)",
    description="Errors: `invalid_request`, `invalid_scope`, `unsupported_grant_type` (400), "
    "`invalid_client` (401), `slow_down` (429), all in RFC 6749 §5.2 form.",
    responses=_oauth_responses(TokenAnswer),
)
async def token(request: Request, svc: Service, origin: Origin) -> Response:
    try:
        form = await _form(request)
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise invalid_request("grant_type is required")
        if grant_type != "client_credentials":
            raise unsupported_grant_type("Only client_credentials is supported")
        client_id, secret = _credentials(request, form)
        caller = await svc.clients.authenticate(client_id, secret, origin.address)
        issued, scope = await svc.clients.issue_token(caller, form.get("scope"))
    except OAuthError as exc:
        return _error(exc)
    body = {
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": issued.expires_at - issued.issued_at,
        "scope": scope,
    }
    return JSONResponse(body, headers=NO_STORE)


@router.post(
    "/revoke",
    openapi_extra={**OAUTH_POLICY, **_form_body(_TOKEN_FIELDS, ["token"])},
    summary="Revoke one of my access tokens (RFC 7009)",
    description="200 for any well-formed request of an authenticated client, whatever the token "
    "(unknown, expired, another client's: nothing changes).",
    response_class=Response,
    responses=_oauth_responses(None, **{"200": {"description": "Revoked, or nothing to revoke"}}),
)
async def revoke(request: Request, svc: Service, origin: Origin) -> Response:
    try:
        form = await _form(request)
        client_id, secret = _credentials(request, form)
        caller = await svc.clients.authenticate(client_id, secret, origin.address)
        presented = form.get("token")
        if presented is None:
            raise invalid_request("token is required")
        await svc.clients.revoke_token(caller, presented, TOKEN_VERIFIER.of(request.app))
    except OAuthError as exc:
        return _error(exc)
    return Response(status_code=200, headers=NO_STORE)


@router.post(
    "/introspect",
    openapi_extra={**OAUTH_POLICY, **_form_body(_TOKEN_FIELDS, ["token"])},
    summary="What one of my access tokens says, if it is live (RFC 7662)",
    description='Client-authenticated. `{"active": false}` for an invalid, expired or revoked '
    "token, a token of another client or a user's.",
    responses=_oauth_responses(Introspection),
)
async def introspect(request: Request, svc: Service, origin: Origin) -> Response:
    try:
        form = await _form(request)
        client_id, secret = _credentials(request, form)
        caller = await svc.clients.authenticate(client_id, secret, origin.address)
        presented = form.get("token")
        if presented is None:
            raise invalid_request("token is required")
        answer = await svc.clients.introspect(caller, presented, TOKEN_VERIFIER.of(request.app))
    except OAuthError as exc:
        return _error(exc)
    return JSONResponse(answer, headers=NO_STORE)


@metadata_router.get(
    "/.well-known/oauth-authorization-server",
    openapi_extra=through_gateway(api_key=False),
    summary="The authorization server's metadata (RFC 8414)",
    responses=route_responses(answer=AuthorizationServerMetadata),
)
async def metadata(settings: Settings, response: Response) -> dict[str, Any]:
    base = settings.auth_public_url.rstrip("/")
    response.headers["Cache-Control"] = "public, max-age=300"
    return {
        # The `iss` of the tokens, which a client compares with this (RFC 8414 §3.3).
        "issuer": settings.auth_issuer,
        "token_endpoint": f"{base}/v1/oauth/token",
        "revocation_endpoint": f"{base}/v1/oauth/revoke",
        "introspection_endpoint": f"{base}/v1/oauth/introspect",
        "jwks_uri": f"{base}/v1/auth/jwks.json",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "scopes_supported": list(SCOPES),
        # No authorization endpoint: client credentials only.
        "response_types_supported": [],
        "service_documentation": f"{base}/docs",
    }
