"""Reloading the configuration of a running gateway: on a file change and on SIGHUP, with one
and with two workers, without dropping requests in flight; bad files rejected."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from disco_support import (
    Gateways,
    Traffic,
    announce,
    events,
    instance_urls,
    rewrite,
    until,
    wait_for_event,
)
from gateway_support import (
    Backend,
    BackendFactory,
    Gateway,
    free_port,
    gateway_config,
    plain_client,
)

from mosaic_kit.nats.connection import Client, connect

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def gws(tmp_path: Path) -> Iterator[Gateways]:
    factory = Gateways(tmp_path)
    yield factory
    for gateway in factory.started:
        gateway.process.stop()


# The file is looked at five times a second (default: once), so a change is seen soon.
WATCH = "200ms"


def routing(to: str, a: Backend, b: Backend, **server: Any) -> dict[str, Any]:
    """`/r/*` goes to backend `to` (a or b)."""
    return gateway_config(
        {"a": {"instances": [a.url]}, "b": {"instances": [b.url]}},
        [{"path": "/r/*", "methods": ["GET"], "backend": to}],
        **{"watch_interval": WATCH, **server},
    )


def discovered(service: str, nats_url: str, path: str) -> dict[str, Any]:
    """`path` goes to backend `blog`, whose instances are those `service` announces on NATS."""
    document = gateway_config(
        {
            "blog": {
                "discovery": {"nats": {"service": service, "interval": "500ms", "timeout": "200ms"}}
            }
        },
        [{"path": path, "methods": ["GET"], "backend": "blog"}],
        watch_interval=WATCH,
    )
    document["nats"] = {"url": nats_url}
    return document


async def fresh_get(gateway: Gateway, path: str) -> httpx.Response:
    """A request on a new connection (so the kernel may give it to any worker)."""
    async with plain_client(base_url=gateway.url, timeout=15) as client:
        return await client.get(path)


async def test_a_changed_file_reroutes_new_requests_while_a_slow_one_finishes_on_the_old_route(
    backends: BackendFactory, gws: Gateways
) -> None:
    a, b = backends("a"), backends("b")
    gateway = gws(routing("a", a, b, timeouts={"shutdown_grace": "20s"}))
    client = gateway.client()
    assert (await client.get("/r/1")).json()["instance"] == "a"

    slow = asyncio.create_task(gateway.client().get("/r/slow", headers={"x-test-hold": "slow"}))
    await until(lambda: a.held("slow") == 1)
    rewrite(gateway, routing("b", a, b))
    reloaded = (await wait_for_event(gateway, "config_reloaded"))[0]
    assert reloaded["reason"] == "file changed"
    assert (reloaded["routes_added"], reloaded["routes_removed"]) == (1, 1)

    # The keep-alive connection opened before the reload follows the new configuration.
    assert (await client.get("/r/2")).json()["instance"] == "b"
    assert (await fresh_get(gateway, "/r/3")).json()["instance"] == "b"
    # The slow request still holds the old runtime: not closed under it.
    assert not slow.done()
    assert events(gateway, "runtime_retired") == []
    a.release("slow")
    response = await slow
    assert response.status_code == 200
    assert response.json()["instance"] == "a"
    assert response.json()["path"] == "/r/slow"
    await wait_for_event(gateway, "runtime_retired")


async def test_a_bad_file_is_rejected_and_the_old_configuration_keeps_serving(
    backends: BackendFactory, gws: Gateways
) -> None:
    a, b = backends("a"), backends("b")
    gateway = gws(routing("a", a, b))
    client = gateway.client()
    path = str(gateway.config_path)

    rewrite(gateway, "backends:\n  a: {instances: [http://127.0.0.1:1]\nroutes: []\n")
    first = (await wait_for_event(gateway, "config_rejected"))[0]
    assert first["level"] == "error"
    assert re.fullmatch(re.escape(path) + r":\d+:\d+: .+", first["errors"][0])
    assert (await client.get("/r/1")).json()["instance"] == "a"

    bad = routing("a", a, b)
    bad["routes"][0]["backend"] = "nope"
    bad["backends"]["a"]["wieght"] = 2
    rewrite(gateway, bad)
    second = (await wait_for_event(gateway, "config_rejected", count=2))[1]
    assert any(
        re.fullmatch(re.escape(path) + r":\d+:\d+: backends\.a\.wieght: Extra inputs.*", error)
        for error in second["errors"]
    ), second
    assert (await client.get("/r/2")).json()["instance"] == "a"
    bad["backends"]["a"].pop("wieght")
    rewrite(gateway, bad)
    third = (await wait_for_event(gateway, "config_rejected", count=3))[2]
    assert third["errors"] == [
        f"{path}:{_position_of(gateway, 'backend: nope')}: routes[0].backend: "
        "unknown backend 'nope' (known: a, b)"
    ]
    assert (await fresh_get(gateway, "/r/3")).json()["instance"] == "a"
    assert events(gateway, "config_reloaded") == []

    rewrite(gateway, routing("b", a, b))
    await wait_for_event(gateway, "config_reloaded")
    assert (await client.get("/r/4")).json()["instance"] == "b"


def _position_of(gateway: Gateway, text: str) -> str:
    lines = gateway.config_path.read_text().splitlines()
    return next(f"{n}:{line.index(text) + 1}" for n, line in enumerate(lines, 1) if text in line)


@pytest.mark.parametrize("workers", [1, 2])
async def test_the_file_is_looked_at_only_as_often_as_watch_interval_says(
    backends: BackendFactory, gws: Gateways, workers: int
) -> None:
    # An hour between looks: a changed file goes unnoticed for now (at the default second, or
    # if the setting were ignored, it would be applied well within the wait), and SIGHUP still
    # applies it. One worker watches in the worker, two in the supervisor.
    a, b = backends("a"), backends("b")
    gateway = gws(routing("a", a, b, watch_interval="1h"), workers=workers)
    assert (await fresh_get(gateway, "/r/0")).json()["instance"] == "a"
    rewrite(gateway, routing("b", a, b, watch_interval="1h"))
    await asyncio.sleep(2.5)
    assert events(gateway, "config_reloaded") == []
    assert (await fresh_get(gateway, "/r/1")).json()["instance"] == "a"
    gateway.process.signal(signal.SIGHUP)
    await wait_for_event(gateway, "config_reloaded", count=workers)
    assert (await fresh_get(gateway, "/r/2")).json()["instance"] == "b"


async def test_sighup_reloads_every_worker_while_requests_in_flight_finish(
    backends: BackendFactory, gws: Gateways
) -> None:
    a, b = backends("a"), backends("b")
    gateway = gws(routing("a", a, b), workers=2, args=["--no-watch"])
    # Slow requests on their own connections, so on both workers.
    slow = [asyncio.create_task(fresh_get_slow(gateway, f"/r/slow{index}")) for index in range(8)]
    await until(lambda: a.held("slow") == 8)

    # A bad file: the supervisor rejects it, the workers are left alone.
    rewrite(gateway, "routes: [}\n")
    gateway.process.signal(signal.SIGHUP)
    rejected = (await wait_for_event(gateway, "config_rejected"))[0]
    assert "worker_pid" not in rejected
    assert rejected["errors"][0].startswith(f"{gateway.config_path}:1:")

    rewrite(gateway, routing("b", a, b))
    # --no-watch: a changed file alone changes nothing (watched, it would within 200 ms)
    await asyncio.sleep(1)
    assert events(gateway, "config_reloaded") == []
    assert events(gateway, "config_forwarded") == []
    assert (await fresh_get(gateway, "/r/0")).json()["instance"] == "a"

    gateway.process.signal(signal.SIGHUP)
    reloaded = await wait_for_event(gateway, "config_reloaded", count=2)
    workers = {event["worker_pid"] for event in reloaded}
    assert len(workers) == 2
    assert all(event["reason"] == "SIGHUP" for event in reloaded)
    assert [e["reason"] for e in events(gateway, "config_forwarded")] == ["SIGHUP"]
    assert len(events(gateway, "config_rejected")) == 1
    for index in range(20):
        assert (await fresh_get(gateway, f"/r/new{index}")).json()["instance"] == "b"

    assert not any(task.done() for task in slow)
    a.release("slow")
    answers = await asyncio.gather(*slow)
    assert [r.status_code for r in answers] == [200] * 8
    assert {r.json()["instance"] for r in answers} == {"a"}
    assert gateway.process.proc.poll() is None

    # A worker that dies is replaced with the configuration as reloaded, not the first one.
    os.kill(next(iter(workers)), signal.SIGKILL)
    await wait_for_event(gateway, "worker_spawned", count=3)
    await wait_for_event(gateway, "worker_started", count=3)
    for index in range(20):
        response = await fresh_get(gateway, f"/r/after{index}")
        assert response.json()["instance"] == "b"


async def fresh_get_slow(gateway: Gateway, path: str) -> httpx.Response:
    async with plain_client(base_url=gateway.url, timeout=20) as client:
        return await client.get(path, headers={"x-test-hold": "slow"})


async def test_with_two_workers_a_changed_file_reaches_both(
    backends: BackendFactory, gws: Gateways
) -> None:
    a, b = backends("a"), backends("b")
    gateway = gws(routing("a", a, b), workers=2)
    rewrite(gateway, routing("b", a, b))
    reloaded = await wait_for_event(gateway, "config_reloaded", count=2)
    assert len({event["worker_pid"] for event in reloaded}) == 2
    assert [e["reason"] for e in events(gateway, "config_forwarded")] == ["file changed"]
    for index in range(20):
        assert (await fresh_get(gateway, f"/r/{index}")).json()["instance"] == "b"


async def test_a_single_worker_reloads_on_sighup_instead_of_dying(
    backends: BackendFactory, gws: Gateways
) -> None:
    a, b = backends("a"), backends("b")
    gateway = gws(routing("a", a, b), workers=1, args=["--no-watch"])
    rewrite(gateway, routing("b", a, b))
    gateway.process.signal(signal.SIGHUP)
    await wait_for_event(gateway, "config_reloaded")
    assert gateway.process.proc.poll() is None
    assert (await fresh_get(gateway, "/r/1")).json()["instance"] == "b"


async def test_settings_that_need_a_restart_keep_their_values_and_the_rest_applies(
    backends: BackendFactory, gws: Gateways
) -> None:
    a, b = backends("a"), backends("b")
    gateway = gws(routing("a", a, b, limits={"max_body_bytes": "1MiB"}))
    other_port = free_port()
    rewrite(
        gateway,
        routing("b", a, b, port=other_port, workers=3, limits={"max_body_bytes": 10}),
    )
    warning = (await wait_for_event(gateway, "config_restart_needed"))[0]
    assert warning["fields"] == ["server.port", "server.workers"]
    await wait_for_event(gateway, "config_reloaded")
    client = gateway.client()
    assert (await client.get("/r/1")).json()["instance"] == "b"
    # The new default body limit applies (a server setting that can change live).
    async with plain_client(base_url=gateway.url) as fresh:
        response = await fresh.request("GET", "/r/2", content=b"x" * 11)
    assert response.status_code == 413
    with pytest.raises(httpx.ConnectError):
        await fresh_get_at(other_port)


async def fresh_get_at(port: int) -> httpx.Response:
    async with plain_client(timeout=2) as client:
        return await client.get(f"http://127.0.0.1:{port}/r/x")


# --- a reload with NATS discovery --------------------------------------------------------------


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(nats_url, "test-gateway-reload")
    yield client
    await client.close()


async def test_a_reload_keeps_the_discovered_instances_when_discovery_does_not_answer(
    nc: Client, nats_url: str, backends: BackendFactory, gws: Gateways
) -> None:
    # The new runtime's first discovery round finds nobody (the announcements stopped, as when
    # a round is slow or NATS hiccups): it starts from the instances the old runtime knew.
    service = "blog-" + uuid.uuid4().hex[:8]
    a = backends("a")
    announced = await announce(nc, service, a.url)

    def config(path: str) -> dict[str, Any]:
        return discovered(service, nats_url, path)

    gateway = await asyncio.to_thread(gws, config("/v1/*"))
    client = gateway.client()
    assert (await client.get("/v1/x")).status_code == 200
    await announced.stop()
    await wait_for_event(gateway, "discovery_empty")
    rewrite(gateway, config("/*"))
    await wait_for_event(gateway, "config_reloaded")
    answer = await client.get("/v1/x")
    assert answer.status_code == 200, answer.text
    assert answer.json()["instance"] == "a"
    assert await instance_urls(gateway, "blog") == {a.url}


async def test_a_reload_keeps_nats_connected_and_discovered_instances_serve_without_a_gap(
    nc: Client, nats_url: str, backends: BackendFactory, gws: Gateways
) -> None:
    service = "blog-" + uuid.uuid4().hex[:8]
    a, b = backends("a"), backends("b")
    announced = [await announce(nc, service, a.url), await announce(nc, service, b.url)]

    def config(path: str) -> dict[str, Any]:
        return discovered(service, nats_url, path)

    # Started in a thread: this loop answers the gateway's discovery requests meanwhile.
    gateway = await asyncio.to_thread(gws, config("/v1/*"))
    async with Traffic(gateway.client(), "/v1/x") as traffic:
        await until(lambda: traffic.total > 20)
        rewrite(gateway, config("/*"))  # still routes /v1/x
        await wait_for_event(gateway, "config_reloaded")
        total = traffic.total
        await until(lambda: traffic.total > total + 20)
    assert traffic.failures == []
    assert set(traffic.by_instance) == {"a", "b"}
    assert await instance_urls(gateway, "blog") == {a.url, b.url}
    assert len(events(gateway, "nats_connected")) == 1
    await wait_for_event(gateway, "runtime_retired")
    for service_instance in announced:
        await service_instance.stop()
