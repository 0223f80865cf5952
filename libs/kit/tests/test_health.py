from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI
from kit_support import INSTANCE, SERVICE, build_app, client

from mosaic_kit.fastapi.health import run_checks
from mosaic_kit.metrics import gauge, new_registry


async def test_healthz_reports_identity_and_build() -> None:
    async with client(build_app()) as c:
        resp = await c.get("/healthz")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {
        "status": "ok",
        "service": SERVICE,
        "instance": INSTANCE,
        "version": "9.8.7",
        "commit": "abc1234",
    }


async def test_healthz_stays_up_while_dependencies_are_down() -> None:
    app = build_app()

    async def down() -> None:
        raise ConnectionRefusedError

    app.state.readiness = {"db": down}
    async with client(app) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).status_code == 503


async def test_readyz_without_checks_is_ready() -> None:
    async with client(build_app()) as c:
        resp = await c.get("/readyz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready", "checks": {}}


async def test_readyz_passes_when_every_check_passes() -> None:
    app = build_app()
    calls: list[str] = []

    async def db() -> None:
        calls.append("db")

    async def nats() -> bool:
        calls.append("nats")
        return True

    app.state.readiness = {"db": db, "nats": nats}
    async with client(app) as c:
        resp = await c.get("/readyz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready", "checks": {"db": "ok", "nats": "ok"}}
    assert sorted(calls) == ["db", "nats"]


async def test_readyz_names_the_failing_check_without_its_message() -> None:
    app = build_app()

    async def db() -> None:
        raise OSError("could not connect to postgresql://admin:hunter2@db:5432")

    async def nats() -> None:
        return None

    app.state.readiness = {"db": db, "nats": nats}
    async with client(app) as c:
        resp = await c.get("/readyz")
    assert resp.status_code == 503
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["status"] == "unavailable"
    assert body["failing"] == ["db"]
    assert body["checks"] == {"db": "failed: OSError", "nats": "ok"}
    assert "hunter2" not in resp.text


async def test_readyz_times_out_a_hanging_check() -> None:
    app = build_app(readiness_timeout=0.2)
    cancelled = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def fine() -> None:
        return None

    app.state.readiness = {"nats": hangs, "db": fine}
    async with client(app) as c:
        resp = await c.get("/readyz")
    assert resp.status_code == 503
    assert resp.json()["checks"] == {"nats": "timeout", "db": "ok"}
    # The hung check is cancelled, not left running in the background.
    assert cancelled.is_set()


async def test_checks_run_concurrently() -> None:
    # Each check waits for the other to start: run one after the other, both would time out.
    a_started, b_started = asyncio.Event(), asyncio.Event()

    async def a() -> None:
        a_started.set()
        await b_started.wait()

    async def b() -> None:
        b_started.set()
        await a_started.wait()

    assert await run_checks({"a": a, "b": b}, 5.0) == {"a": "ok", "b": "ok"}


async def test_metrics_endpoint_serves_the_apps_registry() -> None:
    registry = new_registry(process_metrics=False)
    app = build_app(registry=registry)
    gauge("kit_test_marker", "A gauge only this registry has.", registry=registry).set(42)
    async with client(app) as c:
        await c.get("/healthz")
        resp = await c.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=")
    assert "kit_test_marker 42.0" in resp.text
    assert 'http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in resp.text


async def test_only_metrics_is_hidden_from_the_api_schema() -> None:
    app: FastAPI = build_app()
    paths = app.openapi()["paths"]
    assert "/healthz" in paths
    assert "/readyz" in paths
    assert "/metrics" not in paths


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_probes_carry_a_request_id(path: str) -> None:
    async with client(build_app()) as c:
        resp = await c.get(path)
    assert resp.headers["x-request-id"]
