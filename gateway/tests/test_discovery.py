"""A backend's instances from NATS service discovery (`$SRV.INFO`) and from DNS, changing under
traffic: real gateway processes, real backend processes, real NATS, real `nats.micro` services."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from disco_support import (
    Traffic,
    admin,
    announce,
    events,
    instance_urls,
    until,
    wait_for_event,
)
from gateway_support import BackendFactory, Gateway, GatewayFactory, gateway_config

from mosaic_gateway.config import ConfigError, parse_config
from mosaic_gateway.upstream.balancer import Address, Backend
from mosaic_gateway.upstream.breaker import CircuitBreaker
from mosaic_gateway.upstream.connection import Pool
from mosaic_gateway.upstream.discovery import DiscoveryWatcher, NatsWatcher, http_address
from mosaic_kit.nats.connection import Client, connect

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(nats_url, "test-gateway-discovery")
    yield client
    await client.close()


def service_name() -> str:
    return "blog-" + uuid.uuid4().hex[:8]


async def started(gateways: GatewayFactory, config: dict[str, Any]) -> Gateway:
    # In a thread: the services announced by this test answer discovery from this loop.
    return await asyncio.to_thread(gateways, config)


def nats_config(nats_url: str, service: str, **backend: Any) -> dict[str, Any]:
    config = gateway_config(
        {
            "blog": {
                "discovery": {
                    "nats": {
                        "service": service,
                        "interval": "300ms",
                        "timeout": "150ms",
                        "missing_rounds": 2,
                    }
                },
                **backend,
            }
        },
        [{"path": "/d/*", "methods": ["GET"], "backend": "blog"}],
    )
    config["nats"] = {"url": nats_url}
    return config


# --- through the gateway --------------------------------------------------------------------


async def test_nats_discovery_adds_and_removes_instances_under_traffic_without_failures(
    nc: Client, nats_url: str, backends: BackendFactory, gateways: GatewayFactory
) -> None:
    service = service_name()
    a, b = backends("a"), backends("b")
    announced_a = await announce(nc, service, a.url)
    announced_b = await announce(nc, service, b.url)
    gateway = await started(gateways, nats_config(nats_url, service))
    # The first round ran before the gateway served: both are there from the start.
    assert await instance_urls(gateway, "blog") == {a.url, b.url}
    source = (await admin(gateway, "/admin/backends"))["backends"]["blog"]["source"]
    assert source["kind"] == "nats"
    assert source["service"] == service
    assert set(source["ids"]) == {a.url, b.url}

    client = gateway.client()
    seen = {(await client.get("/d/x")).json()["instance"] for _ in range(8)}
    assert seen == {"a", "b"}

    # Slow requests (held by the backends until released), alternating between a and b; those
    # on `a` are in flight when it leaves and must finish on it: its pool drains, it is not cut.
    slow = [
        asyncio.create_task(client.get("/d/slow", headers={"x-test-hold": "slow"}))
        for _ in range(4)
    ]
    await until(lambda: a.held("slow") == 2 and b.held("slow") == 2)
    async with Traffic(gateway.client(), "/d/steady") as traffic:
        await until(lambda: traffic.total > 20)
        await announced_a.stop()
        await until(lambda: _equals(instance_urls(gateway, "blog"), {b.url}), timeout=10)
        assert not any(task.done() for task in slow)
        assert await _draining(gateway, "blog", [a.url])
        await asyncio.sleep(0.3)  # quick requests that picked `a` just before are done
        served_before = dict(traffic.by_instance)
        await until(lambda: traffic.by_instance.get("b", 0) > served_before.get("b", 0) + 20)
        assert traffic.by_instance.get("a", 0) == served_before.get("a", 0)

        assert not any(task.done() for task in slow)
        a.release("slow")
        b.release("slow")
        answers = await asyncio.gather(*slow)
        assert [r.status_code for r in answers] == [200] * 4
        assert sorted(r.json()["instance"] for r in answers) == ["a", "a", "b", "b"]
        # Once they are done, `a`'s pool is closed and it leaves the admin view.
        await until(lambda: _draining(gateway, "blog", []), timeout=10)

        c = await asyncio.to_thread(backends, "c")
        announced_c = await announce(nc, service, c.url)
        await until(lambda: _equals(instance_urls(gateway, "blog"), {b.url, c.url}))
        await until(lambda: traffic.by_instance.get("c", 0) > 10)
    assert traffic.failures == []
    await announced_b.stop()
    await announced_c.stop()

    changes = events(gateway, "instances_discovered")
    assert any(e["removed"] == [a.url] for e in changes)
    assert any(e["added"] == [c.url] for e in changes)
    assert events(gateway, "instance_drained")[0]["instance"] == a.url


async def _rounds(gateway: Gateway) -> int:
    return int((await admin(gateway, "/admin/backends"))["backends"]["blog"]["source"]["rounds"])


async def _rounds_after(gateway: Gateway, count: int) -> bool:
    return await _rounds(gateway) >= count


async def _equals(urls: Any, expected: set[str]) -> bool:
    return bool(await urls == expected)


async def _draining(gateway: Any, backend: str, expected: list[str]) -> bool:
    document = await admin(gateway, "/admin/backends")
    return [i["url"] for i in document["backends"][backend]["draining"]] == expected


async def test_when_no_instance_answers_the_last_known_set_keeps_serving(
    nc: Client, nats_url: str, backends: BackendFactory, gateways: GatewayFactory
) -> None:
    service = service_name()
    a = backends("a")
    announced = await announce(nc, service, a.url)
    gateway = await started(gateways, nats_config(nats_url, service))
    client = gateway.client()
    assert (await client.get("/d/1")).json()["instance"] == "a"

    await announced.stop()
    warning = (await wait_for_event(gateway, "discovery_empty"))[0]
    assert warning["kept"] == [a.url]
    assert warning["level"] == "warning"
    rounds = await _rounds(gateway)
    await until(lambda: _rounds_after(gateway, rounds + 2))  # a few more empty rounds
    assert await instance_urls(gateway, "blog") == {a.url}
    assert (await client.get("/d/2")).json()["instance"] == "a"
    source = (await admin(gateway, "/admin/backends"))["backends"]["blog"]["source"]
    assert source["stale"] is True

    announced = await announce(nc, service, a.url)
    await wait_for_event(gateway, "discovery_recovered")
    assert len(events(gateway, "discovery_empty")) == 1  # warned once, not every round
    await announced.stop()


async def test_nats_discovery_needs_no_instance_at_start_and_answers_503_until_one_comes(
    nc: Client, nats_url: str, backends: BackendFactory, gateways: GatewayFactory
) -> None:
    service = service_name()
    gateway = await started(gateways, nats_config(nats_url, service))
    client = gateway.client()
    response = await client.get("/d/x")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "gateway.unavailable"

    a = backends("a")
    announced = await announce(nc, service, a.url)
    await until(lambda: _equals(instance_urls(gateway, "blog"), {a.url}))
    assert (await client.get("/d/x")).json()["instance"] == "a"
    await announced.stop()


async def test_dns_discovery_resolves_a_name_into_instances(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    a = backends("a")
    gateway = gateways(
        gateway_config(
            {
                "blog": {
                    "discovery": {
                        "dns": {
                            "name": "localhost",
                            "port": a.port,
                            "family": "ipv4",
                            "interval": "60s",
                        }
                    },
                    "health_check": {"path": "/readyz", "interval": "200ms"},
                }
            },
            [{"path": "/d/*", "methods": ["GET"], "backend": "blog"}],
        )
    )
    assert await instance_urls(gateway, "blog") == {a.url}  # http://127.0.0.1:PORT
    source = (await admin(gateway, "/admin/backends"))["backends"]["blog"]["source"]
    assert source == {
        "kind": "dns",
        "name": "localhost",
        "port": a.port,
        "family": "ipv4",
        "interval": 60.0,
        "rounds": 1,
        "stale": False,
        "last_error": None,
    }
    response = await gateway.client().get("/d/hello")
    assert response.status_code == 200
    assert response.json()["instance"] == "a"
    assert response.json()["path"] == "/d/hello"
    # The health checker checks discovered instances too.
    a.set_healthy(False)
    await until(lambda: _healthy(gateway, False))


async def _healthy(gateway: Any, value: bool) -> bool:
    document = await admin(gateway, "/admin/backends")
    return all(i["healthy"] is value for i in document["backends"]["blog"]["instances"])


async def test_a_name_that_does_not_resolve_gives_503_and_says_why_in_the_admin_view(
    gateways: GatewayFactory,
) -> None:
    gateway = gateways(
        gateway_config(
            {"blog": {"discovery": {"dns": {"name": "nothing.invalid", "port": 80}}}},
            [{"path": "/d/*", "methods": ["GET"], "backend": "blog"}],
        )
    )
    response = await gateway.client().get("/d/x")
    assert response.status_code == 503
    assert response.json()["code"] == "gateway.unavailable"
    blog = (await admin(gateway, "/admin/backends"))["backends"]["blog"]
    assert blog["instances"] == []
    assert blog["source"]["stale"] is True
    assert events(gateway, "discovery_empty")[0]["name"] == "nothing.invalid"


# --- the watcher against real NATS, without a gateway -----------------------------------------


def _backend() -> Backend:
    loop = asyncio.get_running_loop()
    backend = Backend(
        loop, "blog", policy="round_robin", eject_after=3, eject_for=10, failure_statuses=[503]
    )

    def parts(address: Address) -> tuple[Pool, CircuitBreaker]:
        pool = Pool(
            loop,
            address.host,
            address.port,
            max_connections=4,
            idle_timeout=4,
            connect_timeout=1,
        )
        return pool, CircuitBreaker(name=address.url)

    backend.make_parts = parts
    return backend


async def test_an_instance_goes_after_missing_rounds_and_unusable_announcements_are_skipped(
    nc: Client,
) -> None:
    service = service_name()
    backend = _backend()
    watcher = NatsWatcher(backend, nc, service=service, interval=60, timeout=0.2, missing_rounds=2)
    one = await announce(nc, service, "http://127.0.0.1:9001")
    two = await announce(nc, service, "http://127.0.0.1:9002/")  # same as without the slash
    twin = await announce(nc, service, "http://127.0.0.1:9002")  # two replies, one instance
    unbound = await announce(nc, service, "http://0.0.0.0:9003")  # a bind address: no one
    silent = await announce(nc, service, None)  # no metadata.http at all
    other = await announce(nc, service + "-other", "http://127.0.0.1:9004")
    try:
        await watcher.run_round()
        urls = [i.url for i in backend.instances]
        assert sorted(urls) == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
        first = next(i for i in backend.instances if i.url == "http://127.0.0.1:9001")

        await one.stop()
        await watcher.run_round()  # missed one round: still there
        assert len(backend.instances) == 2
        assert first in backend.instances
        await watcher.run_round()  # missed two: gone, draining (nothing holds it: closes)
        assert [i.url for i in backend.instances] == ["http://127.0.0.1:9002"]
        assert [i.url for i in backend.draining] == ["http://127.0.0.1:9001"]
        backend.sweep(asyncio.get_running_loop().time())
        assert backend.draining == []
        assert first.pool.closed
    finally:
        for service_instance in (two, twin, unbound, silent, other):
            await service_instance.stop()


class _Scripted(DiscoveryWatcher):
    """A watcher whose rounds answer what the test says (the apply rules, in isolation)."""

    kind = "scripted"

    def __init__(self, backend: Backend) -> None:
        self.results: list[list[Address] | Exception] = []
        super().__init__(backend, interval=60)

    async def discover(self) -> list[Address]:
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


async def test_updates_keep_the_state_of_instances_that_stay_and_never_empty_a_backend() -> None:
    backend = _backend()
    watcher = _Scripted(backend)
    a = Address("http://127.0.0.1:9101", "127.0.0.1", 9101)
    b = Address("http://127.0.0.1:9102", "127.0.0.1", 9102)
    c = Address("http://127.0.0.1:9103", "127.0.0.1", 9103)
    watcher.results = [[a, b], [b, c], [], OSError("resolver down"), [a]]

    await watcher.run_round()
    inst_a, inst_b = backend.instances
    # b is ejected and its breaker open: it stays so across the update.
    for _ in range(5):
        picked = backend.pick_other(inst_a)
        assert picked is inst_b
        backend.failed(inst_b, backend.permit, "status")
    assert inst_b.ejected
    assert inst_b.breaker.state == "open"
    # a holds a request in flight when it is removed.
    assert backend.pick_other(inst_b) is inst_a
    permit = backend.permit

    await watcher.run_round()
    assert [i.url for i in backend.instances] == [b.url, c.url]
    assert backend.instances[0] is inst_b
    assert inst_b.ejected
    assert inst_b.breaker.state == "open"
    assert backend.available == [backend.instances[1]]  # c: b is ejected
    backend.sweep(0)
    assert backend.draining == [inst_a]  # its request still runs
    assert not inst_a.pool.closed

    await watcher.run_round()  # empty: keep b and c
    await watcher.run_round()  # failed: keep b and c
    assert [i.url for i in backend.instances] == [b.url, c.url]
    assert watcher.last_error == "OSError: resolver down"
    assert backend.source["stale"] is True

    await watcher.run_round()  # a is back before it drained: the same instance
    assert [i.url for i in backend.instances] == [a.url]
    assert backend.instances[0] is inst_a
    assert [i.url for i in backend.draining] == [b.url, c.url]
    assert backend.source["stale"] is False
    backend.succeeded(inst_a, permit)
    backend.sweep(0)
    assert backend.draining == []
    assert inst_b.pool.closed
    assert not inst_a.pool.closed
    backend.close()


def test_announced_urls_are_checked_before_use() -> None:
    assert http_address("http://10.0.0.5:8001") == Address("http://10.0.0.5:8001", "10.0.0.5", 8001)
    assert http_address("http://[::1]:8001/") == Address("http://[::1]:8001", "::1", 8001)
    for bad in (
        "https://10.0.0.5:8001",
        "http://10.0.0.5",  # no port: a service announces the one it listens on
        "http://10.0.0.5:0",
        "http://[::]:8001",
        "http://10.0.0.5:8001/api",
        "http://10.0.0.5:99999",
        "10.0.0.5:8001",
    ):
        assert http_address(bad) is None, bad


# --- configuration --------------------------------------------------------------------------


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    return [str(issue) for issue in caught.value.issues]


ROUTES = "routes:\n  - {path: /x, methods: [GET], backend: b}\n"


def test_discovery_configuration_is_checked() -> None:
    config = parse_config(
        "nats: {url: 'nats://127.0.0.1:4222'}\n"
        "backends:\n"
        "  b:\n"
        "    discovery: {nats: {service: blog, interval: 2s}}\n"
        "  d:\n"
        "    discovery:\n"
        "      dns: {name: blog.internal, port: 8000, interval: 10s, family: ipv6}\n" + ROUTES
    )
    nats = config.backends["b"].discovery
    assert nats is not None
    assert nats.nats is not None
    assert (nats.nats.service, nats.nats.interval, nats.nats.timeout) == ("blog", 2.0, 0.5)
    assert nats.nats.missing_rounds == 3
    dns = config.backends["d"].discovery
    assert dns is not None
    assert dns.dns is not None
    assert (dns.dns.name, dns.dns.port, dns.dns.interval, dns.dns.family) == (
        "blog.internal",
        8000,
        10.0,
        "ipv6",
    )

    assert errors_of("backends:\n  b:\n    balancing: round_robin\n" + ROUTES) == [
        "gw.yaml:2:3: backends.b: give `instances` (a static list) or `discovery` (dns/nats)"
    ]
    assert errors_of(
        "backends:\n  b:\n    instances: [http://127.0.0.1:1]\n"
        "    discovery: {dns: {name: x, port: 1}}\n" + ROUTES
    ) == ["gw.yaml:4:5: backends.b.discovery: give `instances` or `discovery`, not both"]
    assert errors_of("backends:\n  b:\n    discovery: {nats: {service: blog}}\n" + ROUTES) == [
        "gw.yaml:3:17: backends.b.discovery.nats: "
        "discovery over NATS needs the top-level `nats:` section"
    ]
    assert errors_of("backends:\n  b:\n    discovery: {}\n" + ROUTES) == [
        "gw.yaml:3:5: backends.b.discovery: give exactly one of `dns` and `nats`"
    ]
    assert errors_of(
        "backends:\n  b:\n    discovery: {dns: {name: 'no such host', port: 0}}\n" + ROUTES
    ) == [
        "gw.yaml:3:23: backends.b.discovery.dns.name: 'no such host' is not a host name",
        "gw.yaml:3:45: backends.b.discovery.dns.port: Input should be greater than or equal to 1",
    ]
    assert errors_of(
        "nats: {url: 'nats://x'}\nbackends:\n  b:\n"
        "    discovery: {nats: {service: 'a.b', interval: 1s, timeout: 1s}}\n" + ROUTES
    ) == [
        "gw.yaml:4:24: backends.b.discovery.nats.service: "
        "a nats.micro service name is letters, digits, '_' and '-'",
    ]
    assert errors_of(
        "nats: {url: 'nats://x'}\nbackends:\n  b:\n"
        "    discovery: {nats: {service: blog, interval: 1s, timeout: 1s}}\n" + ROUTES
    ) == ["gw.yaml:4:17: backends.b.discovery.nats: timeout must be shorter than interval"]


class _LosesOneCancel(DiscoveryWatcher):
    """A watcher whose round swallows the first cancellation, as a library call can when it
    finishes at the moment it is cancelled (asyncio.wait_for on Python 3.11)."""

    kind = "scripted"

    def __init__(self, backend: Backend) -> None:
        self.round_started = asyncio.Event()
        self.swallowed = 0
        super().__init__(backend, interval=0.01)

    async def discover(self) -> list[Address]:
        self.round_started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
        return []


async def test_stop_ends_a_round_that_lost_its_cancellation() -> None:
    watcher = _LosesOneCancel(_backend())
    watcher._task = asyncio.get_running_loop().create_task(watcher._run())
    await asyncio.wait_for(watcher.round_started.wait(), 5)
    # One cancel was all the old stop() sent: it waited for the loop forever (a reload's old
    # runtime never retired). Not wait_for: its own cancel would reach the task and end it.
    stopping = asyncio.get_running_loop().create_task(watcher.stop())
    done, _ = await asyncio.wait({stopping}, timeout=1)
    if not done:
        task = watcher._task
        assert task is not None
        task.cancel()  # the test's own cleanup, then the verdict
        await asyncio.wait({stopping}, timeout=1)
    assert done, "stop() was still waiting for the round after 1 s"
    assert watcher.swallowed == 1
    assert watcher._task is None
