"""Access and refresh tokens through the HTTP API: good, expired, forged, revoked, reused."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from auth_support import PASSWORD, bearer, signup, unique_email
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mosaic_auth.service import AuthService


async def _claims_for(client: httpx.AsyncClient) -> tuple[dict[str, Any], str]:
    body = await signup(client)
    token = body["tokens"]["accessToken"]
    return jwt.decode(token, options={"verify_signature": False}), token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_missing_and_malformed_bearer_tokens_are_401(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/users/me")
    assert missing.status_code == 401
    assert missing.json()["code"] == "auth.token_missing"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    for value in ("Bearer", "Bearer not.a.jwt", "Basic dXNlcjpwYXNz", "Bearer " + "a" * 5000):
        bad = await client.get("/v1/users/me", headers={"Authorization": value})
        assert bad.status_code == 401, value
        assert bad.json()["code"] in {"auth.token_invalid", "auth.token_missing"}


async def test_expired_token_is_401(client: httpx.AsyncClient, service: AuthService) -> None:
    claims, _ = await _claims_for(client)
    key = await service.signer.key()
    claims.update(iat=int(time.time()) - 3600, exp=int(time.time()) - 60)
    expired = jwt.encode(claims, key.private_key, algorithm="EdDSA", headers={"kid": key.kid})
    response = await client.get("/v1/users/me", headers=bearer(expired))
    assert response.status_code == 401
    assert response.json()["code"] == "auth.token_expired"


async def test_forged_tokens_are_401(client: httpx.AsyncClient, service: AuthService) -> None:
    claims, genuine = await _claims_for(client)
    key = await service.signer.key()
    other_key = Ed25519PrivateKey.generate()
    forged_other_key = jwt.encode(claims, other_key, algorithm="EdDSA", headers={"kid": key.kid})
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": key.kid}).encode())
    alg_none = f"{header}.{_b64(json.dumps(claims).encode())}."
    head, _payload, sig = genuine.split(".")
    escalated = dict(claims, roles=["ADMIN"])
    tampered = f"{head}.{_b64(json.dumps(escalated).encode())}.{sig}"
    wrong_audience = jwt.encode(
        dict(claims, aud="somebody-else"),
        key.private_key,
        algorithm="EdDSA",
        headers={"kid": key.kid},
    )
    for token in (forged_other_key, alg_none, tampered, wrong_audience):
        response = await client.get("/v1/users/me", headers=bearer(token))
        assert response.status_code == 401
        assert response.json()["code"] == "auth.token_invalid"
    assert (await client.get("/v1/users/me", headers=bearer(genuine))).status_code == 200


async def test_refresh_rotates_and_reuse_revokes_the_whole_session(
    client: httpx.AsyncClient,
) -> None:
    tokens = (await signup(client))["tokens"]
    first = await client.post("/v1/auth/refresh", json={"refreshToken": tokens["refreshToken"]})
    assert first.status_code == 200
    rotated = first.json()["tokens"]
    assert rotated["refreshToken"] != tokens["refreshToken"]
    assert (
        await client.get("/v1/users/me", headers=bearer(rotated["accessToken"]))
    ).status_code == 200

    reuse = await client.post("/v1/auth/refresh", json={"refreshToken": tokens["refreshToken"]})
    assert reuse.status_code == 401
    assert reuse.json()["code"] == "auth.refresh_reused"
    # Both holders lose the session: the newest refresh token and its access token are dead.
    newest = await client.post("/v1/auth/refresh", json={"refreshToken": rotated["refreshToken"]})
    assert newest.status_code == 401
    me = await client.get("/v1/users/me", headers=bearer(rotated["accessToken"]))
    assert me.status_code == 401
    assert me.json()["code"] == "auth.token_revoked"


@pytest.mark.parametrize("payload", [{}, {"refreshToken": ""}, {"refreshToken": "x" * 201}])
async def test_refresh_with_bad_input_is_422(
    client: httpx.AsyncClient, payload: dict[str, str]
) -> None:
    assert (await client.post("/v1/auth/refresh", json=payload)).status_code == 422


async def test_unknown_refresh_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/auth/refresh", json={"refreshToken": "never-issued"})
    assert response.status_code == 401
    assert response.json()["code"] == "auth.refresh_invalid"


async def test_signout_kills_the_sessions_tokens_at_once(client: httpx.AsyncClient) -> None:
    email = unique_email()
    await signup(client, email=email)
    signin = await client.post("/v1/auth/signin", json={"email": email, "password": PASSWORD})
    tokens = signin.json()["tokens"]
    other = await client.post("/v1/auth/signin", json={"email": email, "password": PASSWORD})
    other_tokens = other.json()["tokens"]
    out = await client.post("/v1/auth/signout", headers=bearer(tokens["accessToken"]))
    assert out.status_code == 204
    me = await client.get("/v1/users/me", headers=bearer(tokens["accessToken"]))
    assert me.status_code == 401
    refresh = await client.post("/v1/auth/refresh", json={"refreshToken": tokens["refreshToken"]})
    assert refresh.status_code == 401
    again = await client.post("/v1/auth/signout", headers=bearer(tokens["accessToken"]))
    assert again.status_code == 401
    # Only that session: the user's other session lives on.
    alive = await client.get("/v1/users/me", headers=bearer(other_tokens["accessToken"]))
    assert alive.status_code == 200


async def test_jwks_publishes_the_signing_key(
    client: httpx.AsyncClient, service: AuthService
) -> None:
    response = await client.get("/v1/auth/jwks.json")
    assert response.status_code == 200
    key = await service.signer.key()
    published = {k["kid"]: k for k in response.json()["keys"]}
    assert published[key.kid]["kty"] == "OKP"
    assert published[key.kid]["alg"] == "EdDSA"
    assert "d" not in published[key.kid]  # never the private part
    assert "max-age" in response.headers["cache-control"]


async def test_housekeeping_prunes_only_what_is_long_dead(
    client: httpx.AsyncClient, service: AuthService
) -> None:
    from sqlalchemy import text

    live = (await signup(client))["tokens"]
    dead = (await signup(client))["tokens"]
    dead_claims = jwt.decode(dead["accessToken"], options={"verify_signature": False})
    async with service.db.transaction() as conn:
        await conn.execute(
            text("UPDATE sessions SET expires_at = now() - interval '30 days' WHERE id = :sid"),
            {"sid": dead_claims["sid"]},
        )
    counts = await service.prune()
    assert counts["sessions"] >= 1
    async with service.db.connect() as conn:
        remaining = {str(r[0]) for r in await conn.execute(text("SELECT id FROM sessions"))}
    live_sid = jwt.decode(live["accessToken"], options={"verify_signature": False})["sid"]
    assert live_sid in remaining
    assert dead_claims["sid"] not in remaining
    assert (
        await client.get("/v1/users/me", headers=bearer(live["accessToken"]))
    ).status_code == 200
