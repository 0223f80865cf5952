"""Retries on connection errors and listed statuses, their budget, and the circuit breaker."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from gateway_support import (
    BackendFactory,
    Gateway,
    GatewayFactory,
    free_port,
    gateway_config,
    plain_get,
)

pytestmark = pytest.mark.timeout(60)

ROUTE = [{"path": "/*", "methods": ["GET", "POST", "PUT"], "backend": "svc"}]
# Thresholds high enough that neither ejection nor the breaker interferes with a retry test.
PATIENT = {"ejection": {"consecutive_failures": 1000}, "breaker": {"failure_threshold": 1000}}


def svc(instances: list[str], **extra: Any) -> dict[str, Any]:
    return {"svc": {"instances": instances, **PATIENT, **extra}}


def breaker_of(gateway: Gateway, url: str) -> dict[str, Any]:
    instances = gateway.admin("/admin/backends")["backends"]["svc"]["instances"]
    return next(i["breaker"] for i in instances if i["url"] == url)  # type: ignore[no-any-return]


async def test_connection_errors_are_retried_on_another_instance(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    a = backends("a")
    closer = backends("closer", mode="close")  # reads the request, closes without answering
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    # Two retries: a request may meet both broken instances before a.
    gateway = gateways(
        gateway_config(svc([dead, closer.url, a.url], retries={"attempts": 2}), ROUTE)
    )
    client = gateway.client()
    for _ in range(12):
        response = await client.get("/x")
        assert response.status_code == 200, response.text
        assert response.json()["instance"] == "a"


async def test_a_503_is_retried_on_another_instance(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    a, b = backends("a"), backends("b")
    gateway = gateways(gateway_config(svc([a.url, b.url]), ROUTE))
    plain_get(f"{b.url}/__fail", params={"status": "503"})
    client = gateway.client()
    for _ in range(10):
        response = await client.get("/x")
        assert response.status_code == 200
        assert response.json()["instance"] == "a"
    assert b.stats()["requests"] == 5  # every other first try went to b, and was retried
    # A small buffered body of an idempotent method is replayed on the retry.
    for _ in range(4):
        response = await client.put("/x", content=b"hello")
        assert response.status_code == 200
        assert response.json()["body_length"] == 5
    # A status not in the list is passed through.
    plain_get(f"{b.url}/__fail", params={"status": "500"})
    assert Counter([(await client.get("/x")).status_code for _ in range(4)]) == {200: 2, 500: 2}


async def test_a_post_is_not_retried(backends: BackendFactory, gateways: GatewayFactory) -> None:
    a, b = backends("a"), backends("b")
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = gateways(gateway_config(svc([a.url, b.url, dead]), ROUTE))
    plain_get(f"{b.url}/__fail", params={"status": "503"})
    client = gateway.client()
    seen: Counter[tuple[int, str | None]] = Counter()
    for _ in range(9):
        response = await client.post("/x", json={"n": 1})
        seen[(response.status_code, response.headers.get("x-backend"))] += 1
    # b's 503 and the refused connection reach the client; only a's answers are 200s.
    assert seen == {(200, "a"): 3, (503, "b"): 3, (503, None): 3}
    assert b.stats()["requests"] == 3


async def test_the_budget_stops_retries_when_everything_fails(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    a, b = backends("a"), backends("b")
    retries = {"attempts": 1, "budget": 0.1, "min_per_second": 2}
    gateway = gateways(gateway_config(svc([a.url, b.url], retries=retries), ROUTE))
    for backend in (a, b):
        plain_get(f"{backend.url}/__fail", params={"status": "503"})
    client = gateway.client()
    started = time.monotonic()
    for _ in range(200):
        assert (await client.get("/x")).status_code == 503
    elapsed = time.monotonic() - started
    attempts = a.stats()["requests"] + b.stats()["requests"]
    retried = attempts - 200
    print(f"200 requests, {retried} retries in {elapsed:.2f}s")
    # Without a budget every request would be tried twice (400 attempts).
    # The allowance is per clock second: a run can touch one more second than it lasts.
    assert 0 < retried <= 200 * 0.1 + 2 * (int(elapsed) + 2)


async def test_the_breaker_opens_rejects_fast_half_opens_and_closes(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    only = backends("only")
    gateway = gateways(
        gateway_config(
            {
                "svc": {
                    "instances": [only.url],
                    "ejection": {"consecutive_failures": 1000},
                    "retries": {"attempts": 0},
                    "breaker": {"failure_threshold": 3, "open_for": "500ms", "backoff": 2},
                }
            },
            ROUTE,
        )
    )
    client = gateway.client()
    plain_get(f"{only.url}/__fail", params={"status": "503"})
    for _ in range(3):
        response = await client.get("/x")
        assert response.status_code == 503
        assert response.headers["x-backend"] == "only"
    assert breaker_of(gateway, only.url)["state"] == "open"
    # Open: refused by the gateway at once, the instance is not asked.
    before = only.stats()["requests"]
    started = time.monotonic()
    for _ in range(20):
        response = await client.get("/x")
        assert response.status_code == 503
        assert response.json()["code"] == "gateway.circuit_open"
        assert response.headers["retry-after"] == "1"
    assert time.monotonic() - started < 1.0
    assert only.stats()["requests"] == before
    # Half-open after the open time: one probe reaches the instance; it fails, so the breaker
    # opens again for twice as long.
    await asyncio.sleep(0.6)
    assert breaker_of(gateway, only.url)["state"] == "half_open"
    response = await client.get("/x")
    assert response.headers.get("x-backend") == "only"
    state = breaker_of(gateway, only.url)
    assert state["state"] == "open"
    assert state["open_for"] == pytest.approx(1.0)
    # Recovered: after the (longer) open time the probe succeeds and the breaker closes.
    plain_get(f"{only.url}/__fail", params={"status": "0"})
    await asyncio.sleep(0.6)
    # Still open while the admin says so (a loaded machine may have slept past the open time).
    if breaker_of(gateway, only.url)["retry_in"] > 0.1:
        assert (await client.get("/x")).json()["code"] == "gateway.circuit_open"
    await asyncio.sleep(max(0.0, breaker_of(gateway, only.url)["retry_in"]) + 0.1)
    response = await client.get("/x")
    assert response.status_code == 200
    state = breaker_of(gateway, only.url)
    assert state["state"] == "closed"
    assert state["times_opened"] == 2
