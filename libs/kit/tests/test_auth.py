"""TokenVerifier and the FastAPI auth dependencies, with real Ed25519 keys and real JWTs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import Depends, FastAPI

from mosaic_kit.events import new_event
from mosaic_kit.fastapi.auth import (
    BEARER_SCHEME,
    TOKEN_VERIFIER,
    current_principal,
    document_bearer,
    optional_principal,
    require_roles,
)
from mosaic_kit.fastapi.errors import install_problem_handlers
from mosaic_kit.jwks import JwksCache, StaticKeySource
from mosaic_kit.problem import Problem
from mosaic_kit.revocation import RevocationSet
from mosaic_kit.tokens import Principal, TokenVerifier

NOW = 1_750_000_000


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Key:
    kid: str
    private: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public_raw(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def jwk(self) -> dict[str, Any]:
        x = b64url(self.public_raw)
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": x,
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }


def claims(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sub": str(uuid.UUID(int=1)),
        "sid": "session-1",
        "roles": ["USER"],
        "iat": NOW,
        "exp": NOW + 900,
        "iss": "mosaic-auth",
        "aud": "mosaic",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def mint(key: Key, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key.private, algorithm="EdDSA", headers={"kid": key.kid})


def hand_made(header: dict[str, Any], body: dict[str, Any], sign: bytes | None = None) -> str:
    """A compact JWS built byte by byte, for tokens PyJWT rightly refuses to produce."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(body).encode())
    signature = b"" if sign is None else hmac.new(sign, signing_input.encode(), "sha256").digest()
    return signing_input + "." + b64url(signature)


@dataclass
class Env:
    key: Key
    source: StaticKeySource
    jwks: JwksCache
    revocations: RevocationSet
    verifier: TokenVerifier
    clock: Clock


def make_env(*, cache_size: int = 100, leeway: float = 5.0) -> Env:
    key = Key("k1")
    clock = Clock()
    source = StaticKeySource({"keys": [key.jwk]})
    jwks = JwksCache(source, min_refresh_interval=30.0, clock=clock)
    revocations = RevocationSet(clock=clock)
    verifier = TokenVerifier(
        jwks, revocations=revocations, leeway=leeway, cache_size=cache_size, clock=clock
    )
    return Env(key, source, jwks, revocations, verifier, clock)


@pytest.fixture
def env() -> Env:
    return make_env()


async def rejected(verifier: TokenVerifier, token: str | None) -> Problem:
    with pytest.raises(Problem) as info:
        await verifier.verify(token)
    problem = info.value
    assert problem.status == 401
    assert problem.headers["WWW-Authenticate"] == "Bearer"
    return problem


async def test_good_token_gives_the_principal(env: Env) -> None:
    token = mint(env.key, roles=["USER", "EDITOR"], sid="s-42")
    principal = await env.verifier.verify(token)
    assert principal == Principal(
        user_id=str(uuid.UUID(int=1)),
        roles=frozenset({"USER", "EDITOR"}),
        session_id="s-42",
        issued_at=NOW,
        expires_at=NOW + 900,
        token_hash=hashlib.sha256(token.encode()).hexdigest(),
    )
    assert token not in repr(principal)


async def test_expired_token(env: Env) -> None:
    token = mint(env.key, iat=NOW - 1000, exp=NOW - 6)
    assert (await rejected(env.verifier, token)).code == "auth.token_expired"


async def test_expiry_within_leeway_is_tolerated(env: Env) -> None:
    token = mint(env.key, iat=NOW - 1000, exp=NOW - 4)
    assert (await env.verifier.verify(token)).expires_at == NOW - 4


async def test_not_yet_valid_beyond_leeway(env: Env) -> None:
    assert (await rejected(env.verifier, mint(env.key, iat=NOW + 60))).code == "auth.token_invalid"
    future_nbf = mint(env.key, nbf=NOW + 60)
    assert (await rejected(env.verifier, future_nbf)).code == "auth.token_invalid"
    # A host whose clock runs a little behind auth's still accepts a fresh token.
    assert (await env.verifier.verify(mint(env.key, iat=NOW + 4))).issued_at == NOW + 4


@pytest.mark.parametrize(
    "overrides",
    [
        {"iss": "someone-else"},
        {"aud": "another-app"},
        {"aud": ["another-app", "more"]},
        {"iss": None},
        {"aud": None},
        {"exp": None},
        {"iat": None},
        {"sub": None},
        {"sid": None},
        {"roles": None},
        {"roles": "ADMIN"},
        {"roles": ["USER", 7]},
        {"sub": ""},
        {"exp": "tomorrow"},
        {"iat": True},
    ],
)
async def test_wrong_or_missing_claims_are_invalid(env: Env, overrides: dict[str, Any]) -> None:
    token = mint(env.key, **overrides)
    assert (await rejected(env.verifier, token)).code == "auth.token_invalid"


async def test_audience_list_containing_mosaic_is_accepted(env: Env) -> None:
    token = mint(env.key, aud=["mosaic", "other"])
    assert (await env.verifier.verify(token)).user_id == str(uuid.UUID(int=1))


async def test_tampered_payload_is_rejected(env: Env) -> None:
    header, _, signature = mint(env.key).split(".")
    forged_body = b64url(json.dumps(claims(roles=["ADMIN"])).encode())
    forged = f"{header}.{forged_body}.{signature}"
    assert (await rejected(env.verifier, forged)).code == "auth.token_invalid"


async def test_other_key_with_same_kid_is_rejected(env: Env) -> None:
    impostor = Key(env.key.kid)
    assert (await rejected(env.verifier, mint(impostor))).code == "auth.token_invalid"


async def test_alg_none_is_rejected(env: Env) -> None:
    unsigned = jwt.encode(claims(), "", algorithm="none", headers={"kid": env.key.kid})
    assert (await rejected(env.verifier, unsigned)).code == "auth.token_invalid"
    # Even with the alg spelt differently and a junk signature appended.
    odd = hand_made({"alg": "None", "kid": env.key.kid}, claims(), sign=b"x")
    assert (await rejected(env.verifier, odd)).code == "auth.token_invalid"


@pytest.mark.parametrize("secret", ["raw", "jwk_x", "pem"])
async def test_hs256_signed_with_the_public_key_is_rejected(env: Env, secret: str) -> None:
    public = env.key.private.public_key()
    secrets = {
        "raw": env.key.public_raw,
        "jwk_x": env.key.jwk["x"].encode(),
        "pem": public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
    }
    token = hand_made(
        {"alg": "HS256", "typ": "JWT", "kid": env.key.kid}, claims(roles=["ADMIN"]), secrets[secret]
    )
    assert (await rejected(env.verifier, token)).code == "auth.token_invalid"


async def test_rs256_token_is_rejected(env: Env) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": env.key.kid})
    assert (await rejected(env.verifier, token)).code == "auth.token_invalid"


async def test_missing_kid_is_rejected(env: Env) -> None:
    token = jwt.encode(claims(), env.key.private, algorithm="EdDSA")
    assert (await rejected(env.verifier, token)).code == "auth.token_invalid"
    assert env.source.fetches == 0


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        "a.b",
        "....",
        "x" * 9000,
        "eyJhbGciOiJFZERTQSJ9.e30.",
        "eyJhbGciOiJFZERTQSJ9.e30.\udcff",
        "é.b.c",
    ],
)
async def test_malformed_tokens_are_invalid(env: Env, token: str) -> None:
    assert (await rejected(env.verifier, token)).code == "auth.token_invalid"


def signed_by_hand(key: Key, header: dict[str, Any], body: dict[str, Any]) -> str:
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(body).encode())
    return signing_input + "." + b64url(key.private.sign(signing_input.encode()))


async def test_extension_headers_are_rejected(env: Env) -> None:
    plain = {"alg": "EdDSA", "kid": env.key.kid}
    assert (await env.verifier.verify(signed_by_hand(env.key, plain, claims()))).session_id
    for extra in ({"crit": ["exp"]}, {"b64": True}):
        token = signed_by_hand(env.key, {**plain, **extra}, claims(sid="other"))
        assert (await rejected(env.verifier, token)).code == "auth.token_invalid"


@pytest.mark.parametrize("token", ["", None])
async def test_no_token_is_missing(env: Env, token: str | None) -> None:
    assert (await rejected(env.verifier, token)).code == "auth.token_missing"


async def test_verified_tokens_are_cached_until_expiry(env: Env) -> None:
    token = mint(env.key, exp=NOW + 60)
    first = await env.verifier.verify(token)
    assert await env.verifier.verify(token) is first
    assert (env.verifier.cache_misses, env.verifier.cache_hits) == (1, 1)
    # Past exp + leeway the cache must not keep vouching for it.
    env.clock.now = NOW + 66
    assert (await rejected(env.verifier, token)).code == "auth.token_expired"
    assert env.verifier.cached == 0


async def test_cache_is_a_bounded_lru() -> None:
    env = make_env(cache_size=2)
    t1, t2, t3 = (mint(env.key, sid=f"s{i}") for i in range(3))
    for token in (t1, t2, t1, t3):  # t1 used again, so t2 is the least recently used
        await env.verifier.verify(token)
    assert env.verifier.cached == 2
    misses = env.verifier.cache_misses
    await env.verifier.verify(t1)
    await env.verifier.verify(t3)
    assert env.verifier.cache_misses == misses
    await env.verifier.verify(t2)
    assert env.verifier.cache_misses == misses + 1


async def test_cache_size_zero_disables_caching() -> None:
    env = make_env(cache_size=0)
    token = mint(env.key)
    await env.verifier.verify(token)
    await env.verifier.verify(token)
    assert (env.verifier.cached, env.verifier.cache_hits, env.verifier.cache_misses) == (0, 0, 2)


async def test_cached_token_is_rejected_once_its_key_is_withdrawn(env: Env) -> None:
    token = mint(env.key)
    await env.verifier.verify(token)
    successor = Key("k2")
    env.source.update({"keys": [successor.jwk]})
    await env.jwks.refresh()
    assert (await rejected(env.verifier, token)).code == "auth.token_invalid"


async def test_revoked_session_is_rejected_even_when_cached(env: Env) -> None:
    token = mint(env.key, sid="s-1")
    other_session = mint(env.key, sid="s-2")
    await env.verifier.verify(token)
    await env.verifier.verify(other_session)
    await env.revocations.apply_event(
        new_event(
            "auth.session.revoked",
            {"sessionId": "s-1", "userId": str(uuid.UUID(int=1)), "expiresAt": NOW + 86400},
        )
    )
    assert (await rejected(env.verifier, token)).code == "auth.token_revoked"
    assert (await env.verifier.verify(other_session)).session_id == "s-2"
    # A token of the revoked session seen for the first time is rejected too.
    fresh = mint(env.key, sid="s-1", iat=NOW + 1)
    assert (await rejected(env.verifier, fresh)).code == "auth.token_revoked"


async def test_roles_removed_rejects_tokens_issued_before_the_change(env: Env) -> None:
    user = str(uuid.UUID(int=1))
    before = mint(env.key, roles=["USER", "EDITOR"], iat=NOW - 10)
    at = mint(env.key, roles=["USER"], iat=NOW)
    after = mint(env.key, roles=["USER"], iat=NOW + 1)
    someone_else = mint(env.key, sub=str(uuid.UUID(int=2)), iat=NOW - 10)
    await env.verifier.verify(before)
    await env.revocations.apply_event(
        new_event(
            "auth.user.roles_changed",
            {
                "userId": user,
                "roles": ["USER"],
                "removedRoles": ["EDITOR"],
                "tokensValidAfter": NOW,
            },
        )
    )
    assert (await rejected(env.verifier, before)).code == "auth.token_revoked"
    assert (await env.verifier.verify(at)).issued_at == NOW
    assert (await env.verifier.verify(after)).issued_at == NOW + 1
    assert (await env.verifier.verify(someone_else)).user_id == str(uuid.UUID(int=2))


async def test_roles_added_only_does_not_revoke(env: Env) -> None:
    token = mint(env.key, iat=NOW - 10)
    await env.revocations.apply_event(
        new_event(
            "auth.user.roles_changed",
            {
                "userId": str(uuid.UUID(int=1)),
                "roles": ["USER", "EDITOR"],
                "removedRoles": [],
                "tokensValidAfter": NOW,
            },
        )
    )
    assert (await env.verifier.verify(token)).roles == frozenset({"USER"})


async def test_disabled_user_is_rejected(env: Env) -> None:
    token = mint(env.key, iat=NOW - 10)
    await env.verifier.verify(token)
    await env.revocations.apply_event(
        new_event("auth.user.disabled", {"userId": str(uuid.UUID(int=1)), "tokensValidAfter": NOW})
    )
    assert (await rejected(env.verifier, token)).code == "auth.token_revoked"


async def test_unreachable_key_source_is_503_not_401() -> None:
    class Down:
        async def fetch(self) -> dict[str, Any]:
            raise ConnectionError("auth is down")

    jwks = JwksCache(Down(), min_refresh_interval=30.0)
    verifier = TokenVerifier(jwks, revocations=RevocationSet())
    with pytest.raises(Problem) as info:
        await verifier.verify(mint(Key("k1")))
    assert (info.value.status, info.value.code) == (503, "auth.keys_unavailable")


# --- FastAPI dependencies -------------------------------------------------------------------


def build_app(verifier: TokenVerifier) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    TOKEN_VERIFIER.provide(app, verifier)

    @app.get("/me")
    async def me(principal: Annotated[Principal, Depends(current_principal)]) -> dict[str, Any]:
        return {"user": principal.user_id, "roles": sorted(principal.roles)}

    @app.get("/maybe")
    async def maybe(
        principal: Annotated[Principal | None, Depends(optional_principal)],
    ) -> dict[str, Any]:
        return {"user": principal.user_id if principal else None}

    @app.get("/editing")
    async def editing(
        principal: Annotated[Principal, Depends(require_roles("EDITOR", "MODERATOR"))],
    ) -> dict[str, Any]:
        return {"user": principal.user_id}

    return app


@pytest.fixture
async def client(env: Env) -> Any:
    transport = httpx.ASGITransport(app=build_app(env.verifier))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["code"]) == (status, code)
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


async def test_route_without_token_is_401_missing(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/me"), 401, "auth.token_missing")
    assert_problem(await client.get("/editing"), 401, "auth.token_missing")


@pytest.mark.parametrize(
    "authorization", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer a b", "Token abc"]
)
async def test_not_a_bearer_header_is_401_invalid(
    client: httpx.AsyncClient, authorization: str
) -> None:
    response = await client.get("/me", headers={"Authorization": authorization})
    assert_problem(response, 401, "auth.token_invalid")


async def test_route_with_good_token_is_200(env: Env, client: httpx.AsyncClient) -> None:
    response = await client.get("/me", headers=bearer(mint(env.key, roles=["USER", "EDITOR"])))
    assert response.status_code == 200
    assert response.json() == {"user": str(uuid.UUID(int=1)), "roles": ["EDITOR", "USER"]}
    # The scheme is case-insensitive (RFC 7235).
    lower = await client.get("/me", headers={"Authorization": "bearer " + mint(env.key)})
    assert lower.status_code == 200


async def test_route_with_expired_or_forged_token(env: Env, client: httpx.AsyncClient) -> None:
    expired = mint(env.key, iat=NOW - 2000, exp=NOW - 1000)
    assert_problem(await client.get("/me", headers=bearer(expired)), 401, "auth.token_expired")
    forged = mint(Key(env.key.kid))
    assert_problem(await client.get("/me", headers=bearer(forged)), 401, "auth.token_invalid")


async def test_require_roles_is_any_of(env: Env, client: httpx.AsyncClient) -> None:
    for roles in (["EDITOR"], ["MODERATOR"], ["USER", "MODERATOR"]):
        response = await client.get("/editing", headers=bearer(mint(env.key, roles=roles)))
        assert response.status_code == 200, roles


@pytest.mark.parametrize("roles", [["USER"], ["ADMIN"], []])
async def test_require_roles_forbids_other_roles(
    env: Env, client: httpx.AsyncClient, roles: list[str]
) -> None:
    # ADMIN included: it is not implicitly every role.
    response = await client.get("/editing", headers=bearer(mint(env.key, roles=roles)))
    assert_problem(response, 403, "auth.forbidden")


async def test_optional_principal(env: Env, client: httpx.AsyncClient) -> None:
    assert (await client.get("/maybe")).json() == {"user": None}
    signed_in = await client.get("/maybe", headers=bearer(mint(env.key)))
    assert signed_in.json() == {"user": str(uuid.UUID(int=1))}
    # Sending a bad token is an error, not anonymous access.
    bad = await client.get("/maybe", headers=bearer("garbage"))
    assert_problem(bad, 401, "auth.token_invalid")


async def test_revoked_token_over_http(env: Env, client: httpx.AsyncClient) -> None:
    token = mint(env.key, sid="s-9")
    assert (await client.get("/me", headers=bearer(token))).status_code == 200
    env.revocations.revoke_session("s-9", NOW + 3600)
    assert_problem(await client.get("/me", headers=bearer(token)), 401, "auth.token_revoked")


def test_require_roles_needs_a_role() -> None:
    with pytest.raises(ValueError, match="at least one role"):
        require_roles()


def test_openapi_declares_bearer_auth_on_protected_routes(env: Env) -> None:
    # create_app installs document_bearer; this app is bare FastAPI, so it is applied here.
    app = build_app(env.verifier)
    schema = document_bearer(app, app.openapi())
    assert schema["components"]["securitySchemes"] == {"HTTPBearer": BEARER_SCHEME}
    assert schema["paths"]["/me"]["get"]["security"] == [{"HTTPBearer": []}]
    assert schema["paths"]["/maybe"]["get"]["security"] == [{"HTTPBearer": []}]
    assert schema["paths"]["/editing"]["get"]["security"] == [{"HTTPBearer": []}]
