"""Prometheus metrics on the admin port, summed over the workers, through a real gateway."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import httpx
import pytest
from gateway_support import (
    BackendFactory,
    GatewayFactory,
    eventually,
    free_port,
    gateway_config,
    plain_client,
    plain_get,
)
from obs_support import Scrape, access_lines, scrape

pytestmark = pytest.mark.timeout(120)

ITEMS = "/items/{id}"


def config(backends: dict[str, Any], routes: list[dict[str, Any]], **observability: Any) -> Any:
    document = gateway_config(backends, routes)
    document["observability"] = observability
    return document


async def send_each_on_a_new_connection(
    url: str, count: int, path: str = "/items/1", **headers: str
) -> list[int]:
    """`count` requests, each on its own connection (so the kernel spreads them over workers)."""
    statuses = []
    async with plain_client(
        base_url=url, limits=httpx.Limits(max_keepalive_connections=0), timeout=15
    ) as client:
        for _ in range(count):
            statuses.append((await client.get(path, headers=headers)).status_code)
    return statuses


def requests_total(result: Scrape, **labels: str) -> float:
    return sum(value for _, value in result.all("gateway_requests_total", **labels))


async def test_metrics_sum_the_counts_of_every_worker(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = backends("echo")
    gateway = gateways(
        config(
            {"echo": {"instances": [echo.url]}},
            [{"path": ITEMS, "methods": ["GET", "POST"], "backend": "echo"}],
            access_log={"enabled": True},
        ),
        workers=2,
    )
    assert await send_each_on_a_new_connection(gateway.url, 40) == [200] * 40
    assert await send_each_on_a_new_connection(gateway.url, 6, "/nowhere") == [404] * 6
    # The access log says which worker served what: both served some.
    await eventually(lambda: len(access_lines(gateway.process.output())) == 46)
    workers = {line["worker_pid"] for line in access_lines(gateway.process.output())}
    assert len(workers) == 2

    answered_by: set[str | None] = set()

    def complete() -> bool:
        # Every scrape, whichever worker answers it, counts all the requests.
        result = scrape(gateway)
        answered_by.add(result.worker)
        return (
            result.value(
                "gateway_requests_total", route=ITEMS, method="GET", status="200", backend="echo"
            )
            == 40
            and result.value("gateway_requests_total", route="unmatched", status="404") == 6
            and result.value("gateway_workers_reporting") == 2
        )

    await eventually(complete, timeout=15)
    for _ in range(30):
        if len(answered_by) == 2:
            break
        assert complete()
    assert answered_by == {str(pid) for pid in workers}

    result = scrape(gateway)
    assert result.types["gateway_requests_total"] == "counter"
    assert result.types["gateway_request_duration_seconds"] == "histogram"
    assert result.value("gateway_request_duration_seconds_count", route=ITEMS) == 40
    assert result.value("gateway_request_duration_seconds_bucket", route=ITEMS, le="+Inf") == 40
    assert result.value("gateway_request_duration_seconds_sum", route=ITEMS) > 0
    buckets = [
        value for _, value in result.all("gateway_request_duration_seconds_bucket", route=ITEMS)
    ]
    assert buckets == sorted(buckets)  # cumulative
    assert result.value("gateway_response_bytes_total", route=ITEMS) > 40 * 100
    # Labels are route templates, never raw paths.
    assert not [
        labels
        for labels, _ in result.all("gateway_requests_total")
        if "/items/1" in labels.values()
    ]
    # Admin requests (scrapes) are not counted as traffic.
    assert requests_total(result) == 46


async def test_a_respawned_worker_continues_the_counts_of_the_one_it_replaces(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = backends("echo")
    gateway = gateways(
        config(
            {"echo": {"instances": [echo.url]}},
            [{"path": ITEMS, "methods": ["GET"], "backend": "echo"}],
            access_log={"enabled": True},
        ),
        workers=2,
    )
    assert await send_each_on_a_new_connection(gateway.url, 30) == [200] * 30
    await eventually(lambda: len(access_lines(gateway.process.output())) == 30)
    victim = access_lines(gateway.process.output())[0]["worker_pid"]
    await eventually(lambda: requests_total(scrape(gateway), route=ITEMS) == 30, timeout=15)

    def the_victims_file_holds_everything_it_counted() -> bool:
        # The other worker's answer: its own counts plus the victim's last file.
        result = scrape(gateway)
        return result.worker != str(victim) and requests_total(result, route=ITEMS) == 30

    await eventually(the_victims_file_holds_everything_it_counted, timeout=15, interval=0.05)
    os.kill(victim, signal.SIGKILL)
    await eventually(lambda: "metrics_inherited" in gateway.process.output(), timeout=20)
    await eventually(lambda: scrape(gateway).value("gateway_workers_reporting") == 2, timeout=15)
    for _ in range(6):  # whichever worker answers: the count never went back
        assert requests_total(scrape(gateway), route=ITEMS) == 30
    assert await send_each_on_a_new_connection(gateway.url, 10) == [200] * 10
    await eventually(lambda: requests_total(scrape(gateway), route=ITEMS) == 40, timeout=15)


async def test_breaker_state_health_and_failures_of_an_instance_that_dies(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = backends("echo")
    gateway = gateways(
        config(
            {
                "echo": {
                    "instances": [echo.url],
                    "retries": {"attempts": 0},
                    "ejection": {"consecutive_failures": 1, "duration": "60s"},
                    "breaker": {"failure_threshold": 2, "open_for": "60s"},
                }
            },
            [{"path": ITEMS, "methods": ["GET"], "backend": "echo"}],
        )
    )
    client = gateway.client()
    assert (await client.get("/items/1")).status_code == 200
    labels = {"backend": "echo", "upstream_instance": echo.url, "worker": "0"}
    before = scrape(gateway)
    assert before.value("gateway_breaker_state", **labels) == 0
    assert before.value("gateway_instance_ejected", **labels) == 0
    assert before.value("gateway_instance_healthy", **labels) == 1
    assert before.value("gateway_backend_panic", backend="echo", worker="0") == 0

    echo.kill()
    statuses = [(await client.get("/items/1")).status_code for _ in range(4)]
    assert statuses[:2] == [503, 503]  # refused: the instance is down
    assert statuses[2:] == [503, 503]  # the open breaker answers at once
    after = scrape(gateway)
    assert after.value("gateway_breaker_state", **labels) == 2
    assert after.value("gateway_instance_ejected", **labels) == 1
    assert after.value("gateway_backend_panic", backend="echo", worker="0") == 1
    assert (
        after.value(
            "gateway_upstream_failures_total",
            backend="echo",
            upstream_instance=echo.url,
            reason="connect_failed",
        )
        == 2
    )
    assert after.value("gateway_requests_total", route=ITEMS, status="503") == 4


async def test_retries_are_counted_per_backend_and_reason(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    live = backends("live")
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = gateways(
        config(
            {"pair": {"instances": [dead, live.url], "ejection": {"consecutive_failures": 100}}},
            [{"path": ITEMS, "methods": ["GET"], "backend": "pair"}],
        )
    )
    client = gateway.client()
    assert [(await client.get("/items/1")).status_code for _ in range(6)] == [200] * 6
    result = scrape(gateway)
    retries = result.value(
        "gateway_upstream_retries_total", backend="pair", reason="connect_failed"
    )
    failures = result.value(
        "gateway_upstream_failures_total",
        backend="pair",
        upstream_instance=dead,
        reason="connect_failed",
    )
    assert retries == failures == 3  # round robin: every other request met the dead instance
    assert result.value("gateway_requests_total", route=ITEMS, status="200") == 6


async def test_requests_in_flight(backends: BackendFactory, gateways: GatewayFactory) -> None:
    echo = backends("echo")
    gateway = gateways(
        config(
            {"echo": {"instances": [echo.url]}},
            [{"path": ITEMS, "methods": ["GET"], "backend": "echo"}],
        )
    )
    client = gateway.client()
    slow = asyncio.create_task(client.get("/items/slow", headers={"x-test-hold": "slow"}))
    await eventually(
        lambda: scrape(gateway).value("gateway_requests_in_flight", worker="0") == 1, timeout=5
    )
    echo.release("slow")
    assert (await slow).status_code == 200
    assert scrape(gateway).value("gateway_requests_in_flight", worker="0") == 0


async def test_cache_results_are_counted_per_route(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = backends("echo")
    cached = "/cached/{id}"
    gateway = gateways(
        config(
            {"echo": {"instances": [echo.url]}},
            [{"path": cached, "methods": ["GET"], "backend": "echo", "cache": {"ttl": "30s"}}],
            access_log={"enabled": True},
        )
    )
    client = gateway.client()
    for number in range(3):
        response = await client.get("/cached/1", headers={"x-request-id": f"req-cache-{number}"})
        assert response.status_code == 200
    result = scrape(gateway)
    assert result.value("gateway_cache_requests_total", route=cached, result="MISS") == 1
    assert result.value("gateway_cache_requests_total", route=cached, result="HIT") == 2
    # A response from the cache is a 200 like the others, in the metrics and the access log.
    assert result.value("gateway_requests_total", route=cached, status="200") == 3
    await eventually(lambda: len(access_lines(gateway.process.output())) == 3)
    lines = access_lines(gateway.process.output())
    assert [(line["status"], line["cache"]) for line in lines] == [
        (200, "MISS"),
        (200, "HIT"),
        (200, "HIT"),
    ]
    assert lines[1]["bytes"] == lines[2]["bytes"] > len(response.content)


async def test_metrics_can_be_turned_off(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    echo = backends("echo")
    gateway = gateways(
        config(
            {"echo": {"instances": [echo.url]}},
            [{"path": ITEMS, "methods": ["GET"], "backend": "echo"}],
            metrics={"enabled": False},
        )
    )
    response = plain_get(f"http://127.0.0.1:{gateway.admin_port}/metrics")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
