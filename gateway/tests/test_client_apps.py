"""Client applications (OAuth2 client credentials) through a real gateway process: a client token
in place of the API key on routes open to clients (`auth.scopes`), scope rules, refusals, the
revocation events, per-client rate limits, identity headers, the access log and metrics.

Auth is the stand-in of security_support.py on a NATS server private to this module, minting
client tokens in the contract's shape (RFC 9068) and publishing `auth.client.disabled` /
`auth.client.token_revoked` on auth's stream; the backend is the echo app.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import Backend, BackendFactory, Gateway, GatewayFactory
from obs_support import access_lines, scrape
from security_support import StandInAuth, start_nats

from mosaic_devstack.embedded import EmbeddedNats

PROBLEM = "application/problem+json"
READ = ["blogs:read", "recommendations:read"]


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = start_nats(tmp_path_factory.mktemp("clients-nats"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def auth(nats_server: EmbeddedNats) -> AsyncIterator[StandInAuth]:
    stand_in = StandInAuth()
    await stand_in.start(nats_server.url)
    yield stand_in
    await stand_in.stop()


@pytest.fixture(scope="module")
def echo(shared_backends: BackendFactory) -> Backend:
    return shared_backends("echo")


@pytest.fixture(scope="module")
def access_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clients-log") / "access.log"


def clients_config(echo: Backend, nats_url: str, access_log: Path) -> dict[str, Any]:
    route = {"methods": ["GET"], "backend": "echo"}
    return {
        "nats": {"url": nats_url},
        "observability": {"access_log": {"enabled": True, "path": str(access_log)}},
        "defaults": {
            "auth": {"api_key": "required"},
            "headers": {"allow": ["accept", "x-allowed"]},
        },
        "backends": {"echo": {"instances": [echo.url]}},
        "routes": [
            {**route, "path": "/read/*", "auth": {"scopes": {"any_of": READ}}},
            {**route, "path": "/both/*", "auth": {"scopes": {"all_of": READ}}},
            {**route, "path": "/keyed/*"},
            {**route, "path": "/user/*", "auth": {"jwt": "required"}},
            {
                **route,
                "path": "/mixed/*",
                "auth": {"jwt": "optional", "scopes": {"any_of": ["blogs:read"]}},
            },
            {
                **route,
                "path": "/limited/*",
                "auth": {"scopes": {"any_of": ["blogs:read"]}},
                "rate_limit": {"requests": 2, "per": "1m", "by": "client"},
            },
        ],
    }


@pytest.fixture(scope="module")
async def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    echo: Backend,
    nats_server: EmbeddedNats,
    auth: StandInAuth,
    access_log: Path,
) -> AsyncIterator[Gateway]:
    factory = GatewayFactory(tmp_path_factory.mktemp("clients-gw"))
    gw = factory(clients_config(echo, nats_server.url, access_log))
    yield gw
    await factory.close()


async def call(gw: Gateway, path: str, **kwargs: Any) -> httpx.Response:
    return await gw.client().get(path, **kwargs)


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", **headers}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    return body


def seen_headers(response: httpx.Response) -> dict[str, str]:
    return dict(response.json()["headers"])


async def within(check: Any, seconds: float) -> float:
    """Poll `check()` (async, returns bool) until true: the seconds it took, or fail."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            pytest.fail(f"not true within {seconds} s")
        await asyncio.sleep(0.02)


# --- in place of the API key ------------------------------------------------------------------


async def test_a_client_token_replaces_the_api_key_on_a_route_open_to_clients(
    gateway: Gateway, auth: StandInAuth
) -> None:
    token = auth.client_token(client_id="cl_reader", scopes=["recommendations:read", "blogs:read"])
    spoof = {"x-client-id": "cl_admin", "X_Client_Scopes": "blogs:write", "x-user-id": "someone"}
    for _ in range(2):  # the first verifies the signature, the second is a cache hit
        response = await call(gateway, "/read/a", headers=bearer(token, **spoof))
        assert response.status_code == 200, response.text
        seen = seen_headers(response)
        assert seen["x-client-id"] == "cl_reader"
        assert seen["x-client-scopes"] == "blogs:read recommendations:read"
        # The client's own token never reaches the service, nor do its spoofed identities.
        assert "authorization" not in seen
        assert "x_client_scopes" not in {name.lower() for name in seen}
        assert "x-user-id" not in seen
    # Neither credential: the problem says both are accepted here.
    body = assert_problem(await call(gateway, "/read/a"), 401, "auth.apikey_missing")
    assert "client application" in body["detail"]
    # An API key still works, and a client's identity header sent with it is stripped.
    key, _ = auth.issue_key()
    keyed = await call(gateway, "/read/a", headers={"x-api-key": key, "x-client-id": "cl_reader"})
    assert keyed.status_code == 200
    assert "x-client-id" not in seen_headers(keyed)
    # With a key, a public read does not look at the bearer token (a stale one, a client's): the
    # request is the key's, and the token goes nowhere.
    for stale in ("Bearer whatever", f"Bearer {token}"):
        response = await call(
            gateway, "/read/a", headers={"x-api-key": key, "authorization": stale}
        )
        assert response.status_code == 200, response.text
        assert "authorization" not in seen_headers(response)
        assert "x-client-id" not in seen_headers(response)
    # Without a key a bearer token is checked: it is the credential.
    garbage = await call(gateway, "/read/a", headers={"authorization": "Bearer whatever"})
    assert_problem(garbage, 401, "auth.token_invalid")


async def test_a_client_token_is_refused_on_a_route_not_open_to_clients(
    gateway: Gateway, auth: StandInAuth
) -> None:
    token = auth.client_token(scopes=READ)
    alone = await call(gateway, "/keyed/a", headers=bearer(token))
    body = assert_problem(alone, 401, "auth.token_invalid")
    assert "not accepted here" in body["detail"]
    assert alone.headers["www-authenticate"] == "Bearer"
    # Where a user's token is asked for, with the calling application's key, still refused.
    key, _ = auth.issue_key()
    as_user = await call(gateway, "/user/me", headers=bearer(token, **{"x-api-key": key}))
    assert_problem(as_user, 401, "auth.token_invalid")
    # A user's token does not replace the API key anywhere, even on a route open to clients.
    user = auth.token()
    assert_problem(await call(gateway, "/read/a", headers=bearer(user)), 401, "auth.apikey_missing")
    assert_problem(
        await call(gateway, "/keyed/a", headers=bearer(user)), 401, "auth.apikey_missing"
    )


# --- scopes -----------------------------------------------------------------------------------


async def test_any_of_and_all_of_scope_rules(gateway: Gateway, auth: StandInAuth) -> None:
    async def status(path: str, scopes: list[str]) -> httpx.Response:
        return await call(gateway, path, headers=bearer(auth.client_token(scopes=scopes)))

    assert (await status("/read/x", ["recommendations:read"])).status_code == 200
    assert (await status("/read/x", ["blogs:read"])).status_code == 200
    refused = await status("/read/x", ["blogs:write"])
    body = assert_problem(refused, 403, "auth.scope_missing")
    assert "one of the scopes: blogs:read recommendations:read" in body["detail"]
    assert refused.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", scope="blogs:read recommendations:read"'
    )
    only_one = await status("/both/x", ["blogs:read"])
    body = assert_problem(only_one, 403, "auth.scope_missing")
    assert "all of the scopes" in body["detail"]
    assert (
        await status("/both/x", ["recommendations:read", "blogs:read", "x:y"])
    ).status_code == 200
    # No scope at all.
    assert_problem(await status("/read/x", []), 403, "auth.scope_missing")


async def test_forged_expired_or_untyped_client_tokens_are_401(
    gateway: Gateway, auth: StandInAuth
) -> None:
    forger = StandInAuth()
    forger.kid = auth.kid  # the same key id, another key: the signature cannot verify
    forged = await call(gateway, "/read/x", headers=bearer(forger.client_token(scopes=READ)))
    assert_problem(forged, 401, "auth.token_invalid")
    assert forged.headers["www-authenticate"] == "Bearer"
    past = int(time.time()) - 3600
    expired = auth.client_token(scopes=READ, issued_at=past, expires_in=900)
    assert_problem(
        await call(gateway, "/read/x", headers=bearer(expired)), 401, "auth.token_expired"
    )
    # RFC 9068: without `typ: at+jwt` another JWT of the same keys does not pass for one.
    untyped = auth.client_token(scopes=READ, typ="JWT")
    assert_problem(
        await call(gateway, "/read/x", headers=bearer(untyped)), 401, "auth.token_invalid"
    )
    for bad in ("Bearer not.a.jwt", "Basic abc"):
        response = await call(gateway, "/read/x", headers={"authorization": bad})
        assert_problem(response, 401, "auth.token_invalid")


async def test_user_tokens_keep_their_rules_on_a_route_open_to_clients(
    gateway: Gateway, auth: StandInAuth
) -> None:
    key, _ = auth.issue_key()
    user = auth.token(user_id="22222222-2222-2222-2222-222222222222")
    response = await call(gateway, "/mixed/x", headers=bearer(user, **{"x-api-key": key}))
    assert response.status_code == 200
    seen = seen_headers(response)
    assert seen["x-user-id"] == "22222222-2222-2222-2222-222222222222"
    assert seen["authorization"] == f"Bearer {user}"  # the services verify users' tokens
    assert "x-client-id" not in seen
    client = auth.client_token(client_id="cl_mixed", scopes=["blogs:read"])
    response = await call(gateway, "/mixed/x", headers=bearer(client))
    assert response.status_code == 200
    seen = seen_headers(response)
    assert seen["x-client-id"] == "cl_mixed"
    # `authorization` is allowed here (the route takes user tokens), yet a client's is not sent.
    assert "authorization" not in seen
    assert "x-user-id" not in seen


# --- revocation -------------------------------------------------------------------------------


async def test_a_disabled_client_is_refused_within_a_second_and_others_still_work(
    tmp_path: Path, echo: Backend, nats_server: EmbeddedNats, auth: StandInAuth
) -> None:
    # A configuration whose only route is open to clients, with no API key and no user token
    # anywhere: the revocation feed must be followed all the same.
    factory = GatewayFactory(tmp_path)
    try:
        gw = factory(
            {
                "nats": {"url": nats_server.url},
                "backends": {"echo": {"instances": [echo.url]}},
                "routes": [
                    {
                        "path": "/open/*",
                        "methods": ["GET"],
                        "backend": "echo",
                        "auth": {"api_key": "off", "scopes": {"any_of": ["blogs:read"]}},
                    }
                ],
            }
        )
        doomed = auth.client_token(client_id="cl_doomed")
        other = auth.client_token(client_id="cl_other")
        for token in (doomed, other, doomed):  # the last one is a cache hit
            assert (await call(gw, "/open/x", headers=bearer(token))).status_code == 200
        await auth.disable_client("cl_doomed")

        async def refused() -> bool:
            response = await call(gw, "/open/x", headers=bearer(doomed))
            if response.status_code == 401:
                assert response.json()["code"] == "auth.token_revoked"
                return True
            assert response.status_code == 200
            return False

        assert await within(refused, 1.0) < 1.0
        assert (await call(gw, "/open/x", headers=bearer(other))).status_code == 200
        # The cut-off is not a ban: a token issued after it (an enabled client's) works.
        later = auth.client_token(client_id="cl_doomed", issued_at=int(time.time()) + 2)
        assert (await call(gw, "/open/x", headers=bearer(later))).status_code == 200
    finally:
        await factory.close()


async def test_one_revoked_client_token_is_refused_within_a_second(
    gateway: Gateway, auth: StandInAuth
) -> None:
    expires = int(time.time()) + 900
    revoked = auth.client_token(client_id="cl_two_tokens", jti="jti-to-revoke")
    kept = auth.client_token(client_id="cl_two_tokens")
    assert (await call(gateway, "/read/x", headers=bearer(revoked))).status_code == 200
    await auth.revoke_client_token("jti-to-revoke", expires)

    async def refused() -> bool:
        response = await call(gateway, "/read/x", headers=bearer(revoked))
        return response.status_code == 401

    assert await within(refused, 1.0) < 1.0
    assert (await call(gateway, "/read/x", headers=bearer(kept))).status_code == 200


# --- rate limits ------------------------------------------------------------------------------


async def test_rate_limit_by_client_counts_per_client_else_per_api_key(
    gateway: Gateway, auth: StandInAuth
) -> None:
    async def statuses(headers: dict[str, str], times: int = 3) -> list[int]:
        return [
            (await call(gateway, "/limited/x", headers=headers)).status_code for _ in range(times)
        ]

    first = auth.client_token(client_id="cl_limited_1")
    # Another token of the same client shares its budget: the budget is the application's.
    again = auth.client_token(client_id="cl_limited_1")
    assert await statuses(bearer(first), 2) == [200, 200]
    refused = await call(gateway, "/limited/x", headers=bearer(again))
    assert_problem(refused, 429, "gateway.rate_limited")
    assert await statuses(bearer(auth.client_token(client_id="cl_limited_2")), 1) == [200]
    # Without a client token the calling application is its API key.
    key_a, _ = auth.issue_key()
    key_b, _ = auth.issue_key()
    assert await statuses({"x-api-key": key_a}) == [200, 200, 429]
    assert await statuses({"x-api-key": key_b}, 1) == [200]


# --- observability ----------------------------------------------------------------------------


async def test_access_log_and_metrics_name_the_client(
    gateway: Gateway, auth: StandInAuth, access_log: Path
) -> None:
    token = auth.client_token(client_id="cl_observed")
    response = await call(gateway, "/read/logged", headers=bearer(token))
    assert response.status_code == 200
    key, _ = auth.issue_key()
    assert (await call(gateway, "/read/unlogged", headers={"x-api-key": key})).status_code == 200

    def lines() -> dict[str, dict[str, Any]]:
        text = access_log.read_text() if access_log.exists() else ""
        return {line["path"]: line for line in access_lines(text)}

    deadline = time.monotonic() + 5
    while not {"/read/logged", "/read/unlogged"} <= set(lines()):
        assert time.monotonic() < deadline, "access log lines not written"
        await asyncio.sleep(0.05)
    found = lines()
    assert found["/read/logged"]["client_id"] == "cl_observed"
    assert found["/read/logged"]["user_id"] is None
    assert found["/read/unlogged"]["client_id"] is None
    assert token not in access_log.read_text()  # never a credential

    result = scrape(gateway)
    observed = result.value(
        "gateway_requests_total", route="/read/*", status="200", client="cl_observed"
    )
    assert observed == 1
    # Requests without a client token have an empty client label (Prometheus: no label).
    unnamed = result.value("gateway_requests_total", route="/read/*", status="200", client="")
    assert unnamed is not None
    assert unnamed >= 1
