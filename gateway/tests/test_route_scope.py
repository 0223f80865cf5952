"""A route's view of a backend (`RouteBackend`): its own breakers, the backend's everything else."""

from __future__ import annotations

import asyncio

from mosaic_gateway.upstream.balancer import Address, Backend, Instance
from mosaic_gateway.upstream.breaker import ADMITTED, CLOSED, OPEN, CircuitBreaker
from mosaic_gateway.upstream.connection import Pool
from mosaic_gateway.upstream.route_scope import RouteBackend, ScopedInstance

URLS = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]


def _backend(*, eject_after: int = 1000) -> Backend:
    loop = asyncio.get_running_loop()
    backend = Backend(
        loop,
        "blog",
        policy="round_robin",
        eject_after=eject_after,
        eject_for=10,
        failure_statuses=[503],
        retry_ratio=0.5,
    )

    def parts(address: Address) -> tuple[Pool, CircuitBreaker]:
        pool = Pool(
            loop, address.host, address.port, max_connections=4, idle_timeout=4, connect_timeout=1
        )
        return pool, CircuitBreaker(failure_threshold=3, name=address.url)

    backend.make_parts = parts
    backend.update_instances([_address(url) for url in URLS])
    return backend


def _address(url: str) -> Address:
    return Address(url, "127.0.0.1", int(url.rsplit(":", 1)[1]))


def _view(backend: Backend, threshold: int = 2) -> RouteBackend:
    return RouteBackend(
        backend,
        "/v1/blogs/*",
        "GET",
        lambda url: CircuitBreaker(failure_threshold=threshold, open_for=30, name=url),
    )


def _fail(backend: Backend, times: int) -> list[Instance]:
    """`times` requests through `backend` that fail; the instances they went to."""
    seen = []
    for _ in range(times):
        instance = backend.pick()
        assert instance is not None
        backend.failed(instance, backend.permit, "status")
        seen.append(instance)
    return seen


def _shared(instance: Instance) -> Instance:
    return instance.shared if isinstance(instance, ScopedInstance) else instance


async def test_the_view_hands_out_instances_that_lead_back_to_it() -> None:
    backend = _backend()
    view = _view(backend)
    instance = view.pick()
    assert isinstance(instance, ScopedInstance)
    assert instance.backend is view
    assert instance.pool is instance.shared.pool
    assert instance.url == instance.shared.url
    assert instance.breaker is not instance.shared.breaker
    # What forwarding reports goes to `instance.backend`: the view.
    assert instance.shared.outstanding == 1
    instance.backend.succeeded(instance, view.permit)
    assert instance.shared.outstanding == 0


async def test_a_routes_failures_open_only_its_own_breakers() -> None:
    backend = _backend()
    view, other = _view(backend), _view(backend)
    _fail(view, 4)  # two per instance: the view's threshold
    assert [i.breaker.state for i in view.instances] == [OPEN, OPEN]
    assert [i.breaker.state for i in backend.instances] == [CLOSED, CLOSED]
    assert [i.breaker.state for i in other.instances] == [CLOSED, CLOSED]
    assert view.pick() is None  # every breaker of the route refuses: 503 circuit_open
    assert backend.pick() is not None
    assert other.pick() is not None


async def test_the_backends_failures_leave_a_routes_breakers_closed() -> None:
    backend = _backend()
    view = _view(backend)
    _fail(backend, 6)  # three per instance: the backend's threshold
    assert [i.breaker.state for i in backend.instances] == [OPEN, OPEN]
    assert backend.pick() is None
    assert [i.breaker.state for i in view.instances] == [CLOSED, CLOSED]
    assert view.pick() is not None


async def test_ejection_counts_in_flight_and_rotation_are_shared() -> None:
    backend = _backend(eject_after=2)
    view = _view(backend, threshold=100)
    # Round robin moves along whichever route picks: view, backend, view, backend...
    picked = []
    for source in (view, backend, view, backend):
        instance = source.pick()
        assert instance is not None
        picked.append(_shared(instance).url)
        source.finished(instance, source.permit)
    assert picked == [URLS[1], URLS[0], URLS[1], URLS[0]]
    # Failures through the view and through the backend add up to eject the instance.
    first = backend.instances[0]
    scoped = next(i for i in view.instances if _shared(i) is first)
    first.outstanding += 1
    backend.failed(first, ADMITTED, "status")
    scoped.outstanding += 1
    view.failed(scoped, ADMITTED, "status")
    assert first.ejected
    assert scoped.ejected
    assert first.outstanding == 0
    assert [_shared(i) for i in view.available] == [backend.instances[1]]
    assert first.breaker.consecutive_failures == 1  # its own failure only
    assert scoped.breaker.consecutive_failures == 1


async def test_the_retry_budget_is_the_backends() -> None:
    backend = _backend()
    view = _view(backend)
    view.deposit_retry_token()
    backend.deposit_retry_token()  # 0.5 each: one token between them
    assert view.take_retry_token()
    assert not backend.take_retry_token()


async def test_a_routes_open_breaker_sends_a_retry_elsewhere() -> None:
    backend = _backend()
    view = _view(backend, threshold=1)
    failed = _fail(view, 1)[0]
    assert failed.breaker.state == OPEN
    for _ in range(4):
        instance = view.pick()
        assert instance is not None
        assert instance is not failed
        view.succeeded(instance, view.permit)
        assert view.pick_other(instance) is instance  # the only one that admits
        view.finished(instance, view.permit)


async def test_discovered_instances_get_and_lose_route_breakers() -> None:
    backend = _backend()
    view = _view(backend, threshold=1)
    third = "http://127.0.0.1:9003"
    backend.update_instances([_address(url) for url in [*URLS, third]])
    assert [i.url for i in view.instances] == [*URLS, third]
    new = view.instances[2]
    assert isinstance(new, ScopedInstance)
    assert new.breaker.state == CLOSED
    new.outstanding += 1
    view.failed(new, ADMITTED, "status")
    assert new.breaker.state == OPEN
    snapshot = backend.snapshot()["route_breakers"]
    assert isinstance(snapshot, dict)
    assert snapshot["GET /v1/blogs/*"][third]["state"] == OPEN
    # Removed: it drains, and keeps its route breaker should it come back at once.
    backend.update_instances([_address(url) for url in URLS])
    assert [i.url for i in view.instances] == URLS
    assert [i.url for i in view.draining] == [third]
    backend.update_instances([_address(url) for url in [*URLS, third]])
    assert view.instances[2] is new
    assert new.breaker.state == OPEN
    # Removed and drained: its route breaker goes with it; a later comeback starts afresh.
    backend.update_instances([_address(url) for url in URLS])
    backend.sweep(asyncio.get_running_loop().time())
    assert view.draining == []
    backend.update_instances([_address(url) for url in [*URLS, third]])
    assert view.instances[2] is not new
    assert view.instances[2].breaker.state == CLOSED
    backend.close()
