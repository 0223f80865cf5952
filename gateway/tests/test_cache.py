"""The response cache for GET per route, through a real gateway process in front of a real
backend process (its echo answers carry `served`, a counter that changes with every answer it
makes, so a stored answer is told from a fresh one), with real NATS for invalidation events."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import (
    Backend,
    BackendFactory,
    Gateway,
    GatewayFactory,
    RawConnection,
    RawResponse,
    eventually,
    gateway_config,
)

from mosaic_devstack.embedded import EmbeddedNats
from mosaic_gateway.config import ConfigError, parse_config
from mosaic_kit.nats.connection import Client, connect

pytestmark = pytest.mark.timeout(120)

ROUTES: list[dict[str, Any]] = [
    {
        "path": "/cached/*",
        "methods": ["GET"],
        "backend": "echo",
        "query": {"allow": ["page"]},
        "cache": {"ttl": "30s", "vary_headers": ["accept"], "invalidate_on": ["blog.blog.*"]},
    },
    {
        "path": "/users/*",
        "methods": ["GET"],
        "backend": "echo",
        "cache": {"ttl": "30s", "invalidate_on": ["auth.user.updated"]},
    },
    {"path": "/short/*", "methods": ["GET"], "backend": "echo", "cache": {"ttl": "1s"}},
    {
        "path": "/personal/*",
        "methods": ["GET"],
        "backend": "echo",
        "cache": {"ttl": "30s", "vary_headers": ["authorization"]},
    },
    {
        "path": "/notfound/*",
        "methods": ["GET"],
        "backend": "echo",
        "cache": {"ttl": "30s", "statuses": [200, 404]},
    },
    {"path": "/writes/*", "methods": ["GET", "POST"], "backend": "echo", "cache": {"ttl": "30s"}},
    {"path": "/plain/*", "methods": ["GET"], "backend": "echo"},
]


def cache_config(
    backend: Backend, routes: list[dict[str, Any]], nats_url: str | None = None, **top: Any
) -> dict[str, Any]:
    # Route allow-lists add to the defaults': keep the query allow-list per route, so that
    # /cached/* can show the key holding only the allowed parameters.
    routes = [{"query": {"allow": ["*"]}, **route} for route in routes]
    config = gateway_config({"echo": {"instances": [backend.url]}}, routes)
    config["defaults"] = {"headers": {"allow": ["*"]}}
    if nats_url is not None:
        config["nats"] = {"url": nats_url}
    config.update(top)
    return config


@dataclass
class Setup:
    gateway: Gateway
    backend: Backend

    def client(self) -> httpx.AsyncClient:
        """One connection, so one worker: requests in a test see the same cache."""
        return self.gateway.client(limits=httpx.Limits(max_connections=1))

    def backend_requests(self) -> int:
        return int(self.backend.stats()["requests"])


@pytest.fixture(scope="module")
async def setup(
    shared_backends: BackendFactory, tmp_path_factory: pytest.TempPathFactory, nats_url: str
) -> AsyncIterator[Setup]:
    echo = shared_backends("echo")
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway"))
    gateway = factory(cache_config(echo, ROUTES, nats_url))
    yield Setup(gateway, echo)
    await factory.close()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(nats_url, "test-gateway-cache")
    yield client
    await client.close()


def served(response: httpx.Response | RawResponse) -> int:
    return int(response.json()["served"])


async def publish_event(nc: Client, event_type: str) -> None:
    """What the outbox of a service would publish (a plain publish reaches the same subject)."""
    envelope = {
        "id": "e-" + event_type,
        "type": event_type,
        "occurredAt": "2024-01-01T00:00:00Z",
        "data": {"id": "b1"},
    }
    await nc.publish("events." + event_type, json.dumps(envelope).encode())
    await nc.flush()


# --- hits, misses and the key -----------------------------------------------------------------


async def test_a_miss_is_stored_and_the_next_read_is_a_hit(setup: Setup) -> None:
    client = setup.client()
    before = setup.backend_requests()
    first = await client.get("/cached/one", headers={"x-request-id": "first-1"})
    assert first.status_code == 200
    assert first.headers["x-cache"] == "MISS"
    second = await client.get("/cached/one", headers={"x-request-id": "second-2"})
    assert second.status_code == 200
    assert second.headers["x-cache"] == "HIT"
    assert setup.backend_requests() == before + 1
    assert second.content == first.content
    # Stored: the upstream's headers; made per request: id, date, age.
    assert second.headers["x-request-id"] == "second-2"
    assert second.headers["x-backend"] == "echo"
    assert second.headers["content-type"] == "application/json"
    assert int(second.headers["content-length"]) == len(second.content)
    assert int(second.headers["age"]) in (0, 1)
    assert second.headers["date"]
    assert len(second.headers.get_list("date")) == 1
    third = await client.get("/cached/one")
    assert third.headers["x-cache"] == "HIT"
    assert third.headers["x-request-id"] not in ("first-1", "second-2")


async def test_pipelined_hits_are_answered_in_order_and_close_is_honoured(setup: Setup) -> None:
    conn = await RawConnection.open(setup.gateway.port)
    try:
        await conn.send(b"GET /cached/pipe HTTP/1.1\r\nhost: gw\r\n\r\n")
        stored = await conn.read_response()
        assert stored.header("x-cache") == "MISS"
        await conn.send(
            b"GET /cached/pipe HTTP/1.1\r\nhost: gw\r\nx-request-id: p-1\r\n\r\n"
            b"HEAD /cached/pipe HTTP/1.1\r\nhost: gw\r\nx-request-id: p-2\r\n\r\n"
            b"GET /cached/pipe HTTP/1.1\r\nhost: gw\r\nx-request-id: p-3\r\n"
            b"connection: close\r\n\r\n"
        )
        first = await conn.read_response()
        assert (first.header("x-cache"), first.header("x-request-id")) == ("HIT", "p-1")
        assert first.body == stored.body
        assert not first.chunked  # stored whole: sent with a content-length
        # A HEAD's head announces the GET's length; no body follows.
        head = await conn.reader.readuntil(b"\r\n\r\n")
        assert b"x-request-id: p-2" in head
        assert f"content-length: {len(stored.body)}".encode() in head
        last = await conn.read_response()
        assert (last.header("x-cache"), last.header("x-request-id")) == ("HIT", "p-3")
        assert last.header("connection") == "close"
        assert last.body == stored.body
        assert await conn.closed_by_peer()
    finally:
        await conn.close()


async def test_routes_without_a_cache_carry_no_label(setup: Setup) -> None:
    client = setup.client()
    first = await client.get("/plain/a")
    second = await client.get("/plain/a")
    assert "x-cache" not in first.headers
    assert "x-cache" not in second.headers
    assert served(second) > served(first)


async def test_the_key_is_the_path_the_allowed_query_and_the_vary_headers(setup: Setup) -> None:
    client = setup.client()

    async def label(path: str, **headers: str) -> tuple[str, int]:
        response = await client.get(path, headers=headers)
        assert response.status_code == 200
        return response.headers["x-cache"], served(response)

    state, page1 = await label("/cached/q?page=1")
    assert state == "MISS"
    # `junk` is not allowed through: the upstream sees (and the key holds) `page=1` only.
    assert await label("/cached/q?page=1&junk=x") == ("HIT", page1)
    assert (await label("/cached/q?page=2"))[0] == "MISS"
    assert (await label("/cached/q"))[0] == "MISS"
    assert (await label("/cached/other?page=1"))[0] == "MISS"
    state, json_answer = await label("/cached/q?page=1", accept="application/json")
    assert state == "MISS"
    assert await label("/cached/q?page=1", accept="application/json") == ("HIT", json_answer)
    assert (await label("/cached/q?page=1", accept="text/html"))[0] == "MISS"
    assert await label("/cached/q?page=1") == ("HIT", page1)  # httpx's default `accept: */*`
    assert await label("/cached/q?page=2") == ("HIT", page1 + 1)


async def test_head_is_answered_from_the_get_entry(setup: Setup) -> None:
    client = setup.client()
    head_first = await client.head("/cached/h")
    assert head_first.headers["x-cache"] == "MISS"  # a HEAD's answer has no body to keep
    got = await client.get("/cached/h")
    assert got.headers["x-cache"] == "MISS"
    before = setup.backend_requests()
    head = await client.head("/cached/h")
    assert head.status_code == 200
    assert head.headers["x-cache"] == "HIT"
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(got.content)
    assert setup.backend_requests() == before
    # The connection is still in step: the next answer is whole.
    again = await client.get("/cached/h")
    assert again.headers["x-cache"] == "HIT"
    assert again.content == got.content


# --- lifetimes ----------------------------------------------------------------------------------


# The lifetimes are whole seconds: every case is stored first, then all wait out one second
# together rather than one after the other.
UPSTREAM_LIFETIMES = ["max-age=1", "public, s-maxage=1, max-age=600", "max-age=1, must-revalidate"]


async def test_entries_expire_after_their_lifetime_and_age_counts_the_seconds(
    setup: Setup,
) -> None:
    client = setup.client()
    # The route's TTL (1 s).
    first = await client.get("/short/x")
    assert first.headers["x-cache"] == "MISS"
    second = await client.get("/short/x")
    assert second.headers["x-cache"] == "HIT"
    assert served(second) == served(first)
    # A shorter upstream lifetime than the route's wins.
    for index, cache_control in enumerate(UPSTREAM_LIFETIMES):
        headers = {"x-test-response-header": f"cache-control: {cache_control}"}
        stored = await client.get(f"/cached/lifetime-{index}", headers=headers)
        assert stored.headers["x-cache"] == "MISS"
        assert stored.headers["cache-control"] == cache_control
        hit = await client.get(f"/cached/lifetime-{index}", headers=headers)
        assert hit.headers["x-cache"] == "HIT"
        assert hit.headers["cache-control"] == cache_control
    # Within the route's TTL (60 s), only older.
    await client.get("/cached/aged")

    await asyncio.sleep(1.2)
    third = await client.get("/short/x")
    assert third.headers["x-cache"] == "MISS"
    assert served(third) > served(first)
    for index, cache_control in enumerate(UPSTREAM_LIFETIMES):
        headers = {"x-test-response-header": f"cache-control: {cache_control}"}
        expired = await client.get(f"/cached/lifetime-{index}", headers=headers)
        assert expired.headers["x-cache"] == "MISS", cache_control
    later = await client.get("/cached/aged")
    assert later.headers["x-cache"] == "HIT"
    assert int(later.headers["age"]) >= 1


async def test_an_upstream_x_cache_header_gives_way_to_the_gateways(setup: Setup) -> None:
    # A service with its own cache (the blog) labels its answers too; one label must remain.
    client = setup.client()
    header = {"x-test-response-header": "x-cache: HIT"}
    miss = await client.get("/cached/labelled", headers=header)
    assert miss.headers.get_list("x-cache") == ["MISS"]
    hit = await client.get("/cached/labelled", headers=header)
    assert hit.headers.get_list("x-cache") == ["HIT"]
    # Routes without a gateway cache pass the service's label through untouched.
    plain = await client.get("/plain/labelled", headers=header)
    assert plain.headers.get_list("x-cache") == ["HIT"]


# --- what is never stored -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "response_header",
    [
        "set-cookie: session=abc",
        "cache-control: no-store",
        "cache-control: private, max-age=60",
        "cache-control: no-cache",
        "cache-control: max-age=0",
        "vary: accept-encoding",
        "vary: *",
    ],
)
async def test_responses_that_must_not_be_shared_are_not_stored(
    setup: Setup, response_header: str
) -> None:
    client = setup.client()
    path = "/cached/personal-" + str(abs(hash(response_header)))
    headers = {"x-test-response-header": response_header}
    first = await client.get(path, headers=headers)
    client.cookies.clear()  # else the second request sends the cookie, and bypasses
    second = await client.get(path, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-cache"] == second.headers["x-cache"] == "MISS"
    assert served(second) > served(first)
    name, _, value = response_header.partition(": ")
    assert second.headers[name] == value  # passed through unchanged


async def test_a_vary_the_key_covers_is_stored(setup: Setup) -> None:
    client = setup.client()
    headers = {"x-test-response-header": "vary: Accept", "accept": "application/json"}
    await client.get("/cached/varied", headers=headers)
    again = await client.get("/cached/varied", headers=headers)
    assert again.headers["x-cache"] == "HIT"
    assert again.headers["vary"] == "Accept"


@pytest.mark.parametrize("status", [500, 503, 404, 201])
async def test_statuses_the_route_does_not_list_are_not_stored(setup: Setup, status: int) -> None:
    client = setup.client()
    headers = {"x-test-status": str(status), "x-test-body": "answer"}
    before = setup.backend_requests()
    for _ in range(2):
        response = await client.get(f"/cached/status-{status}", headers=headers)
        assert response.status_code == status
        assert response.text == "answer"
        assert response.headers["x-cache"] == "MISS"
    # (503 is retried once by default: one more request per read.)
    assert setup.backend_requests() >= before + 2


async def test_a_404_is_kept_when_the_route_lists_it(setup: Setup) -> None:
    client = setup.client()
    headers = {"x-test-status": "404", "x-test-body": "no such blog"}
    first = await client.get("/notfound/x", headers=headers)
    assert (first.status_code, first.headers["x-cache"]) == (404, "MISS")
    before = setup.backend_requests()
    second = await client.get("/notfound/x", headers=headers)
    assert (second.status_code, second.headers["x-cache"], second.text) == (
        404,
        "HIT",
        "no such blog",
    )
    assert setup.backend_requests() == before


async def test_a_response_bigger_than_max_entry_bytes_is_passed_through_not_kept(
    setup: Setup,
) -> None:
    client = setup.client()
    # Default max_entry_bytes is 1 MiB: one announced bigger, one chunked past it.
    for headers in (
        {"x-test-size": str(1024 * 1024 + 1)},
        {"x-test-chunks": "130", "x-test-chunk-size": "8192"},
    ):
        path = "/cached/big-" + next(iter(headers))
        for _ in range(2):
            response = await client.get(path, headers=headers)
            assert response.status_code == 200
            assert response.headers["x-cache"] == "MISS"
        assert len(response.content) == (
            1024 * 1024 + 1 if "x-test-size" in headers else 130 * 8192
        )


# --- requests that bypass or refresh ------------------------------------------------------------


async def test_authorization_and_cookies_bypass_a_shared_cache(setup: Setup) -> None:
    client = setup.client()
    stored = await client.get("/cached/shared")
    assert stored.headers["x-cache"] == "MISS"
    for headers in ({"authorization": "Bearer abc"}, {"cookie": "session=1"}):
        first = await client.get("/cached/shared", headers=headers)
        second = await client.get("/cached/shared", headers=headers)
        assert first.headers["x-cache"] == second.headers["x-cache"] == "BYPASS"
        assert served(stored) < served(first) < served(second)
    still = await client.get("/cached/shared")
    assert still.headers["x-cache"] == "HIT"
    assert served(still) == served(stored)


async def test_varying_on_authorization_makes_a_cache_per_token(setup: Setup) -> None:
    client = setup.client()

    async def read(token: str | None) -> tuple[str, int]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        response = await client.get("/personal/feed", headers=headers)
        return response.headers["x-cache"], served(response)

    state, ann = await read("ann")
    assert state == "MISS"
    assert await read("ann") == ("HIT", ann)
    state, bob = await read("bob")
    assert state == "MISS"
    assert bob != ann
    assert await read("bob") == ("HIT", bob)
    assert await read("ann") == ("HIT", ann)
    state, nobody = await read(None)
    assert state == "MISS"
    assert nobody not in (ann, bob)


async def test_request_cache_control_refreshes_or_bypasses(setup: Setup) -> None:
    client = setup.client()
    first = await client.get("/cached/cc")
    assert first.headers["x-cache"] == "MISS"
    # no-cache: fetched again (a MISS) and the entry replaced by the fresh answer.
    refreshed = await client.get("/cached/cc", headers={"cache-control": "no-cache"})
    assert refreshed.headers["x-cache"] == "MISS"
    assert served(refreshed) > served(first)
    hit = await client.get("/cached/cc")
    assert (hit.headers["x-cache"], served(hit)) == ("HIT", served(refreshed))
    # no-store: not read from the cache, and not stored.
    bypassed = await client.get("/cached/cc", headers={"cache-control": "no-store"})
    assert bypassed.headers["x-cache"] == "BYPASS"
    assert served(bypassed) > served(refreshed)
    after = await client.get("/cached/cc")
    assert (after.headers["x-cache"], served(after)) == ("HIT", served(refreshed))


async def test_a_successful_write_through_the_route_drops_its_entries(setup: Setup) -> None:
    client = setup.client()
    assert (await client.get("/writes/a")).headers["x-cache"] == "MISS"
    assert (await client.get("/writes/a")).headers["x-cache"] == "HIT"
    refused = await client.post("/writes/a", headers={"x-test-status": "409"}, content=b"{}")
    assert refused.status_code == 409
    assert "x-cache" not in refused.headers
    assert (await client.get("/writes/a")).headers["x-cache"] == "HIT"
    written = await client.post("/writes/a", content=b"{}")
    assert written.status_code == 200
    after = await client.get("/writes/a")
    assert after.headers["x-cache"] == "MISS"


# --- coalescing ---------------------------------------------------------------------------------


async def test_concurrent_misses_for_one_key_make_one_upstream_request(setup: Setup) -> None:
    clients = [setup.client() for _ in range(8)]
    before = setup.backend_requests()
    responses = await asyncio.gather(
        *(c.get("/cached/herd", headers={"x-test-sleep": "0.5"}) for c in clients)
    )
    assert [r.status_code for r in responses] == [200] * 8
    assert sorted(r.headers["x-cache"] for r in responses) == ["HIT"] * 7 + ["MISS"]
    assert len({r.content for r in responses}) == 1
    assert setup.backend_requests() == before + 1


async def test_waiters_go_on_alone_when_the_answer_cannot_be_kept(setup: Setup) -> None:
    clients = [setup.client() for _ in range(5)]
    headers = {"x-test-sleep": "0.3", "x-test-response-header": "set-cookie: id=1"}
    before = setup.backend_requests()
    responses = await asyncio.gather(
        *(c.get("/cached/herd-cookie", headers=headers) for c in clients)
    )
    assert [r.status_code for r in responses] == [200] * 5
    assert [r.headers["x-cache"] for r in responses] == ["MISS"] * 5
    # Each answer is the one the backend made for that very request.
    for response in responses:
        echoed = dict(response.json()["headers"])
        assert echoed["x-request-id"] == response.headers["x-request-id"]
    assert setup.backend_requests() == before + 5


# --- invalidation by events ---------------------------------------------------------------------


async def test_events_drop_only_the_routes_that_listed_a_matching_pattern(
    setup: Setup, nc: Client
) -> None:
    client = setup.client()
    for path in ("/cached/e", "/users/e"):
        assert (await client.get(path)).headers["x-cache"] == "MISS"
        assert (await client.get(path)).headers["x-cache"] == "HIT"
    await publish_event(nc, "blog.user.created")  # matches neither pattern
    await publish_event(nc, "auth.user.updated")

    async def users_dropped() -> bool:
        return (await client.get("/users/e")).headers["x-cache"] == "MISS"

    await eventually_async(users_dropped)
    assert (await client.get("/cached/e")).headers["x-cache"] == "HIT"
    await publish_event(nc, "blog.blog.published")

    async def blogs_dropped() -> bool:
        return (await client.get("/cached/e")).headers["x-cache"] == "MISS"

    await eventually_async(blogs_dropped)
    assert (await client.get("/users/e")).headers["x-cache"] == "HIT"


async def test_a_fetch_that_raced_an_event_is_not_stored(setup: Setup, nc: Client) -> None:
    client, other = setup.client(), setup.client()
    marker = "/cached/race-marker"  # an entry the event drops too: shows it was handled
    assert (await other.get(marker)).headers["x-cache"] == "MISS"
    # Fetched before the event, answered after it: its content may predate the write.
    slow = asyncio.create_task(client.get("/cached/race", headers={"x-test-hold": "race"}))
    await eventually(lambda: setup.backend.held("race") == 1)
    await publish_event(nc, "blog.blog.updated")

    async def handled() -> bool:
        return (await other.get(marker)).headers["x-cache"] == "MISS"

    await eventually_async(handled)
    assert not slow.done()
    setup.backend.release("race")
    raced = await slow
    assert raced.headers["x-cache"] == "MISS"
    after = await client.get("/cached/race")
    assert after.headers["x-cache"] == "MISS"
    assert served(after) > served(raced)
    assert (await client.get("/cached/race")).headers["x-cache"] == "HIT"


async def eventually_async(check: Any, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def raw_get(conn: RawConnection, path: str) -> RawResponse:
    await conn.send(f"GET {path} HTTP/1.1\r\nhost: gateway\r\n\r\n".encode())
    return await conn.read_response()


async def test_an_event_drops_the_entries_in_every_worker(
    backends: BackendFactory, gateways: GatewayFactory, nats_url: str, nc: Client
) -> None:
    backend = backends("blog")
    gateway = gateways(cache_config(backend, ROUTES, nats_url), workers=2)
    conns: list[RawConnection] = []
    try:
        # Each worker has a cache of its own. Requests go one at a time, so each worker fetches
        # once (its first request) and answers the rest from memory: open connections until
        # both workers have fetched (the kernel spreads connections over them).
        while len(conns) < 6 or backend.stats()["requests"] < 2:
            assert len(conns) < 60, "connections never reached the second worker"
            conn = await RawConnection.open(gateway.port)
            conns.append(conn)
            assert (await raw_get(conn, "/cached/post")).status == 200
        assert backend.stats()["requests"] == 2
        old = set()
        for conn in conns:
            response = await raw_get(conn, "/cached/post")
            assert response.header("x-cache") == "HIT"
            old.add(served(response))
        assert old == {1, 2}

        await publish_event(nc, "blog.blog.published")

        # Every connection soon reads the new content; once it has, never the old again.
        fresh: list[RawResponse] = []
        for conn in conns:
            for _ in range(200):
                response = await raw_get(conn, "/cached/post")
                if served(response) > 2:
                    fresh.append(response)
                    break
                assert response.header("x-cache") == "HIT"
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the event never dropped this worker's entry")
        for conn in conns:
            response = await raw_get(conn, "/cached/post")
            assert response.header("x-cache") == "HIT"
            assert served(response) > 2
        # One fetch per worker after the drop: the first new answer in each was a MISS.
        assert backend.stats()["requests"] == 4
        assert sorted(r.header("x-cache") for r in fresh).count("MISS") == 2
    finally:
        for conn in conns:
            await conn.close()


async def test_a_lost_nats_connection_suspends_the_cache_and_a_reconnection_starts_over(
    backends: BackendFactory, gateways: GatewayFactory, own_nats: EmbeddedNats
) -> None:
    backend = backends("blog")
    gateway = gateways(cache_config(backend, ROUTES, own_nats.url))
    client = gateway.client(limits=httpx.Limits(max_connections=1))
    first = await client.get("/cached/outage")
    assert first.headers["x-cache"] == "MISS"
    assert (await client.get("/cached/outage")).headers["x-cache"] == "HIT"
    await asyncio.to_thread(own_nats.stop)
    try:
        # Events published meanwhile would be missed: nothing is served from memory.
        async def suspended() -> bool:
            return (await client.get("/cached/outage")).headers["x-cache"] == "BYPASS"

        await eventually_async(suspended)
        # Routes without events to miss keep their cache.
        assert (await client.get("/short/outage")).headers["x-cache"] == "MISS"
        assert (await client.get("/short/outage")).headers["x-cache"] == "HIT"
    finally:
        await asyncio.to_thread(own_nats.start)
    seen: list[httpx.Response] = []

    async def resumed() -> bool:
        response = await client.get("/cached/outage")
        seen.append(response)
        return response.headers["x-cache"] != "BYPASS"

    await eventually_async(resumed, timeout=20)
    # What was stored before the outage is gone: the first read after it is a fresh fetch.
    assert seen[-1].headers["x-cache"] == "MISS"
    assert served(seen[-1]) > served(first)
    assert (await client.get("/cached/outage")).headers["x-cache"] == "HIT"


# --- bounds -------------------------------------------------------------------------------------


async def test_the_least_recently_used_entry_goes_when_max_entries_is_reached(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    backend = backends("blog")
    routes = [{"path": "/c/*", "methods": ["GET"], "backend": "echo", "cache": {"ttl": "60s"}}]
    gateway = gateways(cache_config(backend, routes, cache={"max_entries": 3}))
    client = gateway.client(limits=httpx.Limits(max_connections=1))

    async def label(path: str) -> str:
        return str((await client.get(path)).headers["x-cache"])

    assert [await label(p) for p in ("/c/a", "/c/b", "/c/c")] == ["MISS"] * 3
    assert await label("/c/a") == "HIT"  # a is now the most recently used; b the least
    assert await label("/c/d") == "MISS"  # b goes
    assert [await label(p) for p in ("/c/a", "/c/c", "/c/d")] == ["HIT"] * 3
    assert await label("/c/b") == "MISS"


async def test_max_bytes_bounds_what_a_worker_keeps(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    backend = backends("blog")
    routes = [{"path": "/c/*", "methods": ["GET"], "backend": "echo", "cache": {"ttl": "60s"}}]
    bounds = {"max_bytes": "40KiB", "max_entry_bytes": "16KiB"}
    gateway = gateways(cache_config(backend, routes, cache=bounds))
    client = gateway.client(limits=httpx.Limits(max_connections=1))

    async def label(path: str, size: int) -> str:
        response = await client.get(path, headers={"x-test-size": str(size)})
        assert len(response.content) == size
        return str(response.headers["x-cache"])

    # Over max_entry_bytes: passed through, never kept.
    assert [await label("/c/big", 20_000) for _ in range(2)] == ["MISS", "MISS"]
    # Two 15 kB entries fit in 40 KiB, three do not: the oldest goes.
    assert [await label(p, 15_000) for p in ("/c/1", "/c/2", "/c/3")] == ["MISS"] * 3
    assert [await label(p, 15_000) for p in ("/c/2", "/c/3")] == ["HIT", "HIT"]
    assert await label("/c/1", 15_000) == "MISS"


# --- configuration ------------------------------------------------------------------------------

ROUTE_HEAD = """\
nats: {url: "nats://127.0.0.1:4222"}
backends:
  blog: {instances: ["http://127.0.0.1:8001"]}
routes:
  - path: /v1/blogs/{id}
    backend: blog
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    return [str(issue) for issue in caught.value.issues]


def test_a_cache_configuration_loads() -> None:
    config = parse_config(
        ROUTE_HEAD
        + """\
    methods: [GET, HEAD]
    cache:
      ttl: 30s
      vary_headers: [Accept, accept-language]
      invalidate_on: ["blog.blog.*", "auth.user.updated", "blog.>"]
      statuses: [200, 404]
cache: {max_entries: 500, max_bytes: 8MiB, max_entry_bytes: 256KiB}
""",
        "gw.yaml",
    )
    cache = config.routes[0].cache
    assert cache is not None
    assert cache.ttl == 30.0
    assert cache.vary_headers == ["accept", "accept-language"]
    assert cache.invalidate_on == ["blog.blog.*", "auth.user.updated", "blog.>"]
    assert config.cache.max_bytes == 8 * 1024 * 1024
    assert config.cache.max_entry_bytes == 256 * 1024
    assert parse_config(ROUTE_HEAD + "    methods: [GET]\n").cache.max_entries == 10_000


@pytest.mark.parametrize(
    ("route_tail", "expected"),
    [
        (
            "    methods: [POST]\n    cache: {ttl: 10s}\n",
            "gw.yaml:8:5: routes[0].cache: only GET responses are cached",
        ),
        (
            "    methods: [GET]\n    cache: {ttl: 0}\n",
            "gw.yaml:8:13: routes[0].cache.ttl: Input should be greater than 0",
        ),
        (
            "    methods: [GET]\n    cache: {vary_headers: [accept]}\n",
            "gw.yaml:8:5: routes[0].cache.ttl: Field required",
        ),
        (
            "    methods: [GET]\n    cache:\n      ttl: 1s\n      vary_headers: [cache-control]\n",
            "gw.yaml:10:7: routes[0].cache.vary_headers: the key cannot vary on 'cache-control'",
        ),
        (
            "    methods: [GET]\n    cache:\n      ttl: 1s\n      vary_headers: ['bad header']\n",
            "gw.yaml:10:7: routes[0].cache.vary_headers: 'bad header' is not a header name",
        ),
        (
            "    methods: [GET]\n    cache:\n      ttl: 1s\n      invalidate_on: ['blog.>.x']\n",
            "gw.yaml:10:7: routes[0].cache.invalidate_on: 'blog.>.x' is not an event pattern",
        ),
        (
            "    methods: [GET]\n    cache:\n      ttl: 1s\n      invalidate_on: ['Blog.*']\n",
            "gw.yaml:10:7: routes[0].cache.invalidate_on: 'Blog.*' is not an event pattern",
        ),
        (
            "    methods: [GET]\n    cache:\n      ttl: 1s\n      invalidate_on: ['blog..x']\n",
            "gw.yaml:10:7: routes[0].cache.invalidate_on: 'blog..x' is not an event pattern",
        ),
        (
            "    methods: [GET]\n    cache:\n      ttl: 1s\n      statuses: [500]\n",
            "gw.yaml:10:7: routes[0].cache.statuses: 500 cannot be cached",
        ),
        (
            "    methods: [GET]\n    cache: {ttl: 1s, stale_while_revalidate: 5s}\n",
            "gw.yaml:8:22: routes[0].cache.stale_while_revalidate: Extra inputs are not permitted",
        ),
        (
            "    methods: [GET]\ncache: {max_bytes: 1MiB, max_entry_bytes: 2MiB}\n",
            "gw.yaml:8:1: cache: max_entry_bytes cannot exceed max_bytes",
        ),
        (
            "    methods: [GET]\n    claims: {api_key.id: x-key-id}\n    cache: {ttl: 1s}\n",
            "gw.yaml:9:5: routes[0].cache.vary_headers: the route forwards API-key claims",
        ),
    ],
)
def test_bad_cache_settings_are_reported_at_their_line(route_tail: str, expected: str) -> None:
    errors = errors_of(ROUTE_HEAD + route_tail)
    assert any(error.startswith(expected) for error in errors), errors


def test_an_aggregated_route_cannot_be_cached() -> None:
    text = ROUTE_HEAD.replace("    backend: blog\n", "") + (
        "    methods: [GET]\n"
        "    aggregate: {backends: [{backend: blog, path: '/v1/blogs/{id}'}]}\n"
        "    cache: {ttl: 1s}\n"
    )
    assert errors_of(text) == ["gw.yaml:8:5: routes[0].cache: aggregated routes are not cached"]


def test_invalidation_needs_the_nats_section() -> None:
    text = ROUTE_HEAD.replace('nats: {url: "nats://127.0.0.1:4222"}\n', "") + (
        "    methods: [GET]\n    cache:\n      ttl: 1s\n      invalidate_on: [blog.blog.*]\n"
    )
    assert errors_of(text) == [
        "gw.yaml:9:7: routes[0].cache.invalidate_on: invalidation events arrive over NATS: "
        "add the top-level `nats:` section"
    ]


def test_the_check_command_rejects_a_bad_cache_section(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(ROUTE_HEAD + "    methods: [DELETE]\n    cache: {ttl: 5s}\n")
    result = subprocess.run(
        [sys.executable, "-m", "mosaic_gateway", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{path}:8:5: routes[0].cache: only GET responses are cached" in result.stdout + (
        result.stderr
    )
