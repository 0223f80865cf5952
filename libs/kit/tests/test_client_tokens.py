"""Client-credentials tokens (RFC 9068) through the same TokenVerifier as user tokens."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from test_auth import NOW, Env, Key, make_env, mint

from mosaic_kit.events import new_event
from mosaic_kit.problem import Problem
from mosaic_kit.tokens import ClientPrincipal, Principal


def client_token(key: Key, *, typ: str | None = "at+jwt", **overrides: Any) -> str:
    body: dict[str, Any] = {
        "client_id": "c-1",
        "scope": "blogs:read recommendations:read",
        "jti": "t-1",
        "iat": NOW,
        "exp": NOW + 900,
        "iss": "mosaic-auth",
        "aud": "mosaic",
    }
    body.update(overrides)
    headers: dict[str, Any] = {"kid": key.kid}
    if typ is not None:
        headers["typ"] = typ
    return jwt.encode(
        {k: v for k, v in body.items() if v is not None},
        key.private,
        algorithm="EdDSA",
        headers=headers,
    )


@pytest.fixture
def env() -> Env:
    return make_env()


async def refused(env: Env, token: str, *, any_kind: bool = True) -> Problem:
    verify = env.verifier.verify_any if any_kind else env.verifier.verify
    with pytest.raises(Problem) as info:
        await verify(token)
    assert info.value.status == 401
    return info.value


async def test_a_client_token_gives_the_client_and_its_scopes(env: Env) -> None:
    principal = await env.verifier.verify_any(client_token(env.key))
    assert isinstance(principal, ClientPrincipal)
    assert principal.client_id == "c-1"
    assert principal.scopes == {"blogs:read", "recommendations:read"}
    assert principal.token_id == "t-1"
    assert principal.has_any_scope("blogs:read", "other")
    assert not principal.has_all_scopes("blogs:read", "blogs:write")
    # The same token again: a cache hit, the same answer.
    assert env.verifier.verify_cached_any(client_token(env.key)) == principal


async def test_user_tokens_still_verify_through_verify_any(env: Env) -> None:
    principal = await env.verifier.verify_any(mint(env.key))
    assert isinstance(principal, Principal)


async def test_verify_refuses_a_client_token_cold_and_cached(env: Env) -> None:
    token = client_token(env.key)
    assert (await refused(env, token, any_kind=False)).code == "auth.token_invalid"
    await env.verifier.verify_any(token)  # now cached
    with pytest.raises(Problem):
        env.verifier.verify_cached(token)


@pytest.mark.parametrize(
    ("typ", "overrides"),
    [
        (None, {}),  # RFC 9068 §4: no `typ`, not an access token
        ("JWT", {}),
        ("at+jwt", {"jti": None}),
        ("at+jwt", {"client_id": ""}),
        ("at+jwt", {"scope": ["blogs:read"]}),
        ("at+jwt", {"aud": "elsewhere"}),
        ("at+jwt", {"exp": NOW - 60}),
    ],
)
async def test_malformed_client_tokens_are_refused(
    env: Env, typ: str | None, overrides: dict[str, Any]
) -> None:
    problem = await refused(env, client_token(env.key, typ=typ, **overrides))
    assert problem.code in {"auth.token_invalid", "auth.token_expired"}


async def test_a_token_with_sub_is_a_user_token_and_needs_its_claims(env: Env) -> None:
    # `client_id` beside a `sub` does not make a client token: it is a user token missing `sid`.
    token = client_token(env.key, sub="someone")
    assert (await refused(env, token)).code == "auth.token_invalid"


async def test_a_revoked_jti_is_refused_even_when_cached(env: Env) -> None:
    token, other = client_token(env.key), client_token(env.key, jti="t-2")
    await env.verifier.verify_any(token)
    await env.verifier.revocations.apply_event(
        new_event("auth.client.token_revoked", {"jti": "t-1", "expiresAt": NOW + 900})
    )
    assert (await refused(env, token)).code == "auth.token_revoked"
    assert isinstance(await env.verifier.verify_any(other), ClientPrincipal)


async def test_a_disabled_client_loses_the_tokens_issued_before(env: Env) -> None:
    old = client_token(env.key, jti="old", iat=NOW - 10)
    await env.verifier.verify_any(old)
    await env.verifier.revocations.apply_event(
        new_event("auth.client.disabled", {"clientId": "c-1", "tokensValidAfter": NOW})
    )
    assert (await refused(env, old)).code == "auth.token_revoked"
    # Issued after the cut-off (re-enabled, a new token): accepted; other clients unaffected.
    assert isinstance(
        await env.verifier.verify_any(client_token(env.key, jti="new", iat=NOW + 1)),
        ClientPrincipal,
    )
    other = client_token(env.key, client_id="c-2", jti="x", iat=NOW - 10)
    assert isinstance(await env.verifier.verify_any(other), ClientPrincipal)
