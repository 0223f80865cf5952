"""Security per route through a real gateway process: API keys, JWT and roles, revocations,
identity headers, header and query allow-lists, CORS and rate limits.

Auth is a stand-in on a NATS server private to this module (security_support.py), answering the
real subjects; the backend is the echo app, which reports the headers and query it received.
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
from security_support import StandInAuth, start_nats

from mosaic_devstack.embedded import EmbeddedNats

PROBLEM = "application/problem+json"
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = start_nats(tmp_path_factory.mktemp("security-nats"))
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


def security_config(echo: Backend, nats_url: str, **extra: Any) -> dict[str, Any]:
    route = {"methods": ["GET", "POST"], "backend": "echo"}
    return {
        "nats": {"url": nats_url},
        "defaults": {
            "auth": {"api_key": "required"},
            "headers": {"allow": ["accept", "content-type", "x-allowed"]},
            "query": {"allow": ["limit"]},
        },
        "backends": {"echo": {"instances": [echo.url]}},
        "routes": [
            {**route, "path": "/keyed/*"},
            {**route, "path": "/open/*", "auth": {"api_key": "off"}},
            {**route, "path": "/user/*", "auth": {"jwt": "required"}},
            {**route, "path": "/maybe/*", "auth": {"jwt": "optional"}},
            {**route, "path": "/admin/*", "auth": {"roles": ["ADMIN", "EDITOR"]}},
            {
                **route,
                "path": "/query/*",
                "query": {"allow": ["tag", "q"]},
                "headers": {"allow": ["x-more"]},
            },
            {
                **route,
                "path": "/cors/*",
                "cors": {
                    "origins": [ORIGIN],
                    "methods": ["GET", "POST"],
                    "headers": ["content-type", "x-api-key"],
                    "expose_headers": ["x-request-id"],
                },
            },
            {
                **route,
                "path": "/limited/*",
                "rate_limit": {"requests": 3, "per": "1m", "by": "api_key"},
            },
            {
                **route,
                "path": "/by-address/*",
                "auth": {"api_key": "off"},
                "rate_limit": {"requests": 2, "per": "1m"},
            },
        ],
        **extra,
    }


@pytest.fixture(scope="module")
async def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    echo: Backend,
    nats_server: EmbeddedNats,
    auth: StandInAuth,
) -> AsyncIterator[Gateway]:
    factory = GatewayFactory(tmp_path_factory.mktemp("security-gw"))
    gw = factory(security_config(echo, nats_server.url))
    yield gw
    await factory.close()


async def call(gw: Gateway, path: str, **kwargs: Any) -> httpx.Response:
    method = kwargs.pop("method", "GET")
    return await gw.client().request(method, path, **kwargs)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    return body


def seen_headers(response: httpx.Response) -> dict[str, str]:
    return dict(response.json()["headers"])


async def eventually(check: Any, within: float) -> float:
    """Poll `check()` (async, returns bool) until true; the seconds it took, or fail."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > within:
            pytest.fail(f"not true within {within} s")
        await asyncio.sleep(0.02)


# --- API keys ---------------------------------------------------------------------------------


async def test_missing_api_key_is_401_and_unknown_key_403(
    gateway: Gateway, auth: StandInAuth
) -> None:
    assert_problem(await call(gateway, "/keyed/a"), 401, "auth.apikey_missing")
    bad = await call(gateway, "/keyed/a", headers={"x-api-key": "mk_nope"})
    assert_problem(bad, 403, "auth.apikey_invalid")
    key, _ = auth.issue_key()
    ok = await call(gateway, "/keyed/a", headers={"x-api-key": key})
    assert ok.status_code == 200
    # Not in the route's allow-list: the key itself does not travel on to the backend.
    assert "x-api-key" not in seen_headers(ok)


async def test_accepted_key_is_cached(gateway: Gateway, auth: StandInAuth) -> None:
    key, _ = auth.issue_key()
    before = auth.verify_calls
    for _ in range(5):
        assert (await call(gateway, "/keyed/b", headers={"x-api-key": key})).status_code == 200
    assert auth.verify_calls - before == 1


async def test_route_without_api_key_needs_none(gateway: Gateway) -> None:
    assert (await call(gateway, "/open/x")).status_code == 200


async def test_revoked_api_key_is_refused_within_a_second(
    gateway: Gateway, auth: StandInAuth
) -> None:
    key, _ = auth.issue_key()
    assert (await call(gateway, "/keyed/c", headers={"x-api-key": key})).status_code == 200
    await auth.revoke_key(key)

    async def refused() -> bool:
        response = await call(gateway, "/keyed/c", headers={"x-api-key": key})
        return response.status_code == 403

    assert await eventually(refused, within=1.0) < 1.0


# --- tokens and roles -------------------------------------------------------------------------


async def test_jwt_required(gateway: Gateway, auth: StandInAuth) -> None:
    key, _ = auth.issue_key()
    headers = {"x-api-key": key}
    missing = await call(gateway, "/user/me", headers=headers)
    assert_problem(missing, 401, "auth.token_missing")
    assert missing.headers["www-authenticate"] == "Bearer"
    for bad in ("Basic abc", "Bearer", "Bearer a b", "Bearer not.a.jwt"):
        response = await call(gateway, "/user/me", headers={**headers, "authorization": bad})
        assert_problem(response, 401, "auth.token_invalid")
    expired = auth.token(iat=int(time.time()) - 3600, exp=int(time.time()) - 600)
    response = await call(
        gateway, "/user/me", headers={**headers, "authorization": f"Bearer {expired}"}
    )
    assert_problem(response, 401, "auth.token_expired")
    forged = StandInAuth()
    forged.kid = auth.kid  # same key id, another key: the signature cannot verify
    response = await call(
        gateway, "/user/me", headers={**headers, "authorization": f"Bearer {forged.token()}"}
    )
    assert_problem(response, 401, "auth.token_invalid")


async def test_verified_caller_is_forwarded_as_headers_and_spoofs_stripped(
    gateway: Gateway, auth: StandInAuth
) -> None:
    key, _ = auth.issue_key()
    token = auth.token(roles=["AUTHOR", "LEARNER"], user_id="11111111-1111-1111-1111-111111111111")
    spoof = {"x-user-id": "attacker", "x-user-roles": "ADMIN"}
    for _ in range(2):  # the first verifies the signature, the second hits the cache
        response = await call(
            gateway,
            "/user/me",
            headers={"x-api-key": key, "authorization": f"Bearer {token}", **spoof},
        )
        assert response.status_code == 200
        seen = seen_headers(response)
        assert seen["x-user-id"] == "11111111-1111-1111-1111-111111111111"
        assert seen["x-user-roles"] == "AUTHOR,LEARNER"
        # The token itself goes on: the route uses it, so `authorization` is implied.
        assert seen["authorization"] == f"Bearer {token}"
    # Without a token (optional route) the spoofed identity headers are dropped all the same.
    anonymous = await call(gateway, "/maybe/x", headers={"x-api-key": key, **spoof})
    assert anonymous.status_code == 200
    assert "x-user-id" not in seen_headers(anonymous)
    assert "x-user-roles" not in seen_headers(anonymous)


async def test_roles_any_of(gateway: Gateway, auth: StandInAuth) -> None:
    key, _ = auth.issue_key()

    async def with_roles(roles: list[str]) -> httpx.Response:
        token = auth.token(roles=roles)
        return await call(
            gateway, "/admin/x", headers={"x-api-key": key, "authorization": f"Bearer {token}"}
        )

    body = assert_problem(await with_roles(["LEARNER", "AUTHOR"]), 403, "auth.forbidden")
    assert "ADMIN" in body["detail"]
    assert "EDITOR" in body["detail"]
    assert (await with_roles(["EDITOR"])).status_code == 200
    assert (await with_roles(["ADMIN"])).status_code == 200
    no_token = await call(gateway, "/admin/x", headers={"x-api-key": key})
    assert_problem(no_token, 401, "auth.token_missing")


async def test_signed_out_session_is_refused_within_a_second(
    gateway: Gateway, auth: StandInAuth
) -> None:
    key, _ = auth.issue_key()
    token = auth.token(session_id="session-to-end")
    headers = {"x-api-key": key, "authorization": f"Bearer {token}"}
    assert (await call(gateway, "/user/me", headers=headers)).status_code == 200
    await auth.revoke_session("session-to-end")

    async def refused() -> bool:
        response = await call(gateway, "/user/me", headers=headers)
        if response.status_code == 401:
            assert response.json()["code"] == "auth.token_revoked"
            return True
        return False

    assert await eventually(refused, within=1.0) < 1.0


# --- allow-lists ------------------------------------------------------------------------------


async def test_header_allow_list_denies_by_default(gateway: Gateway, auth: StandInAuth) -> None:
    key, _ = auth.issue_key()
    response = await call(
        gateway,
        "/keyed/h",
        headers={
            "x-api-key": key,
            "x-allowed": "yes",
            "x-secret-internal": "no",
            "cookie": "session=1",
            "accept": "application/json",
        },
    )
    seen = seen_headers(response)
    assert seen["x-allowed"] == "yes"
    assert seen["accept"] == "application/json"
    assert "x-secret-internal" not in seen
    assert "cookie" not in seen
    # What the data path sets itself still arrives.
    assert "x-request-id" in seen
    assert "x-forwarded-for" in seen


async def test_query_allow_list_and_route_additions(gateway: Gateway, auth: StandInAuth) -> None:
    key, _ = auth.issue_key()
    headers = {"x-api-key": key}
    response = await call(gateway, "/keyed/q?limit=5&debug=1&limit=6", headers=headers)
    assert response.json()["query"] == "limit=5&limit=6"
    only_denied = await call(gateway, "/keyed/q?debug=1", headers=headers)
    assert only_denied.json()["query"] == ""
    # A route's own lists add to the defaults'.
    response = await call(
        gateway,
        "/query/q?tag=GO&q=x&limit=1&admin=1",
        headers={**headers, "x-more": "1", "x-allowed": "1", "x-other": "1"},
    )
    assert response.json()["query"] == "tag=GO&q=x&limit=1"
    seen = seen_headers(response)
    assert "x-more" in seen
    assert "x-allowed" in seen
    assert "x-other" not in seen


# --- CORS -------------------------------------------------------------------------------------


async def test_cors_preflight_and_response_headers(gateway: Gateway, auth: StandInAuth) -> None:
    preflight = await call(
        gateway,
        "/cors/x",
        method="OPTIONS",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, x-api-key",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "content-type, x-api-key"
    # No API key asked of a preflight: browsers never send credentials with one.
    other = await call(
        gateway,
        "/cors/x",
        method="OPTIONS",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert_problem(other, 403, "gateway.cors_forbidden")
    bad_header = await call(
        gateway,
        "/cors/x",
        method="OPTIONS",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "GET",
            "access-control-request-headers": "x-not-allowed",
        },
    )
    assert bad_header.status_code == 403

    key, _ = auth.issue_key()
    actual = await call(gateway, "/cors/x", headers={"origin": ORIGIN, "x-api-key": key})
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == ORIGIN
    assert actual.headers["access-control-expose-headers"] == "x-request-id"
    # An error the gateway answers carries them too, so the page can read the problem.
    refused = await call(gateway, "/cors/x", headers={"origin": ORIGIN})
    assert_problem(refused, 401, "auth.apikey_missing")
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    # A route without CORS settings answers no preflight: OPTIONS is not one of its methods.
    assert (
        await call(
            gateway,
            "/keyed/x",
            method="OPTIONS",
            headers={"origin": ORIGIN, "access-control-request-method": "GET"},
        )
    ).status_code == 405


# --- rate limits ------------------------------------------------------------------------------


async def test_rate_limit_per_api_key(gateway: Gateway, auth: StandInAuth) -> None:
    first, _ = auth.issue_key()
    second, _ = auth.issue_key()
    statuses = [
        (await call(gateway, "/limited/x", headers={"x-api-key": first})).status_code
        for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 429]
    refused = await call(gateway, "/limited/x", headers={"x-api-key": first})
    assert_problem(refused, 429, "gateway.rate_limited")
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Another key has a budget of its own.
    assert (await call(gateway, "/limited/x", headers={"x-api-key": second})).status_code == 200


async def test_rate_limit_per_address(gateway: Gateway) -> None:
    statuses = [(await call(gateway, "/by-address/x")).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_shared_rate_limit_across_two_gateway_replicas(
    tmp_path: Path, echo: Backend, nats_server: EmbeddedNats, auth: StandInAuth
) -> None:
    factory = GatewayFactory(tmp_path)
    try:
        config = {
            "nats": {"url": nats_server.url},
            "rate_limits": {"store": "nats", "bucket": "test_gateway_limits"},
            "defaults": {"headers": {"allow": ["*"]}, "query": {"allow": ["*"]}},
            "backends": {"echo": {"instances": [echo.url]}},
            "routes": [
                {
                    "path": "/shared/*",
                    "methods": ["GET"],
                    "backend": "echo",
                    "rate_limit": {"requests": 5, "per": "1m", "shared": True},
                }
            ],
        }
        replicas = [factory(config), factory(config)]
        statuses = []
        for index in range(10):
            response = await call(replicas[index % 2], f"/shared/{index}")
            statuses.append(response.status_code)
        assert statuses.count(200) == 5, statuses
        assert statuses.count(429) == 5, statuses
    finally:
        await factory.close()


# --- configuration ----------------------------------------------------------------------------


async def test_security_without_nats_is_a_configuration_error(tmp_path: Path) -> None:
    from mosaic_gateway.config import ConfigError, parse_config

    text = (
        "backends:\n"
        "  a: {instances: [http://127.0.0.1:1]}\n"
        "routes:\n"
        "  - path: /x\n"
        "    methods: [GET]\n"
        "    backend: a\n"
        "    auth: {jwt: required}\n"
        "    rate_limit: {requests: 1, per: 1s, shared: true}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    messages = [str(issue) for issue in caught.value.issues]
    assert any(m.startswith("gw.yaml:7:") and "routes[0].auth.jwt" in m for m in messages)
    assert any("routes[0].rate_limit.shared" in m and "rate_limits.store" in m for m in messages)
    with pytest.raises(ConfigError) as caught:
        parse_config(text.replace("jwt: required", "roles: [admin]"), "gw.yaml")
    assert any("is not a role name" in str(issue) for issue in caught.value.issues)
