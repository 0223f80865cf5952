"""Spreading requests over instances and keeping broken ones out: weighted round robin, least
outstanding requests, passive ejection, active health checks, an instance killed under load."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest
from gateway_support import (
    Backend,
    BackendFactory,
    Gateway,
    GatewayFactory,
    eventually,
    gateway_config,
    plain_get,
)

pytestmark = pytest.mark.timeout(90)


def route(backend: str = "svc") -> list[dict[str, object]]:
    return [{"path": "/*", "methods": ["GET", "POST"], "backend": backend}]


async def served_by(client: httpx.AsyncClient, count: int, path: str = "/x") -> list[str]:
    names = []
    for _ in range(count):
        response = await client.get(path)
        assert response.status_code == 200, response.text
        names.append(response.json()["instance"])
    return names


def ejected(gateway: Gateway, backend: Backend) -> bool:
    instances = gateway.admin("/admin/backends")["backends"]["svc"]["instances"]
    return next(i["ejected"] for i in instances if i["url"] == backend.url)  # type: ignore[no-any-return]


async def test_weighted_round_robin_is_exact_and_interleaved(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    a, b, c = backends("a"), backends("b"), backends("c")
    gateway = gateways(
        gateway_config(
            {
                "svc": {
                    "instances": [
                        {"url": a.url, "weight": 3},
                        {"url": b.url, "weight": 1},
                        {"url": c.url, "weight": 2},
                    ]
                }
            },
            route(),
        )
    )
    names = await served_by(gateway.client(), 60)
    assert Counter(names) == {"a": 30, "b": 10, "c": 20}
    # Smooth: within every window of 6 picks each instance gets exactly its weight.
    for start in range(0, 60, 6):
        assert Counter(names[start : start + 6]) == {"a": 3, "b": 1, "c": 2}


async def test_equal_weights_alternate(backends: BackendFactory, gateways: GatewayFactory) -> None:
    a, b = backends("a"), backends("b")
    gateway = gateways(gateway_config({"svc": {"instances": [a.url, b.url]}}, route()))
    names = await served_by(gateway.client(), 10)
    assert all(names[i] != names[i + 1] for i in range(9))


async def test_least_outstanding_prefers_the_idle_instance(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    a, b = backends("a"), backends("b")
    gateway = gateways(
        gateway_config(
            {"svc": {"instances": [a.url, b.url], "balancing": "least_outstanding"}}, route()
        )
    )
    slow_client = gateway.client()
    slow = asyncio.create_task(slow_client.get("/slow", headers={"x-test-hold": "slow"}))
    # The slow request is in flight on one instance (held there until released).
    await eventually(lambda: a.held("slow") + b.held("slow") == 1)
    names = await served_by(gateway.client(), 12)
    a.release("slow")
    b.release("slow")
    slow_instance = (await slow).json()["instance"]
    # Every quick request went to the instance that had nothing outstanding.
    assert set(names) == {"b" if slow_instance == "a" else "a"}
    # Once both are idle, both are used again.
    names = await served_by(gateway.client(), 6)
    assert set(names) == {"a", "b"}


async def test_round_robin_ignores_outstanding_requests(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    # The contrast to the previous test: the same situation under round robin keeps alternating.
    a, b = backends("a"), backends("b")
    gateway = gateways(gateway_config({"svc": {"instances": [a.url, b.url]}}, route()))
    slow = asyncio.create_task(gateway.client().get("/slow", headers={"x-test-hold": "slow"}))
    await eventually(lambda: a.held("slow") + b.held("slow") == 1)
    names = await served_by(gateway.client(), 6)
    assert not slow.done()
    a.release("slow")
    b.release("slow")
    await slow
    assert set(names) == {"a", "b"}


async def test_failing_instance_is_ejected_then_used_again(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    a, b = backends("a"), backends("b")
    gateway = gateways(
        gateway_config(
            {
                "svc": {
                    "instances": [a.url, b.url],
                    "ejection": {"consecutive_failures": 2, "duration": "1500ms"},
                    # Ejection on its own: a retry would hide b's failures from the client.
                    "retries": {"attempts": 0},
                }
            },
            route(),
        )
    )
    client = gateway.client()
    plain_get(f"{b.url}/__fail", params={"status": "503"})
    statuses = Counter()
    for _ in range(20):
        response = await client.get("/x")
        statuses[(response.status_code, response.headers.get("x-backend"))] += 1
    # b's own 503s are passed through (two of them, then it is benched); a serves the rest.
    assert statuses == {(503, "b"): 2, (200, "a"): 18}
    (b_state,) = [
        i
        for i in gateway.admin("/admin/backends")["backends"]["svc"]["instances"]
        if i["url"] == b.url
    ]
    assert b_state["ejected"] is True

    plain_get(f"{b.url}/__fail", params={"status": "0"})
    await eventually(lambda: not ejected(gateway, b), timeout=5)  # after its 1.5 s
    names = await served_by(client, 6)
    assert Counter(names) == {"a": 3, "b": 3}


async def test_connect_failures_eject_and_a_restarted_instance_returns(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    a, b = backends("a"), backends("b")
    gateway = gateways(
        gateway_config(
            {
                "svc": {
                    "instances": [a.url, b.url],
                    "ejection": {"consecutive_failures": 3, "duration": "1s"},
                    "retries": {"attempts": 0},
                }
            },
            route(),
        )
    )
    client = gateway.client()
    await served_by(client, 4)
    b.kill()
    results = Counter()
    for _ in range(30):
        response = await client.get("/x")
        results[response.status_code] += 1
    assert results == {200: 27, 503: 3}
    b.restart()
    await eventually(lambda: not ejected(gateway, b), timeout=5)  # after its 1 s
    assert Counter(await served_by(client, 8)) == {"a": 4, "b": 4}


async def test_active_health_check_takes_an_instance_out_and_back(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    a, b = backends("a"), backends("b")
    gateway = gateways(
        gateway_config(
            {
                "svc": {
                    "instances": [a.url, b.url],
                    "health_check": {
                        "path": "/readyz",
                        "interval": "200ms",
                        "timeout": "500ms",
                        "unhealthy_after": 2,
                        "healthy_after": 2,
                    },
                }
            },
            route(),
        )
    )

    def b_healthy() -> bool:
        instances = gateway.admin("/admin/backends")["backends"]["svc"]["instances"]
        return next(i["healthy"] for i in instances if i["url"] == b.url)  # type: ignore[no-any-return]

    client = gateway.client()
    assert set(await served_by(client, 4)) == {"a", "b"}
    b.set_healthy(False)
    await eventually(lambda: not b_healthy(), timeout=5)
    assert set(await served_by(client, 10)) == {"a"}
    b.set_healthy(True)
    await eventually(b_healthy, timeout=5)
    assert set(await served_by(client, 4)) == {"a", "b"}


async def test_killing_an_instance_under_steady_traffic_loses_no_request(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    """The requests in flight on the killed instance and those that meet its refused port are
    retried on the other one, then ejection takes it out. The only request a client may lose is
    one whose response head had already been relayed when the instance died (no proxy can finish
    or replay half a response): its connection is cut, and the gateway logs it as such."""
    a, b = backends("a"), backends("b")
    gateway = gateways(
        gateway_config(
            {
                "svc": {
                    "instances": [a.url, b.url],
                    "ejection": {"consecutive_failures": 3, "duration": "30s"},
                }
            },
            route(),
        )
    )
    clients = [gateway.client() for _ in range(16)]
    stop_at = time.monotonic() + 3.0
    kill_at = time.monotonic() + 1.0
    killed: list[float] = []
    outcomes: list[tuple[float, int]] = []

    async def traffic(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at:
            try:
                status = (await client.get("/steady")).status_code
            except httpx.HTTPError:
                status = 0
            outcomes.append((time.monotonic(), status))

    async def killer() -> None:
        await asyncio.sleep(kill_at - time.monotonic())
        b.kill()
        killed.append(time.monotonic())

    await asyncio.gather(killer(), *(traffic(c) for c in clients))
    failures = [(t - killed[0], s) for t, s in outcomes if s != 200]
    rate = len(outcomes) / 3.0
    print(f"killed one of two instances: {len(failures)} failed of {len(outcomes)} ({rate:.0f}/s)")
    if failures:
        # Seen about once in ten loaded runs: SIGKILL between the head and the body of an answer.
        await asyncio.sleep(1.5)  # the gateway's log lines are written by then
        cut = [
            line
            for line in gateway.process.output().splitlines()
            if '"upstream_failed"' in line and '"response_started":true' in line
        ]
        # Never an error status (what met the dead port was retried), only cut connections, and
        # no more of them than the gateway logged as cut mid-response.
        assert {status for _, status in failures} == {0}, failures
        assert len(failures) <= len(cut) <= 16, (failures, cut)
    assert rate > 150
    assert any(t > killed[0] for t, _ in outcomes)


async def test_with_every_instance_benched_requests_still_reach_them(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    only = backends("only")
    gateway = gateways(
        gateway_config(
            {
                "svc": {
                    "instances": [only.url],
                    "ejection": {"consecutive_failures": 2, "duration": "60s"},
                    # Panic without the breaker's fail-fast (threshold 5) or retries doubling
                    # the failures: the instance's own answers must reach the client.
                    "retries": {"attempts": 0},
                }
            },
            route(),
        )
    )
    client = gateway.client()
    plain_get(f"{only.url}/__fail", params={"status": "503"})
    for _ in range(3):
        response = await client.get("/x")
        # The instance's own answer, not a gateway refusal.
        assert response.status_code == 503
        assert response.headers["x-backend"] == "only"
    state = gateway.admin("/admin/backends")["backends"]["svc"]
    assert state["panic"] is True
    assert state["instances"][0]["ejected"] is True
    # Recovered long before the ejection ends: served at once, not refused for 60 s.
    plain_get(f"{only.url}/__fail", params={"status": "0"})
    response = await client.get("/x")
    assert response.status_code == 200
    assert response.json()["instance"] == "only"
