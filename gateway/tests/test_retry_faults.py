"""Instances that fail in ways a retry fixes: one that hangs (accepts, never answers), and one
that answers 503 with `Retry-After` (a service whose database or NATS is gone)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from gateway_support import BackendFactory, GatewayFactory, gateway_config

pytestmark = pytest.mark.timeout(60)

PATIENT = {"ejection": {"consecutive_failures": 1000}, "breaker": {"failure_threshold": 1000}}


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


PROBLEM = orjson.dumps(
    {
        "type": "urn:mosaic:problem:service.unavailable",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "The database is unavailable",
        "code": "service.unavailable",
    }
)


@pytest.fixture
async def unavailable() -> AsyncIterator[str]:
    """An instance whose dependencies are gone: every request gets 503 problem+json with
    `Retry-After: 2` (keep-alive), as the services answer then."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":", 1)[1]))
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\n"
                    b"content-type: application/problem+json\r\nretry-after: 2\r\n"
                    b"x-backend: unavailable\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(PROBLEM), PROBLEM)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def svc(instances: list[str], **extra: Any) -> dict[str, Any]:
    return {"svc": {"instances": instances, "balancing": "round_robin", **extra}}


async def timed(request: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


async def test_a_hung_instance_costs_an_idempotent_request_one_try_not_the_route_timeout(
    shared_backends: BackendFactory, gateways: GatewayFactory, hung: str
) -> None:
    ok = shared_backends("ok")
    retries = {"attempts": 1, "per_try_timeout": "500ms"}
    routes = [
        {"path": "/r/*", "methods": ["GET", "PUT"], "backend": "svc", "timeout": "5s"},
        {"path": "/w/*", "methods": ["POST"], "backend": "svc", "timeout": "1500ms"},
    ]
    gateway = gateways(gateway_config(svc([hung, ok.url], retries=retries, **PATIENT), routes))
    client = gateway.client()

    # Round robin: every other request meets the hung instance first.
    answers = [await timed(client.get(f"/r/{index}")) for index in range(6)]
    answers += [await timed(client.put("/r/put", content=b"again")) for _ in range(2)]
    took = sorted(seconds for _, seconds in answers)
    print("GET/PUT seconds:", [round(seconds, 2) for seconds in took])
    assert [r.status_code for r, _ in answers] == [200] * 8
    assert {r.json()["instance"] for r, _ in answers} == {"ok"}
    assert answers[-1][0].json()["body_length"] == 5  # the small body was replayed
    assert sum(seconds >= 0.45 for seconds in took) == 4  # the four that met the hung one
    assert took[-1] < 2.0  # not the route's 5 s
    instances = gateway.admin("/admin/backends")["backends"]["svc"]["instances"]
    failures = {i["url"]: i["consecutive_failures"] for i in instances}
    assert failures[hung] == 4  # a per-try timeout counts against the instance

    # A POST is not retried: the one that meets the hung instance waits out its route (1.5 s).
    posts = [await timed(client.post("/w/x", content=b"{}")) for _ in range(2)]
    by_status = {r.status_code: seconds for r, seconds in posts}
    assert set(by_status) == {200, 504}
    assert 1.4 <= by_status[504] < 3.0
    assert next(r for r, _ in posts if r.status_code == 504).json()["code"] == "gateway.timeout"


async def test_without_a_per_try_timeout_a_hung_instance_holds_the_request_to_the_route_timeout(
    shared_backends: BackendFactory, gateways: GatewayFactory, hung: str
) -> None:
    ok = shared_backends("ok")
    routes = [{"path": "/r/*", "methods": ["GET"], "backend": "svc", "timeout": "1s"}]
    gateway = gateways(gateway_config(svc([hung, ok.url], **PATIENT), routes))
    client = gateway.client()
    answers = [await timed(client.get(f"/r/{index}")) for index in range(2)]
    assert sorted(r.status_code for r, _ in answers) == [200, 504]
    assert max(seconds for _, seconds in answers) >= 0.95


async def test_a_503_with_retry_after_is_an_instance_failure_retried_for_idempotent_requests(
    shared_backends: BackendFactory, gateways: GatewayFactory, unavailable: str
) -> None:
    """What `mosaic up` configures (retries on 503, 503 counted as a failure; those are also
    the defaults): a replica that lost its database is routed around for GETs, taken out after
    three failures, and a request that cannot be retried gets its 503 and `Retry-After`."""
    ok = shared_backends("ok")
    routes = [{"path": "/*", "methods": ["GET", "POST"], "backend": "svc"}]
    instances = {
        "retries": {"attempts": 1, "on": ["connect_error", 503]},
        "ejection": {"consecutive_failures": 3, "duration": "30s", "statuses": [502, 503, 504]},
    }
    gateway = gateways(gateway_config(svc([unavailable, ok.url], **instances), routes))
    client = gateway.client()

    # A POST is not retried: it gets the service's own answer, Retry-After included.
    post = await client.post("/x", content=b"{}")
    if post.status_code == 200:  # round robin started at the other one
        post = await client.post("/x", content=b"{}")
    assert post.status_code == 503
    assert post.headers["retry-after"] == "2"
    assert post.headers["content-type"] == "application/problem+json"
    assert post.json()["code"] == "service.unavailable"

    seen: Counter[tuple[int, str]] = Counter()
    for index in range(10):
        response = await client.get(f"/{index}")
        seen[(response.status_code, response.json()["instance"])] += 1
    assert seen == {(200, "ok"): 10}
    view = gateway.admin("/admin/backends")["backends"]["svc"]["instances"]
    assert next(i for i in view if i["url"] == unavailable)["ejected"] is True


async def test_when_every_instance_answers_503_the_client_gets_it_with_retry_after(
    gateways: GatewayFactory, unavailable: str
) -> None:
    routes = [{"path": "/*", "methods": ["GET"], "backend": "svc"}]
    gateway = gateways(gateway_config(svc([unavailable], **PATIENT), routes))
    response = await gateway.client().get("/x")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json()["code"] == "service.unavailable"


async def test_an_aggregated_call_gives_up_a_hung_instance_after_one_try(
    shared_backends: BackendFactory, gateways: GatewayFactory, hung: str
) -> None:
    ok = shared_backends("ok")
    retries = {"attempts": 1, "per_try_timeout": "500ms"}
    route = {
        "path": "/agg/{id}",
        "methods": ["GET"],
        "timeout": "5s",
        "aggregate": {"backends": [{"backend": "svc", "path": "/item/{id}", "group": "item"}]},
    }
    gateway = gateways(gateway_config(svc([hung, ok.url], retries=retries, **PATIENT), [route]))
    client = gateway.client()

    # Round robin: every other call meets the hung instance first, and is retried on `ok`.
    answers = [await timed(client.get(f"/agg/{index}")) for index in range(4)]
    took = sorted(seconds for _, seconds in answers)
    print("aggregate seconds:", [round(seconds, 2) for seconds in took])
    assert [r.status_code for r, _ in answers] == [200] * 4
    assert all(r.json()["item"]["instance"] == "ok" for r, _ in answers)
    assert {r.headers["x-mosaic-completed"] for r, _ in answers} == {"true"}
    assert sum(seconds >= 0.45 for seconds in took) == 2  # the two that met the hung one
    assert took[-1] < 2.0  # not the route's 5 s
    instances = gateway.admin("/admin/backends")["backends"]["svc"]["instances"]
    assert {i["url"]: i["consecutive_failures"] for i in instances}[hung] == 2
