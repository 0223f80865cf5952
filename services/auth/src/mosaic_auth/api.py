"""HTTP routes of the auth service (transport only: parse, call the service, shape the answer)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import AnyHttpUrl, EmailStr, Field, StringConstraints

from mosaic_auth.service import AuthService, ClientInfo
from mosaic_auth.settings import AuthSettings
from mosaic_kit.fastapi.auth import current_principal, require_roles
from mosaic_kit.fastapi.gateway import through_gateway
from mosaic_kit.fastapi.idempotency import IdempotencyGuard
from mosaic_kit.fastapi.parts import Part
from mosaic_kit.gateway_policy import JSON_BODY
from mosaic_kit.openapi import (
    CURSOR_PROBLEMS,
    IDEMPOTENCY_PROBLEMS,
    ROLE_PROBLEMS,
    TOKEN_PROBLEMS,
    route_responses,
)
from mosaic_kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from mosaic_kit.tokens import Principal
from mosaic_kit.types import RequestBody, ResponseBody, Text

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=200)]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128)]
PicUrl = Annotated[AnyHttpUrl, Field(max_length=2000)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


class SignupBody(RequestBody):
    email: EmailStr = Field(max_length=320)
    password: Password
    name: Name
    profile_pic_url: PicUrl | None = None


class SigninBody(RequestBody):
    email: Annotated[str, StringConstraints(min_length=1, max_length=320)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class RefreshBody(RequestBody):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class ProfilePatch(RequestBody):
    name: Name | None = None
    profile_pic_url: PicUrl | None = None


class PasswordChange(RequestBody):
    current_password: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    new_password: Password


class RolesBody(RequestBody):
    roles: Annotated[list[Annotated[str, StringConstraints(max_length=32)]], Field(max_length=16)]


ScopeName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Audience = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")
]


class ClientBody(RequestBody):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    scopes: Annotated[
        list[ScopeName],
        Field(
            min_length=1, max_length=16, description="Among `blogs:read`, `recommendations:read`."
        ),
    ]
    audience: Annotated[
        list[Audience] | None,
        Field(
            max_length=8,
            description="Audiences added to the platform's (`mosaic`) in the `aud` of its tokens.",
        ),
    ] = None


class ApiKeyBody(RequestBody):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    comment: Annotated[str, StringConstraints(max_length=2000)] | None = None


# --- answers: documentation only (the handlers build the views in models.py; the contract
# fuzzing in tests/contract checks the real answers against these) ---------------------------


class PublicProfile(ResponseBody):
    id: uuid.UUID
    name: str
    profile_pic_url: str | None


class PrivateProfile(PublicProfile):
    email: str
    roles: list[str] = Field(description="Sorted.")
    created_at: datetime


class AdminProfile(PrivateProfile):
    disabled: bool


class Tokens(ResponseBody):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Seconds the access token lives.")


class SignedIn(ResponseBody):
    user: PrivateProfile
    tokens: Tokens


class Refreshed(ResponseBody):
    tokens: Tokens


class Jwk(ResponseBody):
    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str
    kid: str
    use: Literal["sig"]
    alg: Literal["EdDSA"]


class Jwks(ResponseBody):
    keys: list[Jwk]


class ApiKeyView(ResponseBody):
    id: uuid.UUID
    name: str
    comment: str | None
    prefix: str = Field(description="The key's first characters, to recognise it.")
    created_at: datetime
    revoked: bool


class CreatedApiKey(ApiKeyView):
    key: str | None = Field(description="Shown once; null in an idempotent replay.")


class ClientSecretView(ResponseBody):
    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime | None = Field(description="When a token was last issued with it.")


class ClientView(ResponseBody):
    client_id: uuid.UUID
    name: str
    scopes: list[str] = Field(description="Sorted.")
    audience: list[str]
    enabled: bool
    created_at: datetime
    secrets: list[ClientSecretView] = Field(
        description="One, or two during a rotation; oldest first."
    )


class CreatedClient(ClientView):
    client_secret: str | None = Field(description="Shown once; null in an idempotent replay.")


class CreatedClientSecret(ClientSecretView):
    client_secret: str = Field(description="Shown once.")


class ClientsPage(ResponseBody):
    items: list[ClientView]
    next_cursor: str | None


class UsersPage(ResponseBody):
    items: list[AdminProfile]
    next_cursor: str | None


class ApiKeysPage(ResponseBody):
    items: list[ApiKeyView]
    next_cursor: str | None


SERVICE: Part[AuthService] = Part("the auth service")
SETTINGS: Part[AuthSettings] = Part("the auth settings")

Service = Annotated[AuthService, Depends(SERVICE)]
Settings = Annotated[AuthSettings, Depends(SETTINGS)]


async def client_info(
    request: Request,
    settings: Settings,
    user_agent: Annotated[
        str | None, Header(description="Recorded with the session it opens.")
    ] = None,
) -> ClientInfo:
    address = request.client.host if request.client else None
    if settings.auth_trust_forwarded_for:
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded:
            # The nearest proxy appends the address it saw; that is the one a client can't forge.
            address = forwarded.split(",")[-1].strip() or address
    return ClientInfo(address=address, user_agent=user_agent)


async def active_principal(
    svc: Service, principal: Annotated[Principal, Depends(current_principal)]
) -> Principal:
    await svc.ensure_active_session(principal)
    return principal


async def active_admin(
    svc: Service, principal: Annotated[Principal, Depends(require_roles("ADMIN"))]
) -> Principal:
    await svc.ensure_active_session(principal)
    return principal


Me = Annotated[Principal, Depends(active_principal)]
Admin = Annotated[Principal, Depends(active_admin)]
Client = Annotated[ClientInfo, Depends(client_info)]

router = APIRouter(prefix="/v1")

# Sign-in is what a password-guessing client hammers: a budget per client address (per gateway
# worker), far above what a person or the end-to-end tests use; this service's own throttle (per
# account and per address, in its database) is what bounds the guesses.
CREDENTIALS_RATE_LIMIT: dict[str, Any] = {"requests": 120, "per": "1m", "by": "address"}
# Sign-up answers 409 auth.email_taken for a registered address (the API contract), which makes
# it an oracle of who has an account. One budget per client address for the whole cluster
# (every gateway worker and replica counts in the shared store), small for enumeration, ample for
# people (a class signing up behind one NAT included).
SIGNUP_RATE_LIMIT: dict[str, Any] = {"requests": 30, "per": "10m", "by": "address", "shared": True}


USER_NOT_FOUND = {404: "auth.user_not_found"}
SELF_LOCKOUT = {409: "auth.self_lockout"}
SIGNIN_REFUSED = {
    401: "auth.bad_credentials",
    403: "auth.user_disabled",
    429: "auth.too_many_attempts",
}


@router.post(
    "/auth/signup",
    openapi_extra=through_gateway(body=JSON_BODY, rate_limit=SIGNUP_RATE_LIMIT),
    status_code=201,
    tags=["auth"],
    summary="Create an account",
    # A replay of an Idempotency-Key signs in again, with sign-in's answers.
    responses=route_responses(
        {409: "auth.email_taken"},
        IDEMPOTENCY_PROBLEMS,
        SIGNIN_REFUSED,
        answer=SignedIn,
        status=201,
    ),
)
async def signup(
    body: SignupBody, svc: Service, client: Client, idem: IdempotencyGuard
) -> Response:
    pic = str(body.profile_pic_url) if body.profile_pic_url else None

    async def create() -> dict[str, Any]:
        user, tokens = await svc.signup(body.email, body.password, body.name, pic, client)
        return {"user": user.private_view(), "tokens": tokens.to_json()}

    async def sign_in_again(first: dict[str, Any]) -> dict[str, Any]:
        # Tokens are not stored for replays; the repeated body holds the password, so a replay
        # is a sign-in and gets a session of its own.
        user, tokens = await svc.signin(body.email, body.password, client)
        return {"user": user.private_view(), "tokens": tokens.to_json()}

    # The password stays out of the stored request hash (a fast hash of it would be a leak);
    # a replay still proves it, by signing in with it.
    return await idem.run(
        body.model_dump(mode="json", exclude={"password"}),
        create,
        secret_fields=("tokens",),
        on_replay=sign_in_again,
    )


@router.post(
    "/auth/signin",
    openapi_extra=through_gateway(body=JSON_BODY, rate_limit=CREDENTIALS_RATE_LIMIT),
    tags=["auth"],
    summary="Sign in with e-mail and password",
    responses=route_responses(SIGNIN_REFUSED, answer=SignedIn),
)
async def signin(body: SigninBody, svc: Service, client: Client) -> dict[str, Any]:
    user, tokens = await svc.signin(body.email, body.password, client)
    return {"user": user.private_view(), "tokens": tokens.to_json()}


@router.post(
    "/auth/refresh",
    openapi_extra=through_gateway(body=JSON_BODY),
    tags=["auth"],
    summary="Trade a refresh token for new tokens",
    responses=route_responses(
        {401: ("auth.refresh_invalid", "auth.refresh_reused")}, answer=Refreshed
    ),
)
async def refresh(body: RefreshBody, svc: Service) -> dict[str, Any]:
    tokens = await svc.refresh(body.refresh_token)
    return {"tokens": tokens.to_json()}


@router.post(
    "/auth/signout",
    openapi_extra=through_gateway(),
    status_code=204,
    tags=["auth"],
    summary="End this session",
    responses=route_responses(TOKEN_PROBLEMS),
)
async def signout(svc: Service, me: Me) -> Response:
    await svc.signout(me)
    return Response(status_code=204)


@router.get(
    "/auth/jwks.json",
    openapi_extra=through_gateway(api_key=False),
    tags=["auth"],
    summary="Public keys that verify access tokens",
    responses=route_responses(answer=Jwks),
)
async def jwks(svc: Service, response: Response) -> dict[str, Any]:
    response.headers["Cache-Control"] = "public, max-age=300"
    return await svc.jwks()


@router.get(
    "/users/me",
    openapi_extra=through_gateway(),
    tags=["users"],
    summary="My private profile",
    responses=route_responses(TOKEN_PROBLEMS, answer=PrivateProfile),
)
async def get_me(
    svc: Service, principal: Annotated[Principal, Depends(current_principal)]
) -> dict[str, object]:
    # svc.me checks the session itself, in the same query that loads the profile.
    return (await svc.me(principal)).private_view()


@router.patch(
    "/users/me",
    openapi_extra=through_gateway(body=JSON_BODY),
    tags=["users"],
    summary="Change my name or picture",
    responses=route_responses(TOKEN_PROBLEMS, answer=PrivateProfile),
)
async def patch_me(body: ProfilePatch, svc: Service, me: Me) -> dict[str, object]:
    changes: dict[str, Any] = {}
    if "name" in body.model_fields_set and body.name is not None:
        changes["name"] = body.name
    if "profile_pic_url" in body.model_fields_set:
        changes["profile_pic_url"] = str(body.profile_pic_url) if body.profile_pic_url else None
    return (await svc.update_me(me, changes)).private_view()


@router.put(
    "/users/me/password",
    openapi_extra=through_gateway(body=JSON_BODY),
    status_code=204,
    tags=["users"],
    summary="Change my password (signs out my other sessions)",
    responses=route_responses(TOKEN_PROBLEMS, {403: "auth.bad_credentials"}),
)
async def change_password(body: PasswordChange, svc: Service, me: Me) -> Response:
    await svc.change_password(me, body.current_password, body.new_password)
    return Response(status_code=204)


@router.get(
    "/users",
    openapi_extra=through_gateway(),
    tags=["admin"],
    summary="List users (ADMIN)",
    responses=route_responses(ROLE_PROBLEMS, CURSOR_PROBLEMS, answer=UsersPage),
)
async def list_users(
    svc: Service,
    _admin: Admin,
    q: Annotated[Text | None, Query(max_length=200)] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Annotated[Text | None, Query(max_length=500)] = None,
) -> dict[str, Any]:
    users, next_cursor = await svc.list_users(q, limit, cursor)
    return {"items": [u.admin_view() for u in users], "nextCursor": next_cursor}


@router.get(
    "/users/{user_id}",
    openapi_extra=through_gateway(),
    tags=["users"],
    summary="A user's public profile",
    responses=route_responses(USER_NOT_FOUND, answer=PublicProfile),
)
async def get_user(user_id: uuid.UUID, svc: Service) -> dict[str, object]:
    return (await svc.public_profile(user_id)).public_view()


@router.put(
    "/users/{user_id}/roles",
    openapi_extra=through_gateway(body=JSON_BODY),
    tags=["admin"],
    summary="Set a user's roles (ADMIN)",
    responses=route_responses(ROLE_PROBLEMS, USER_NOT_FOUND, SELF_LOCKOUT, answer=AdminProfile),
)
async def put_roles(
    user_id: uuid.UUID, body: RolesBody, svc: Service, admin: Admin
) -> dict[str, object]:
    return (await svc.set_roles(user_id, body.roles, acting=admin)).admin_view()


@router.post(
    "/users/{user_id}/disable",
    openapi_extra=through_gateway(),
    status_code=204,
    tags=["admin"],
    summary="Disable a user and end their sessions (ADMIN)",
    responses=route_responses(ROLE_PROBLEMS, USER_NOT_FOUND, SELF_LOCKOUT),
)
async def disable_user(user_id: uuid.UUID, svc: Service, admin: Admin) -> Response:
    await svc.set_disabled(user_id, True, acting=admin)
    return Response(status_code=204)


@router.post(
    "/users/{user_id}/enable",
    openapi_extra=through_gateway(),
    status_code=204,
    tags=["admin"],
    summary="Enable a disabled user (ADMIN)",
    responses=route_responses(ROLE_PROBLEMS, USER_NOT_FOUND),
)
async def enable_user(user_id: uuid.UUID, svc: Service, _admin: Admin) -> Response:
    await svc.set_disabled(user_id, False)
    return Response(status_code=204)


@router.post(
    "/api-keys",
    openapi_extra=through_gateway(body=JSON_BODY),
    status_code=201,
    tags=["api-keys"],
    summary="Create an API key (ADMIN); the key is shown only here",
    responses=route_responses(
        ROLE_PROBLEMS, IDEMPOTENCY_PROBLEMS, answer=CreatedApiKey, status=201
    ),
)
async def create_api_key(
    body: ApiKeyBody, svc: Service, _admin: Admin, idem: IdempotencyGuard
) -> Response:
    async def create() -> dict[str, object]:
        record, key = await svc.create_api_key(body.name, body.comment)
        return {**record.view(), "key": key}

    async def without_key(first: dict[str, Any]) -> dict[str, Any]:
        # The key is shown once and never stored: a replay says what was created, without it.
        return {**first, "key": None}

    return await idem.run(
        body.model_dump(mode="json"), create, secret_fields=("key",), on_replay=without_key
    )


@router.get(
    "/api-keys",
    openapi_extra=through_gateway(),
    tags=["api-keys"],
    summary="List active API keys (ADMIN)",
    responses=route_responses(ROLE_PROBLEMS, CURSOR_PROBLEMS, answer=ApiKeysPage),
)
async def list_api_keys(
    svc: Service,
    _admin: Admin,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Annotated[Text | None, Query(max_length=500)] = None,
) -> dict[str, Any]:
    keys, next_cursor = await svc.list_api_keys(limit, cursor)
    return {"items": [k.view() for k in keys], "nextCursor": next_cursor}


@router.delete(
    "/api-keys/{key_id}",
    openapi_extra=through_gateway(),
    status_code=204,
    tags=["api-keys"],
    summary="Revoke an API key (ADMIN)",
    responses=route_responses(ROLE_PROBLEMS, {404: "auth.apikey_not_found"}),
)
async def revoke_api_key(key_id: uuid.UUID, svc: Service, _admin: Admin) -> Response:
    await svc.revoke_api_key(key_id)
    return Response(status_code=204)


# --- client applications (OAuth2 client credentials; the OAuth endpoints: oauth_api.py) -----

CLIENT_NOT_FOUND = {404: "auth.client_not_found"}


@router.post(
    "/clients",
    openapi_extra=through_gateway(body=JSON_BODY),
    status_code=201,
    tags=["clients"],
    summary="Register a client application (ADMIN); its secret is shown only here",
    responses=route_responses(
        ROLE_PROBLEMS, IDEMPOTENCY_PROBLEMS, answer=CreatedClient, status=201
    ),
)
async def create_client(
    body: ClientBody, svc: Service, _admin: Admin, idem: IdempotencyGuard
) -> Response:
    async def create() -> dict[str, object]:
        record, secret = await svc.clients.register_client(
            body.name, body.scopes, body.audience or []
        )
        return {**record.view(), "clientSecret": secret}

    async def without_secret(first: dict[str, Any]) -> dict[str, Any]:
        # The secret is shown once and never stored: a replay says what was created, without it.
        return {**first, "clientSecret": None}

    return await idem.run(
        body.model_dump(mode="json"),
        create,
        secret_fields=("clientSecret",),
        on_replay=without_secret,
    )


@router.get(
    "/clients",
    openapi_extra=through_gateway(),
    tags=["clients"],
    summary="List client applications (ADMIN); never a secret",
    responses=route_responses(ROLE_PROBLEMS, CURSOR_PROBLEMS, answer=ClientsPage),
)
async def list_clients(
    svc: Service,
    _admin: Admin,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Annotated[Text | None, Query(max_length=500)] = None,
) -> dict[str, Any]:
    found, next_cursor = await svc.clients.list_clients(limit, cursor)
    return {"items": [c.view() for c in found], "nextCursor": next_cursor}


@router.get(
    "/clients/{client_id}",
    openapi_extra=through_gateway(),
    tags=["clients"],
    summary="A client application (ADMIN)",
    responses=route_responses(ROLE_PROBLEMS, CLIENT_NOT_FOUND, answer=ClientView),
)
async def get_client(client_id: uuid.UUID, svc: Service, _admin: Admin) -> dict[str, object]:
    return (await svc.clients.client(client_id)).view()


@router.delete(
    "/clients/{client_id}",
    openapi_extra=through_gateway(),
    status_code=204,
    tags=["clients"],
    summary="Delete a client application and cut off its tokens (ADMIN)",
    responses=route_responses(ROLE_PROBLEMS, CLIENT_NOT_FOUND),
)
async def delete_client(client_id: uuid.UUID, svc: Service, _admin: Admin) -> Response:
    await svc.clients.delete_client(client_id)
    return Response(status_code=204)


@router.post(
    "/clients/{client_id}/disable",
    openapi_extra=through_gateway(),
    status_code=204,
    tags=["clients"],
    summary="Disable a client application: its tokens stop working (ADMIN)",
    responses=route_responses(ROLE_PROBLEMS, CLIENT_NOT_FOUND),
)
async def disable_client(client_id: uuid.UUID, svc: Service, _admin: Admin) -> Response:
    await svc.clients.set_client_enabled(client_id, False)
    return Response(status_code=204)


@router.post(
    "/clients/{client_id}/enable",
    openapi_extra=through_gateway(),
    status_code=204,
    tags=["clients"],
    summary="Enable a disabled client application; its old tokens stay refused (ADMIN)",
    responses=route_responses(ROLE_PROBLEMS, CLIENT_NOT_FOUND),
)
async def enable_client(client_id: uuid.UUID, svc: Service, _admin: Admin) -> Response:
    await svc.clients.set_client_enabled(client_id, True)
    return Response(status_code=204)


@router.post(
    "/clients/{client_id}/secrets",
    openapi_extra=through_gateway(),
    status_code=201,
    tags=["clients"],
    summary="Add a second secret, to rotate (ADMIN); shown only here",
    responses=route_responses(
        ROLE_PROBLEMS,
        CLIENT_NOT_FOUND,
        {409: "auth.client_secret_limit"},
        answer=CreatedClientSecret,
        status=201,
    ),
)
async def add_client_secret(client_id: uuid.UUID, svc: Service, _admin: Admin) -> dict[str, object]:
    record, secret = await svc.clients.add_client_secret(client_id)
    return {**record.view(), "clientSecret": secret}


@router.delete(
    "/clients/{client_id}/secrets/{secret_id}",
    openapi_extra=through_gateway(),
    status_code=204,
    tags=["clients"],
    summary="Delete a secret, ending a rotation (ADMIN); never the last one",
    responses=route_responses(
        ROLE_PROBLEMS,
        {404: ("auth.client_not_found", "auth.client_secret_not_found")},
        {409: "auth.client_last_secret"},
    ),
)
async def remove_client_secret(
    client_id: uuid.UUID, secret_id: uuid.UUID, svc: Service, _admin: Admin
) -> Response:
    await svc.clients.remove_client_secret(client_id, secret_id)
    return Response(status_code=204)
