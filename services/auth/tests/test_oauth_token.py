"""The token endpoint (RFC 6749 §4.4): every §5.2 error, both client authentication methods,
scopes, rotation without downtime, throttling, and the token's exact shape."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import httpx
import jwt
import pytest
from auth_support import TOKEN_URL, address, client_token, make_settings, register_client

from mosaic_auth.settings import AuthSettings
from mosaic_kit.jwks import JwksCache
from mosaic_kit.problem import Problem
from mosaic_kit.revocation import RevocationSet
from mosaic_kit.tokens import ClientPrincipal, TokenVerifier

GRANT = {"grant_type": "client_credentials"}
# Small, so that the throttle test reaches it quickly; a lockout long enough to outlast it.
MAX_FAILURES = 3
LOCKOUT = 3.0


@pytest.fixture(scope="module")
def auth_settings(pg_url: str, nats_url: str) -> AuthSettings:
    return make_settings(
        pg_url,
        nats_url,
        auth_signin_max_failures=MAX_FAILURES,
        auth_signin_base_delay=LOCKOUT,
        auth_client_token_ttl=600,
        auth_audience="mosaic",
    )


def basic(client_id: str, secret: str) -> dict[str, str]:
    """client_secret_basic as RFC 6749 §2.3.1 has it: each part form-urlencoded first (here
    every character escaped, which a server that skips the decoding would get wrong)."""

    def escaped(value: str) -> str:
        return "".join(f"%{b:02X}" for b in value.encode())

    raw = f"{escaped(client_id)}:{escaped(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    if error == "invalid_client":
        assert response.headers["www-authenticate"] == 'Basic realm="mosaic"'
    return body


class HttpKeys:
    """Auth's published JWKS, read over its HTTP route as any outside verifier would."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def fetch(self) -> dict[str, Any]:
        response = await self._client.get("/v1/auth/jwks.json")
        response.raise_for_status()
        keys: dict[str, Any] = response.json()
        return keys


@pytest.fixture
async def app_client(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, Any]:
    return await register_client(
        client, admin, scopes=["blogs:read", "recommendations:read"], audience=["partner-api"]
    )


async def test_client_secret_basic_gives_a_token_in_the_shared_contracts_shape(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    app_client: dict[str, Any],
    auth_settings: AuthSettings,
) -> None:
    response = await client.post(
        TOKEN_URL,
        data=GRANT,
        headers=basic(app_client["clientId"], app_client["clientSecret"]),
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}  # no refresh
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    assert body["scope"] == "blogs:read recommendations:read"  # all the client's by default

    token = body["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "EdDSA"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert set(claims) == {"iss", "aud", "client_id", "scope", "jti", "iat", "exp"}  # no sub
    assert claims["iss"] == auth_settings.auth_issuer
    assert claims["aud"] == ["mosaic", "partner-api"]
    assert claims["client_id"] == app_client["clientId"]
    assert 0 < claims["exp"] - claims["iat"] <= 900
    assert abs(claims["iat"] - time.time()) < 5

    # Verified as every service and the gateway verify it: the kit's verifier on the JWKS.
    jwks = JwksCache(HttpKeys(client))
    verifier = TokenVerifier(
        jwks,
        revocations=RevocationSet(),
        issuer=auth_settings.auth_issuer,
        audience=auth_settings.auth_audience,
    )
    try:
        principal = await verifier.verify_any(token)
        assert isinstance(principal, ClientPrincipal)
        assert principal.client_id == app_client["clientId"]
        assert principal.scopes == {"blogs:read", "recommendations:read"}
        assert principal.token_id == claims["jti"]
        with pytest.raises(Problem) as refused:
            await verifier.verify(token)  # never taken for a user's
        assert refused.value.status == 401
    finally:
        await jwks.aclose()

    # The secret used is recorded as used.
    again = await client.get(f"/v1/clients/{app_client['clientId']}", headers=admin)
    assert again.json()["secrets"][0]["lastUsedAt"] is not None


async def test_client_secret_post_and_a_scope_subset(
    client: httpx.AsyncClient, app_client: dict[str, Any]
) -> None:
    response = await client.post(
        TOKEN_URL,
        data={
            **GRANT,
            "scope": "recommendations:read",
            "client_id": app_client["clientId"],
            "client_secret": app_client["clientSecret"],
        },
        headers={"X-Forwarded-For": address()},
    )
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "recommendations:read"
    claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert claims["scope"] == "recommendations:read"
    # Repeated spaces between scopes are tolerated; the grant is sorted and deduplicated.
    both = await client_token(
        client,
        app_client["clientId"],
        app_client["clientSecret"],
        "recommendations:read  blogs:read blogs:read",
    )
    assert both.json()["scope"] == "blogs:read recommendations:read"
    # An empty scope counts as absent (RFC 6749 §3.1): all the client's scopes.
    empty = await client_token(client, app_client["clientId"], app_client["clientSecret"], "")
    assert empty.json()["scope"] == "blogs:read recommendations:read"


async def test_basic_with_the_same_client_id_in_the_body_is_accepted(
    client: httpx.AsyncClient, app_client: dict[str, Any]
) -> None:
    response = await client.post(
        TOKEN_URL,
        data={**GRANT, "client_id": app_client["clientId"]},
        headers=basic(app_client["clientId"], app_client["clientSecret"]),
    )
    assert response.status_code == 200, response.text


async def test_every_invalid_request(client: httpx.AsyncClient, app_client: dict[str, Any]) -> None:
    cid, secret = app_client["clientId"], app_client["clientSecret"]
    creds = basic(cid, secret)
    post_creds = {"client_id": cid, "client_secret": secret}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("JSON instead of a form", {"json": {**GRANT, **post_creds}}),
        ("no content type", {"content": b"grant_type=client_credentials", "headers": creds}),
        ("no grant_type", {"data": {"scope": "blogs:read"}, "headers": creds}),
        ("grant_type repeated", {"content": b"grant_type=client_credentials&grant_type=password"}),
        ("both methods", {"data": {**GRANT, **post_creds}, "headers": creds}),
        ("another client_id in the body", {"data": {**GRANT, "client_id": "x"}, "headers": creds}),
        ("not UTF-8", {"content": b"grant_type=client_credentials&scope=%FF"}),
        ("a NUL", {"content": b"grant_type=client_credentials&scope=a%00b"}),
        ("too many fields", {"content": b"&".join(b"f%d=1" % i for i in range(30))}),
        ("too large", {"content": b"grant_type=client_credentials&pad=" + b"x" * 20_000}),
    ]
    for label, request in cases:
        headers = {"X-Forwarded-For": address(), **request.pop("headers", {})}
        if "content" in request and "Content-Type" not in headers and label != "no content type":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        response = await client.post(TOKEN_URL, headers=headers, **request)
        assert_oauth_error(response, 400, "invalid_request")
        assert response.json()["error_description"], label


async def test_unsupported_grant_type(
    client: httpx.AsyncClient, app_client: dict[str, Any]
) -> None:
    creds = basic(app_client["clientId"], app_client["clientSecret"])
    for grant in ("password", "authorization_code", "refresh_token", "client_credentials "):
        response = await client.post(TOKEN_URL, data={"grant_type": grant}, headers=creds)
        assert_oauth_error(response, 400, "unsupported_grant_type")


async def test_every_invalid_client(
    client: httpx.AsyncClient, admin: dict[str, str], app_client: dict[str, Any]
) -> None:
    cid, secret = app_client["clientId"], app_client["clientSecret"]
    disabled = await register_client(client, admin)
    await client.post(f"/v1/clients/{disabled['clientId']}/disable", headers=admin)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("no authentication", {"data": GRANT}),
        ("client_id without a secret", {"data": {**GRANT, "client_id": cid}}),
        ("a bearer token", {"data": GRANT, "headers": {"Authorization": "Bearer abc"}}),
        ("Basic not base64", {"data": GRANT, "headers": {"Authorization": "Basic !!!"}}),
        (
            "Basic without a colon",
            {
                "data": GRANT,
                "headers": {"Authorization": "Basic " + base64.b64encode(b"ab").decode()},
            },
        ),
        ("unknown client", {"data": GRANT, "headers": basic(cid[:-4] + "0000", secret)}),
        ("not a client id", {"data": GRANT, "headers": basic("nobody", secret)}),
        ("wrong secret", {"data": GRANT, "headers": basic(cid, secret + "x")}),
        (
            "another client's secret",
            {"data": GRANT, "headers": basic(cid, disabled["clientSecret"])},
        ),
        (
            "wrong secret in the body",
            {"data": {**GRANT, "client_id": cid, "client_secret": "mcs_nope"}},
        ),
        (
            "disabled client",
            {"data": GRANT, "headers": basic(disabled["clientId"], disabled["clientSecret"])},
        ),
    ]
    for label, request in cases:
        headers = {"X-Forwarded-For": address(), **request.pop("headers", {})}
        response = await client.post(TOKEN_URL, headers=headers, **request)
        body = assert_oauth_error(response, 401, "invalid_client")
        assert secret not in response.text, label
        if label == "disabled client":
            assert "disabled" in body["error_description"]


async def test_every_invalid_scope(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    narrow = await register_client(client, admin, scopes=["blogs:read"])
    for scope in ("recommendations:read", "blogs:read recommendations:read", "blogs:write", "a\tb"):
        response = await client_token(client, narrow["clientId"], narrow["clientSecret"], scope)
        assert_oauth_error(response, 400, "invalid_scope")


async def test_rotation_without_downtime(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    created = await register_client(client, admin)
    cid, old_secret = created["clientId"], created["clientSecret"]
    before = (await client_token(client, cid, old_secret)).json()["access_token"]

    added = (await client.post(f"/v1/clients/{cid}/secrets", headers=admin)).json()
    # The grace period: both secrets work.
    assert (await client_token(client, cid, old_secret)).status_code == 200
    assert (await client_token(client, cid, added["clientSecret"])).status_code == 200
    old_id = created["secrets"][0]["id"]
    assert (
        await client.delete(f"/v1/clients/{cid}/secrets/{old_id}", headers=admin)
    ).status_code == 204
    assert_oauth_error(await client_token(client, cid, old_secret), 401, "invalid_client")
    assert (await client_token(client, cid, added["clientSecret"])).status_code == 200

    # A token issued with the old secret lives on until it expires.
    introspected = await client.post(
        "/v1/oauth/introspect",
        data={"token": before},
        headers=basic(cid, added["clientSecret"]),
    )
    assert introspected.json()["active"] is True


async def test_failed_authentications_are_throttled_per_client_then_recover(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    target = await register_client(client, admin)
    cid, secret = target["clientId"], target["clientSecret"]
    # From many addresses, so that only the per-client count can lock.
    answers = await asyncio.gather(
        *(client_token(client, cid, f"mcs_guess{i}") for i in range(MAX_FAILURES + 7))
    )
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [401] * MAX_FAILURES + [429] * 7
    for refused in (r for r in answers if r.status_code == 429):
        assert_oauth_error(refused, 429, "slow_down")
        assert 1 <= int(refused.headers["Retry-After"]) <= LOCKOUT + 1
    # The right secret is refused unchecked while the lock lasts ...
    locked = await client_token(client, cid, secret)
    assert_oauth_error(locked, 429, "slow_down")
    # ... and accepted once it has passed.
    await asyncio.sleep(int(locked.headers["Retry-After"]) + 0.1)
    assert (await client_token(client, cid, secret)).status_code == 200
    # Another client is not affected by this one's lock.
    other = await register_client(client, admin)
    assert (await client_token(client, other["clientId"], other["clientSecret"])).status_code == 200


async def test_failed_authentications_are_throttled_per_address(
    client: httpx.AsyncClient, admin: dict[str, str], auth_settings: AuthSettings
) -> None:
    where = address()
    limit = auth_settings.auth_signin_max_failures_per_address
    # A different unknown client each time, so that only the address's count can lock.
    for i in range(limit):
        wrong = await client_token(client, f"guess-{i}", "mcs_nope", at=where)
        assert wrong.status_code == 401
    real = await register_client(client, admin)
    locked = await client_token(client, real["clientId"], real["clientSecret"], at=where)
    assert_oauth_error(locked, 429, "slow_down")
    # Elsewhere the same client is fine.
    assert (await client_token(client, real["clientId"], real["clientSecret"])).status_code == 200
