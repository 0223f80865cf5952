"""Hostile requests through a real gateway process in front of a real echo backend: identity
headers a client tries to claim, encoded path tricks meant to reach the backend as traversal,
and attempts to poison the response cache with a forwarded `Host` or other unkeyed inputs.

The echo backend reports what it received (headers, raw path) and counts the requests it served
(`/__stats`): "never reached" is asserted on that count, not inferred from the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from gateway_support import (
    Backend,
    BackendFactory,
    Gateway,
    GatewayFactory,
    RawConnection,
    RawResponse,
    gateway_config,
)

from mosaic_gateway.routing import paths

pytestmark = pytest.mark.timeout(60)

PROBLEM = "application/problem+json"
# Spellings of the identity headers a backend could take for the real ones: any case, and `_`
# for `-` (CGI/WSGI and several frameworks fold both to the same name).
SPOOFED = (
    b"X-User-Id: attacker\r\n"
    b"x-user-id: attacker-2\r\n"
    b"X_User_Id: attacker-3\r\n"
    b"x-user_id: attacker-4\r\n"
    b"X-USER-ROLES: ADMIN\r\n"
    b"x_user_roles: ADMIN\r\n"
    # Claim headers configured on *another* route (see the /claimed route below).
    b"X-Session-Id: stolen-session\r\n"
    b"x_key_name: stolen-key\r\n"
)
IDENTITY = {"x-user-id", "x-user-roles", "x-session-id", "x-key-name"}


@dataclass
class Setup:
    gateway: Gateway
    echo: Backend

    def served(self) -> int:
        return int(self.echo.stats()["requests"])


@pytest.fixture(scope="module")
async def setup(
    shared_backends: BackendFactory, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Setup]:
    echo = shared_backends("hardening-echo")
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway"))
    config = gateway_config(  # defaults: `*` header and query allow-lists, no auth
        {"echo": {"instances": [echo.url]}},
        [
            # No policy at all: nothing to check, everything allowed.
            {"path": "/open/*", "methods": ["GET", "POST"], "backend": "echo"},
            # Forwards claims as headers of its own choosing; no auth here (the names are what
            # matters: every route must strip them).
            {
                "path": "/claimed/*",
                "methods": ["GET"],
                "backend": "echo",
                "claims": {"sid": "x-session-id", "api_key.name": "x-key-name"},
            },
            # A policy (a query allow-list) whose header allow-list names an identity header.
            {
                "path": "/filtered/*",
                "methods": ["GET"],
                "backend": "echo",
                "headers": {"allow": ["x-user-id", "x-session-id"]},
                "query": {"allow": ["q"]},
            },
            {
                "path": "/agg/{id}",
                "methods": ["GET"],
                "aggregate": {
                    "backends": [
                        {"backend": "echo", "path": "/seen/{id}", "group": "seen"},
                        {"backend": "echo", "path": "/again/{id}", "group": "again"},
                    ]
                },
            },
            # A later call's path built from an earlier answer: the echo's `path` holds slashes.
            {
                "path": "/chain/{id}",
                "methods": ["GET"],
                "aggregate": {
                    "sequential": True,
                    "backends": [
                        {"backend": "echo", "path": "/first/{id}", "group": "first"},
                        {"backend": "echo", "path": "/second/{resp0.path}", "group": "second"},
                        {"backend": "echo", "path": "/third/{resp0.method}", "group": "third"},
                        {"backend": "echo", "path": "/fourth?from={resp0.path}", "group": "q"},
                    ],
                },
            },
            {"path": "/items/{id}", "methods": ["GET"], "backend": "echo"},
            {"path": "/items/{id}/notes", "methods": ["GET"], "backend": "echo"},
            {"path": "/files/*", "methods": ["GET"], "backend": "echo"},
            {"path": "/cached/*", "methods": ["GET"], "backend": "echo", "cache": {"ttl": "60s"}},
            {
                "path": "/cached-gzip/*",
                "methods": ["GET"],
                "backend": "echo",
                "cache": {"ttl": "60s", "vary_headers": ["accept-encoding"]},
            },
        ],
    )
    gateway = factory(config)
    yield Setup(gateway, echo)
    await factory.close()


async def raw_get(
    setup: Setup, target: bytes, extra: bytes = b"", host: bytes = b""
) -> RawResponse:
    conn = await RawConnection.open(setup.gateway.port)
    try:
        host_line = b"host: " + (host or b"127.0.0.1:%d" % setup.gateway.port) + b"\r\n"
        await conn.send(b"GET " + target + b" HTTP/1.1\r\n" + host_line + extra + b"\r\n")
        return await conn.read_response()
    finally:
        await conn.close()


def received_names(seen: dict[str, Any]) -> set[str]:
    """The header names the backend saw, folded the way a lenient backend would fold them."""
    return {name.lower().replace("_", "-") for name, _ in seen["headers"]}


# --- #2: identity headers are never taken from the client ----------------------------------


@pytest.mark.parametrize("target", [b"/open/x", b"/claimed/x", b"/filtered/x?q=1"])
async def test_hardening_spoofed_identity_never_reaches_a_proxied_backend(
    setup: Setup, target: bytes
) -> None:
    response = await raw_get(setup, target, SPOOFED + b"x-kept: yes\r\n")
    assert response.status == 200
    seen = response.json()
    assert received_names(seen) & IDENTITY == set()
    if target == b"/open/x":  # the allow-all route still forwards ordinary headers
        assert ["x-kept", "yes"] in seen["headers"]


async def test_hardening_spoofed_identity_never_reaches_aggregated_calls(setup: Setup) -> None:
    response = await raw_get(setup, b"/agg/7", SPOOFED + b"x-kept: yes\r\n")
    assert response.status == 200
    document = response.json()
    for group in ("seen", "again"):
        assert document[group]["path"] == f"/{group}/7"
        assert received_names(document[group]) & IDENTITY == set()
        assert ["x-kept", "yes"] in document[group]["headers"]


async def test_hardening_a_chained_field_never_spans_path_segments(setup: Setup) -> None:
    before = setup.served()
    response = await raw_get(setup, b"/chain/7")
    assert response.status == 200
    assert response.header("x-mosaic-missing") == "second"
    document = response.json()
    assert document["first"]["path"] == "/first/7"
    assert document["third"]["path"] == "/third/GET"
    # In a query value a `/` is only data: that call is made.
    assert document["q"]["query"] == "from=%2Ffirst%2F7"
    assert setup.served() == before + 3


# --- #3: encoded path tricks are refused before routing ------------------------------------

TRICKS = [
    b"/items/..%2Fadmin",
    b"/items/..%2fadmin/notes",
    b"/items/a%2Fb",
    b"/items/a%5Cb",
    b"/items/..%5cadmin",
    b"/files/%2e%2e/admin",
    b"/files/%2E%2e/admin",
    b"/files/.%2e/admin",
    b"/files/%2e./admin",
    b"/files/%2e%2e%2fadmin",
    b"/files/%2e",
    b"/files/../admin",
    b"/files/./admin",
    b"/files/..;/admin",
    b"/files/%2e%2e;x/admin",
    b"/files/a\\..\\admin",
    b"/files/..\\admin",
    b"/files/%252e%252e/admin",
    b"/files/%252F",
    b"/files/a%25255cb",
    b"/files/%2525252e",
    b"/files/a%00b",
    b"/files/a%0d%0aX-Injected:%20yes",
    b"/files/a%7Fb",
    b"/agg/..%2F__stats",
    b"/agg/%2e%2e",
]


@pytest.mark.parametrize("target", TRICKS, ids=[t.decode() for t in TRICKS])
async def test_hardening_encoded_path_tricks_are_refused_unforwarded(
    setup: Setup, target: bytes
) -> None:
    before = setup.served()
    response = await raw_get(setup, target)
    assert response.status == 400
    assert response.header("content-type") == PROBLEM
    assert response.json()["code"] == "gateway.bad_path"
    assert setup.served() == before


async def test_hardening_raw_control_bytes_in_the_path_are_refused_by_the_parser(
    setup: Setup,
) -> None:
    before = setup.served()
    response = await raw_get(setup, b"/files/a\x00b")
    assert response.status == 400
    assert response.json()["code"] == "gateway.bad_request"
    assert setup.served() == before


@pytest.mark.parametrize(
    "target",
    [b"/files/100%25", b"/files/caf%C3%A9", b"/files/a%20b", b"/files/...", b"/files/a.b"],
)
async def test_hardening_ordinary_encoded_paths_still_pass_unchanged(
    setup: Setup, target: bytes
) -> None:
    response = await raw_get(setup, target)
    assert response.status == 200
    assert response.json()["raw_path"] == target.decode()


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        (b"/v1/posts/abc", False),
        (b"/", False),
        (b"/v1/tags/100%25", False),
        (b"/v1/tags/50%2541", False),  # 50%41 -> 50A: nothing dangerous at any level
        (b"/v1/a%zz", False),
        (b"/v1/...", False),
        (b"/v1/.hidden", False),
        (b"/v1/a;b", False),
        (b"/v1/%2e%2e%2e", False),
        (b"/v1/..", True),
        (b"/v1/.", True),
        (b"/v1/%2E", True),
        (b"/v1/.%2E", True),
        (b"/v1/..;jsessionid=1", True),
        (b"/v1/a%2Fb", True),
        (b"/v1/a%2fb", True),
        (b"/v1/a%5cb", True),
        (b"/v1/a\\b", True),
        (b"/v1/a%00", True),
        (b"/v1/a%09b", True),
        (b"/v1/%252e%252E", True),
        (b"/v1/%25252e%25252e", True),
        (b"/v1/a%252fb", True),
        (b"/v1/%25252525", True),  # still encoded after MAX_DECODES
    ],
)
def test_hardening_path_rule(path: bytes, refused: bool) -> None:
    problem = paths.refusal(path)
    assert (problem is not None) == refused
    if problem is not None:
        assert problem.status == 400
        assert problem.code == "gateway.bad_path"


# --- #5: the cache key holds everything forwarded that can change the answer ---------------


async def test_hardening_a_foreign_host_cannot_poison_the_cache(setup: Setup) -> None:
    normal = b"127.0.0.1:%d" % setup.gateway.port
    poisoned = await raw_get(setup, b"/cached/host", host=b"evil.example")
    assert poisoned.status == 200
    assert poisoned.header("x-cache") == "MISS"
    assert ["x-forwarded-host", "evil.example"] in poisoned.json()["headers"]
    # Stored under the foreign host only: the normal host misses, then hits its own entry.
    for expected in ("MISS", "HIT"):
        response = await raw_get(setup, b"/cached/host", host=normal)
        assert response.header("x-cache") == expected
        forwarded = [v for n, v in response.json()["headers"] if n == "x-forwarded-host"]
        assert forwarded == [normal.decode()]
    again = await raw_get(setup, b"/cached/host", host=b"evil.example")
    assert again.header("x-cache") == "HIT"
    assert ["x-forwarded-host", "evil.example"] in again.json()["headers"]


@pytest.mark.parametrize(
    "steering",
    [
        b"x-original-url: /admin",
        b"x-rewrite-url: /admin",
        b"x-forwarded-prefix: /evil",
        b"x-forwarded-port: 1",
        b"x-forwarded-scheme: nothttps",
        b"forwarded: host=evil.example;proto=https",
        b"x-host: evil.example",
        b"x-http-method-override: DELETE",
    ],
)
async def test_hardening_unkeyed_request_steering_headers_bypass_the_cache(
    setup: Setup, steering: bytes
) -> None:
    target = b"/cached/steer-" + steering.partition(b":")[0]
    steered = await raw_get(setup, target, steering + b"\r\n")
    assert steered.header("x-cache") == "BYPASS"
    plain = await raw_get(setup, target)
    assert plain.header("x-cache") == "MISS"
    assert steering.partition(b":")[0].decode() not in received_names(plain.json())


async def test_hardening_an_encoded_answer_is_kept_only_when_the_key_varies_on_it(
    setup: Setup,
) -> None:
    gzip = b"accept-encoding: gzip\r\nx-test-response-header: content-encoding: gzip\r\n"
    first = await raw_get(setup, b"/cached/encoded", gzip)
    assert first.header("x-cache") == "MISS"
    assert first.header("content-encoding") == "gzip"
    plain = await raw_get(setup, b"/cached/encoded", b"accept-encoding: identity\r\n")
    assert plain.header("x-cache") == "MISS"
    assert plain.header("content-encoding") is None
    # With the key varying on accept-encoding, the compressed answer is kept for gzip clients.
    await raw_get(setup, b"/cached-gzip/encoded", gzip)
    again = await raw_get(setup, b"/cached-gzip/encoded", gzip)
    assert again.header("x-cache") == "HIT"
    assert again.header("content-encoding") == "gzip"
    other = await raw_get(setup, b"/cached-gzip/encoded", b"accept-encoding: identity\r\n")
    assert other.header("x-cache") == "MISS"
