"""A route's own `retries` and `breaker` over its backend's: the merge, the checks at load time,
and their effect through real sockets (routes of one backend that retry and trip differently)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gateway_support import (
    BackendFactory,
    Gateway,
    GatewayFactory,
    free_port,
    gateway_config,
    plain_get,
)

from mosaic_gateway.config import (
    BreakerSpec,
    ConfigError,
    RetriesSpec,
    RouteRetriesSpec,
    overlay,
    parse_config,
)
from mosaic_gateway.lifecycle.route_resilience import route_backends, route_retries
from mosaic_gateway.upstream.balancer import Backend
from mosaic_gateway.upstream.route_scope import RouteBackend

pytestmark = pytest.mark.timeout(60)

# --- the merge --------------------------------------------------------------------------------


def test_fields_a_route_gives_replace_the_backends_and_the_others_are_inherited() -> None:
    backend = RetriesSpec(attempts=2, on=("connect_error", 503), per_try_timeout=0.5, budget=0.1)
    merged = overlay(backend, RouteRetriesSpec.model_validate({"attempts": 0}))
    assert (merged.attempts, merged.on, merged.per_try_timeout) == (0, backend.on, 0.5)
    assert (merged.budget, merged.min_per_second) == (0.1, backend.min_per_second)
    # `on` as YAML 1.1 reads an unquoted key (the boolean true), and a unit on the duration.
    merged = overlay(
        backend, RouteRetriesSpec.model_validate({True: [502], "per_try_timeout": "2s"})
    )
    assert (merged.attempts, merged.on, merged.per_try_timeout) == (2, (502,), 2.0)
    # Given as null, per_try_timeout is turned off for the route, not inherited.
    assert (
        overlay(backend, RouteRetriesSpec.model_validate({"per_try_timeout": None})).per_try_timeout
        is None
    )
    assert overlay(backend, None) is backend
    assert overlay(backend, RouteRetriesSpec()) == backend


def test_a_routes_breaker_fields_replace_the_backends() -> None:
    backend = BreakerSpec(failure_threshold=10, open_for=2.0, max_open_for=30.0)
    merged = overlay(backend, BreakerSpec.model_validate({"failure_threshold": 2, "backoff": 3}))
    assert merged == BreakerSpec(failure_threshold=2, open_for=2.0, max_open_for=30.0, backoff=3.0)


CONFIG = """\
server:
  timeouts: {request: 10s}
backends:
  blog:
    instances: [http://127.0.0.1:8001]
    retries: {attempts: 2, per_try_timeout: 1s, budget: 0.1}
    breaker: {failure_threshold: 10, open_for: 2s}
  users:
    instances: [http://127.0.0.1:8002]
    retries: {attempts: 1}
routes:
  - path: /v1/blogs/*
    methods: [GET]
    backend: blog
    timeout: 3s
    retries: {attempts: 0}
    breaker: {failure_threshold: 2}
  - path: /v1/plain/*
    methods: [GET]
    backend: blog
  - path: /v1/page/{id}
    methods: [GET]
    timeout: 5s
    retries: {on: [502]}
    breaker: {open_for: 4s}
    aggregate:
      backends:
        - {backend: blog, path: "/blogs/{id}"}
        - {backend: users, path: "/users/{id}"}
        - {backend: blog, path: "/similar/{id}"}
"""


async def test_each_route_gets_its_merged_settings_and_breaker_views() -> None:
    config = parse_config(CONFIG)
    own, plain, page = config.routes
    assert route_retries(config, own, "blog").attempts == 0
    assert route_retries(config, own, "blog").per_try_timeout == 1.0
    assert route_retries(config, plain, "blog") == config.backends["blog"].retries
    # An aggregate route's override applies to each call, over that call's backend's settings.
    assert route_retries(config, page, "blog").attempts == 2
    assert route_retries(config, page, "users").attempts == 1
    assert route_retries(config, page, "users").on == (502,)

    loop = asyncio.get_running_loop()
    shared = {
        name: Backend(
            loop, name, policy="round_robin", eject_after=3, eject_for=1, failure_statuses=[503]
        )
        for name in config.backends
    }
    assert route_backends(config, plain, shared) is shared
    views = route_backends(config, own, shared)
    assert isinstance(views["blog"], RouteBackend)
    assert views["users"] is shared["users"]
    views = route_backends(config, page, shared)
    assert isinstance(views["blog"], RouteBackend)
    assert isinstance(views["users"], RouteBackend)
    assert views["blog"].label == "GET /v1/page/{id}"
    # One view per backend for the route (two calls to blog share it), one more for `own`.
    assert len(shared["blog"].scopes) == 2
    assert len(shared["users"].scopes) == 1


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    return [str(issue) for issue in caught.value.issues]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "retries: {attempts: 0}",
            "retries: {attempts: 9}",
            "gw.yaml:16:15: routes[0].retries.attempts: Input should be less than or equal to 5",
        ),
        (
            "retries: {attempts: 0}",
            "retries: {budget: 0.5}",
            "gw.yaml:16:5: routes[0].retries: `budget` is the backend's retry budget, shared by "
            "all its routes: set it under `backends.<name>.retries`",
        ),
        (
            "retries: {attempts: 0}",
            "retries: {on: [404]}",
            "gw.yaml:16:5: routes[0].retries.on: 404 is not a 5xx status",
        ),
        (
            "retries: {attempts: 0}",
            "retries: {per_try_timeout: 3s}",
            "gw.yaml:16:15: routes[0].retries.per_try_timeout: 3s is not below the route's "
            "timeout (3s): no try would ever be cut short",
        ),
        (
            "breaker: {failure_threshold: 2}",
            "breaker: {failure_threshold: 0}",
            "gw.yaml:17:15: routes[0].breaker.failure_threshold: "
            "Input should be greater than or equal to 1",
        ),
        (
            "breaker: {failure_threshold: 2}",
            "breaker: {open_for: soon}",
            "gw.yaml:17:15: routes[0].breaker.open_for: "
            "a duration is a number of seconds or a string like '250ms', '2s', '1m'",
        ),
        (
            "breaker: {failure_threshold: 2}",
            "breaker: {threshold: 2}",
            "gw.yaml:17:15: routes[0].breaker.threshold: Extra inputs are not permitted",
        ),
    ],
)
def test_bad_overrides_are_refused_at_their_line(old: str, new: str, expected: str) -> None:
    assert CONFIG.count(old) == 1
    assert errors_of(CONFIG.replace(old, new)) == [expected]


def test_an_aggregate_routes_per_try_timeout_is_checked_against_its_aggregate_timeout() -> None:
    text = CONFIG.replace("retries: {on: [502]}", "retries: {per_try_timeout: 2s}").replace(
        "    aggregate:\n", "    aggregate:\n      timeout: 2s\n"
    )
    assert errors_of(text) == [
        "gw.yaml:24:15: routes[2].retries.per_try_timeout: 2s is not below the route's "
        "aggregate.timeout (2s): no try would ever be cut short"
    ]
    parse_config(text.replace("per_try_timeout: 2s", "per_try_timeout: 1500ms"))


# --- through the gateway ----------------------------------------------------------------------

# Thresholds high enough that neither ejection nor the backend's breaker interferes.
PATIENT = {"ejection": {"consecutive_failures": 1000}, "breaker": {"failure_threshold": 1000}}


def route(path: str, **extra: Any) -> dict[str, Any]:
    return {"path": path, "methods": ["GET"], "backend": "svc", **extra}


async def statuses(client: httpx.AsyncClient, path: str, count: int) -> Counter[int]:
    return Counter([(await client.get(path)).status_code for _ in range(count)])


async def test_routes_of_one_backend_retry_as_often_as_each_says(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    a = backends("a")
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]  # connection refused
    # The backend retries once; the routes: never, its once, twice.
    retries = {"attempts": 1, "min_per_second": 1000}
    svc = {"instances": [*dead, a.url], "retries": retries, **PATIENT}
    routes = [
        route("/once/*", retries={"attempts": 0}),
        route("/default/*"),
        route("/twice/*", retries={"attempts": 2}),
    ]
    gateway = gateways(gateway_config({"svc": svc}, routes))
    client = gateway.client()
    # Round robin over dead, dead, a: each route's nine requests start three times at each.
    # A first try at `a` succeeds; one retry saves a start at the second dead instance only.
    assert await statuses(client, "/once/x", 9) == {200: 3, 503: 6}
    assert await statuses(client, "/default/x", 9) == {200: 6, 503: 3}
    assert await statuses(client, "/twice/x", 9) == {200: 9}
    assert a.stats()["requests"] == 3 + 6 + 9


@pytest.fixture
def hung() -> Iterator[str]:
    """An instance that takes connections (the kernel completes them) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


async def test_a_routes_per_try_timeout_and_timeout_apply_over_the_backends(
    backends: BackendFactory, gateways: GatewayFactory, hung: str
) -> None:
    ok = backends("ok")
    svc = {"instances": [hung, ok.url], "retries": {"per_try_timeout": "300ms"}, **PATIENT}
    routes = [
        route("/cut/*", timeout="2s"),
        route("/later/*", timeout="2s", retries={"per_try_timeout": "1200ms"}),
        route("/never/*", timeout="1s", retries={"per_try_timeout": None}),
    ]
    gateway = gateways(gateway_config({"svc": svc}, routes, timeouts={"request": "20s"}))
    client = gateway.client()

    async def slowest(path: str) -> tuple[Counter[int], float]:
        # Round robin: one of two requests meets the hung instance first.
        seen: Counter[int] = Counter()
        took = []
        for _ in range(2):
            started = time.monotonic()
            seen[(await client.get(path)).status_code] += 1
            took.append(time.monotonic() - started)
        return seen, max(took)

    seen, took = await slowest("/cut/x")  # the backend's 300 ms
    assert seen == {200: 2}
    assert 0.25 <= took < 1.0, took
    seen, took = await slowest("/later/x")  # the route's 1.2 s
    assert seen == {200: 2}
    assert 1.15 <= took < 1.9, took
    seen, took = await slowest("/never/x")  # no per-try timeout: the route's own 1 s, not 20 s
    assert seen == {200: 1, 504: 1}
    assert 0.95 <= took < 1.9, took


def breakers(gateway: Gateway, url: str) -> dict[str, str]:
    """The backend's breaker of the instance, and each route's own."""
    svc = gateway.admin("/admin/backends")["backends"]["svc"]
    states = {"svc": next(i["breaker"]["state"] for i in svc["instances"] if i["url"] == url)}
    for label, instances in svc["route_breakers"].items():
        states[label] = instances[url]["state"]
    return states


async def test_a_routes_breaker_opens_on_its_own_failures_only(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    only = backends("only")
    svc = {
        "instances": [only.url],
        "ejection": {"consecutive_failures": 1000},
        "retries": {"attempts": 0},
        "breaker": {"failure_threshold": 3, "open_for": "30s"},
    }
    routes = [route("/shared/*"), route("/own/*", breaker={"failure_threshold": 2})]
    gateway = gateways(gateway_config({"svc": svc}, routes))
    client = gateway.client()
    fail = {"x-test-status": "503"}

    # The backend's other route fails until the backend's breaker opens...
    for _ in range(3):
        assert (await client.get("/shared/x", headers=fail)).status_code == 503
    assert breakers(gateway, only.url) == {"svc": "open", "GET /own/*": "closed"}
    assert (await client.get("/shared/x")).json()["code"] == "gateway.circuit_open"
    # ...and the route with a breaker of its own is still served.
    assert (await client.get("/own/x")).status_code == 200

    # Its own failures (two, its threshold) open its own breaker only.
    for _ in range(2):
        response = await client.get("/own/x", headers=fail)
        assert response.status_code == 503
        assert response.headers["x-backend"] == "only"
    assert breakers(gateway, only.url) == {"svc": "open", "GET /own/*": "open"}
    before = only.stats()["requests"]
    response = await client.get("/own/x")
    assert response.status_code == 503
    assert response.json()["code"] == "gateway.circuit_open"
    assert only.stats()["requests"] == before

    metrics = plain_get(f"http://127.0.0.1:{gateway.admin_port}/metrics").text
    line = next(line for line in metrics.splitlines() if line.startswith("gateway_route_breaker"))
    assert f'route="/own/*",methods="GET",backend="svc",upstream_instance="{only.url}"' in line
    assert line.endswith(" 2")


async def test_the_backends_breaker_is_not_opened_by_a_route_with_its_own(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    only = backends("only")
    svc = {
        "instances": [only.url],
        "ejection": {"consecutive_failures": 1000},
        "retries": {"attempts": 0},
        "breaker": {"failure_threshold": 2, "open_for": "30s"},
    }
    routes = [route("/shared/*"), route("/own/*", breaker={"open_for": "30s"})]
    gateway = gateways(gateway_config({"svc": svc}, routes))
    client = gateway.client()
    for _ in range(5):
        response = await client.get("/own/x", headers={"x-test-status": "503"})
        assert response.status_code == 503
    assert breakers(gateway, only.url) == {"svc": "closed", "GET /own/*": "open"}
    assert (await client.get("/shared/x")).status_code == 200
