from __future__ import annotations

import asyncio

import pytest
from fastapi import APIRouter
from kit_support import build_app, client
from prometheus_client import CollectorRegistry

from mosaic_kit import metrics


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def _router(gate: asyncio.Event | None = None, entered: asyncio.Event | None = None) -> APIRouter:
    router = APIRouter(prefix="/v1/users")

    @router.get("/{user_id}")
    async def get_user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    @router.post("/{user_id}/wait")
    async def wait(user_id: int) -> dict[str, int]:
        assert gate is not None
        assert entered is not None
        entered.set()
        await gate.wait()
        return {"id": user_id}

    return router


async def test_requests_are_counted_by_route_template_not_path() -> None:
    registry = metrics.new_registry(process_metrics=False)
    app = build_app([_router()], registry=registry)
    async with client(app) as c:
        for user_id in (1, 2, 3):
            assert (await c.get(f"/v1/users/{user_id}")).status_code == 200
        assert (await c.get("/v1/users/not-a-number")).status_code == 422
        assert (await c.get("/v1/nothing/here")).status_code == 404
        assert (await c.delete("/v1/users/1")).status_code == 405
        text = (await c.get("/metrics")).text

    route = "/v1/users/{user_id}"
    assert _value(registry, "http_requests_total", method="GET", route=route, status="200") == 3
    assert _value(registry, "http_requests_total", method="GET", route=route, status="422") == 1
    assert _value(registry, "http_requests_total", method="DELETE", route=route, status="405") == 1
    assert (
        _value(registry, "http_requests_total", method="GET", route="unmatched", status="404") == 1
    )
    assert _value(registry, "http_request_duration_seconds_count", method="GET", route=route) == 4
    # Ids in URLs must never become label values (one series per user would follow).
    assert "/v1/users/1" not in text
    assert "not-a-number" not in text
    assert "/v1/nothing/here" not in text
    # Without the created-timestamp series that double the count for nothing.
    assert "_created" not in text


async def test_framework_routes_and_redirects_are_labelled() -> None:
    registry = metrics.new_registry(process_metrics=False)
    app = build_app([_router()], registry=registry)
    async with client(app) as c:
        assert (await c.get("/docs")).status_code == 200
        assert (await c.get("/openapi.json")).status_code == 200
        assert (await c.get("/v1/users/5/")).status_code == 307
    for route, status in (("/docs", "200"), ("/openapi.json", "200"), ("unmatched", "307")):
        labels = {"method": "GET", "route": route, "status": status}
        assert _value(registry, "http_requests_total", **labels) == 1, route


async def test_unknown_methods_share_one_label_value() -> None:
    registry = metrics.new_registry(process_metrics=False)
    app = build_app([_router()], registry=registry)
    async with client(app) as c:
        await c.request("BREW", "/v1/users/1")
        await c.request("SPAM", "/v1/users/1")
    route = "/v1/users/{user_id}"
    assert _value(registry, "http_requests_total", method="OTHER", route=route, status="405") == 2


async def test_in_flight_gauge_follows_requests() -> None:
    registry = metrics.new_registry(process_metrics=False)
    gate, entered = asyncio.Event(), asyncio.Event()
    app = build_app([_router(gate, entered)], registry=registry)
    async with client(app) as c:
        pending = asyncio.create_task(c.post("/v1/users/7/wait"))
        await asyncio.wait_for(entered.wait(), 10)
        assert _value(registry, "http_requests_in_flight") == 1
        gate.set()
        assert (await pending).status_code == 200
    assert _value(registry, "http_requests_in_flight") == 0


async def test_an_app_per_registry_keeps_counts_apart() -> None:
    first = metrics.new_registry(process_metrics=False)
    second = metrics.new_registry(process_metrics=False)
    async with client(build_app([_router()], registry=first)) as c:
        await c.get("/v1/users/1")
    async with client(build_app([_router()], registry=second)) as c:
        await c.get("/v1/users/1")
        await c.get("/v1/users/2")
    labels = {"method": "GET", "route": "/v1/users/{user_id}", "status": "200"}
    assert _value(first, "http_requests_total", **labels) == 1
    assert _value(second, "http_requests_total", **labels) == 2


def test_http_metrics_are_created_once_per_registry() -> None:
    registry = metrics.new_registry(process_metrics=False)
    assert metrics.http_metrics(registry) is metrics.http_metrics(registry)


def test_gauge_is_get_or_create() -> None:
    registry = metrics.new_registry(process_metrics=False)
    lag = metrics.gauge("consumer_lag", "Messages behind.", ["durable"], registry=registry)
    again = metrics.gauge("consumer_lag", "Messages behind.", ["durable"], registry=registry)
    assert again is lag
    lag.labels("blog-authors").set(12)
    assert _value(registry, "consumer_lag", durable="blog-authors") == 12


def test_same_name_with_other_labels_or_type_is_refused() -> None:
    registry = metrics.new_registry(process_metrics=False)
    metrics.gauge("pool_size", "Connections.", ["pool"], registry=registry)
    with pytest.raises(ValueError, match="pool_size"):
        metrics.gauge("pool_size", "Connections.", ["other"], registry=registry)
    with pytest.raises(ValueError, match="pool_size"):
        metrics.counter("pool_size", "Connections.", ["pool"], registry=registry)


def test_counter_and_histogram_helpers() -> None:
    registry = metrics.new_registry(process_metrics=False)
    metrics.counter("events_published", "Events.", ["type"], registry=registry).labels("a").inc(2)
    metrics.histogram("rpc_seconds", "RPC time.", buckets=(0.1, 1.0), registry=registry).observe(
        0.5
    )
    assert _value(registry, "events_published_total", type="a") == 2
    assert _value(registry, "rpc_seconds_bucket", le="0.1") == 0
    assert _value(registry, "rpc_seconds_bucket", le="1.0") == 1


def test_callback_gauge_is_read_at_scrape_time() -> None:
    registry = metrics.new_registry(process_metrics=False)
    pool = {"checked_out": 1}
    metrics.callback_gauge(
        "db_pool_checked_out", "Connections in use.", lambda: pool["checked_out"], registry=registry
    )
    assert _value(registry, "db_pool_checked_out") == 1
    pool["checked_out"] = 4
    assert _value(registry, "db_pool_checked_out") == 4


def test_callback_gauge_with_labels_and_replacement() -> None:
    registry = metrics.new_registry(process_metrics=False)
    metrics.callback_gauge(
        "consumer_pending",
        "Pending messages.",
        lambda: {("a",): 3.0, ("b",): 5.0},
        labelnames=["durable"],
        registry=registry,
    )
    assert _value(registry, "consumer_pending", durable="b") == 5
    # A restarted component registers again; its values replace the old reader's.
    metrics.callback_gauge(
        "consumer_pending",
        "Pending messages.",
        lambda: {("a",): 0.0},
        labelnames=["durable"],
        registry=registry,
    )
    assert _value(registry, "consumer_pending", durable="a") == 0
    assert _value(registry, "consumer_pending", durable="b") is None


def test_a_failing_callback_does_not_break_the_scrape() -> None:
    registry = metrics.new_registry(process_metrics=False)

    def broken() -> float:
        raise RuntimeError("pool disposed")

    metrics.callback_gauge("db_pool_size", "Pool size.", broken, registry=registry)
    metrics.gauge("still_here", "Other metric.", registry=registry).set(1)
    text = metrics.render(registry).decode()
    assert "still_here 1.0" in text
    assert "# TYPE db_pool_size gauge" in text


def test_process_registry_exposes_process_metrics() -> None:
    text = metrics.render(metrics.default_registry()).decode()
    assert "process_resident_memory_bytes" in text
    assert "python_info" in text
