"""Forwarding's state machine without sockets (proxy_support.py): bytes from the client, the
bytes the gateway writes to each instance, the instance's bytes fed back, what the client gets.

The socket-level suites (test_proxy.py, test_retries.py, test_retry_faults.py...) keep the
integration cases; these pin the machine's decisions: what goes upstream, when a try is retried
and where, when a connection is reused, and what a failure becomes for the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from proxy_support import Proxy, head_of

from mosaic_gateway.config import parse_config
from mosaic_gateway.handlers.forward import UPSTREAM_INSTANCE
from mosaic_gateway.lifecycle.observer import build_observer

A, B = "http://10.0.0.1:8001", "http://10.0.0.2:8002"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def config(**backend: Any) -> dict[str, Any]:
    return {
        "server": {"trust_forwarded_headers": False},
        "defaults": {"headers": {"allow": ["*"]}, "query": {"allow": ["*"]}},
        "backends": {"svc": {"instances": [A, B], **backend}},
        "routes": [
            {
                "path": "/api/*",
                "methods": ["GET", "POST"],
                "backend": "svc",
                "rewrite": {"strip_prefix": "/api", "add_prefix": "/v1"},
            }
        ],
    }


def request(method: bytes = b"GET", path: bytes = b"/api/items?x=1", extra: bytes = b"") -> bytes:
    return (
        method
        + b" "
        + path
        + b" HTTP/1.1\r\nhost: gw.example\r\nx-request-id: r-1\r\n"
        + extra
        + b"\r\n"
    )


def test_the_request_goes_upstream_rewritten_and_the_answer_comes_back(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy = Proxy(loop, config())
    proxy.send(request(extra=b"x-forwarded-for: 6.6.6.6\r\nx-forwarded-host: evil\r\n"))
    first = proxy.instances[A] if proxy.instances[A].connections else proxy.instances[B]
    line, headers, _ = head_of(first.last.take())
    assert line == b"GET /v1/items?x=1 HTTP/1.1"
    # A client's forwarding headers are not trusted: the gateway's own replace them.
    assert headers[b"x-forwarded-for"] == b"127.0.0.1"
    assert headers[b"x-forwarded-host"] == b"gw.example"
    assert headers[b"x-request-id"] == b"r-1"
    assert proxy.received() == b""  # nothing for the client before the instance answers
    first.last.answer(OK)
    status, headers, body = head_of(proxy.received())
    assert status == b"HTTP/1.1 200 OK"
    assert headers[b"x-request-id"] == b"r-1"
    assert body == b"ok"


def test_a_finished_exchange_leaves_its_connection_for_the_next_request(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy = Proxy(loop, config(balancing="round_robin"))
    for _ in range(4):
        proxy.send(request())
        for fake in proxy.instances.values():
            if fake.connections and fake.last.take():
                fake.last.answer(OK)
        assert head_of(proxy.received())[0] == b"HTTP/1.1 200 OK"
    # Round robin over two instances, each connection reused for its second request.
    assert [len(fake.connections) for fake in proxy.instances.values()] == [1, 1]


def test_a_retried_status_goes_to_the_other_instance_and_its_body_is_dropped(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy = Proxy(loop, config(retries={"attempts": 1, "on": [503]}))
    proxy.send(request())
    tried = [fake for fake in proxy.instances.values() if fake.connections]
    assert len(tried) == 1
    tried[0].last.take()
    tried[0].last.answer(UNAVAILABLE)
    assert proxy.received() == b""  # the 503 is not relayed
    other = next(fake for fake in proxy.instances.values() if fake is not tried[0])
    assert head_of(other.last.take())[0] == b"GET /v1/items?x=1 HTTP/1.1"
    other.last.answer(OK)
    assert head_of(proxy.received())[2] == b"ok"
    # The dropped answer was read to its end: that connection stays usable.
    assert not tried[0].last.conn.closed


def test_a_post_is_not_retried(loop: asyncio.AbstractEventLoop) -> None:
    proxy = Proxy(loop, config(retries={"attempts": 1, "on": [503, "connect_error"]}))
    proxy.send(request(b"POST", extra=b"content-length: 2\r\ncontent-type: text/plain\r\n"), b"hi")
    (tried,) = [fake for fake in proxy.instances.values() if fake.connections]
    line, headers, body = head_of(tried.last.take())
    assert line == b"POST /v1/items?x=1 HTTP/1.1"
    assert headers[b"content-length"] == b"2"
    assert body == b"hi"
    tried.last.answer(UNAVAILABLE)
    status, _, body = head_of(proxy.received())
    assert status.startswith(b"HTTP/1.1 503")
    assert body == b"busy"  # the instance's own answer, relayed
    assert sum(len(fake.connections) for fake in proxy.instances.values()) == 1


def test_a_refused_connection_is_retried_elsewhere(loop: asyncio.AbstractEventLoop) -> None:
    proxy = Proxy(loop, config(retries={"attempts": 1, "on": ["connect_error"]}))
    down, up = proxy.instances[A], proxy.instances[B]
    down.refuse = True
    # Round robin: of two requests one starts at A, is refused there, and goes on to B.
    for _ in range(2):
        proxy.send(request())
        up.last.take()
        up.last.answer(OK)
        assert head_of(proxy.received())[0] == b"HTTP/1.1 200 OK"
    assert down.dialed >= 1
    assert down.connections == []


def test_without_retries_a_refused_connection_is_a_503_problem(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy = Proxy(loop, config(retries={"attempts": 0}))
    for fake in proxy.instances.values():
        fake.refuse = True
    proxy.send(request())
    status, headers, body = head_of(proxy.received())
    assert status.startswith(b"HTTP/1.1 503")
    assert headers[b"content-type"] == b"application/problem+json"
    assert b'"gateway.unavailable"' in body


def test_a_stale_pooled_connection_is_tried_once_more_on_a_fresh_one(
    loop: asyncio.AbstractEventLoop,
) -> None:
    only_a = {"svc": {"instances": [A], "retries": {"attempts": 0}}}
    proxy = Proxy(loop, {**config(), "backends": only_a})
    fake = proxy.instances[A]
    proxy.send(request())
    fake.last.take()
    fake.last.answer(OK)
    proxy.received()
    pooled = fake.last
    proxy.send(request())
    assert pooled.take()  # the pooled connection was reused for the second request...
    pooled.reset()  # ...and the instance had closed it: nothing processed
    assert len(fake.connections) == 2  # not a retry (none allowed): the same try, fresh
    fake.last.take()
    fake.last.answer(OK)
    assert head_of(proxy.received())[0] == b"HTTP/1.1 200 OK"


def test_a_response_cut_after_its_head_aborts_the_client_connection(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy = Proxy(loop, config(retries={"attempts": 1, "on": ["connect_error"]}))
    proxy.send(request())
    (tried,) = [fake for fake in proxy.instances.values() if fake.connections]
    tried.last.answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
    relayed = proxy.received()
    assert relayed.endswith(b"half")
    tried.last.reset()
    # Already relayed: no retry could replace it, so the client's connection closes.
    assert proxy.transport.closed
    assert sum(len(fake.connections) for fake in proxy.instances.values()) == 1


def test_a_route_without_a_rewrite_sends_the_clients_path_as_it_came(
    loop: asyncio.AbstractEventLoop,
) -> None:
    plain = config()
    del plain["routes"][0]["rewrite"]
    proxy = Proxy(loop, plain)
    proxy.send(request(path=b"/api/items/%41b?x=1"))
    (tried,) = [fake for fake in proxy.instances.values() if fake.connections]
    assert head_of(tried.last.take())[0] == b"GET /api/items/%41b?x=1 HTTP/1.1"


def instances_noted(proxy: Proxy) -> list[tuple[str | None, bool]]:
    """Per ended exchange: the instance stored for the observer, and whether any state was."""
    noted: list[tuple[str | None, bool]] = []
    proxy.server.on_end = lambda exchange, _aborted: noted.append(
        (exchange.get(UPSTREAM_INSTANCE), exchange.state is not None)
    )
    return noted


def test_the_instance_tried_is_noted_for_the_observer_the_retried_one_last(
    loop: asyncio.AbstractEventLoop,
) -> None:
    proxy = Proxy(loop, config(retries={"attempts": 1, "on": [503]}))
    noted = instances_noted(proxy)
    proxy.send(request())
    (first,) = [fake for fake in proxy.instances.values() if fake.connections]
    first.last.take()
    first.last.answer(UNAVAILABLE)
    other = next(fake for fake in proxy.instances.values() if fake is not first)
    other.last.take()
    other.last.answer(OK)
    assert head_of(proxy.received())[2] == b"ok"
    assert noted == [(other.url, True)]


def test_with_nothing_reading_the_instance_a_request_stores_no_state(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # The worker turns it off when neither the access log nor spans report it (observer.py):
    # then a forwarded request with no credential, cache or span makes no state at all.
    proxy = Proxy(loop, config(retries={"attempts": 1, "on": [503]}))
    proxy.forwarder.note_instance = False
    noted = instances_noted(proxy)
    proxy.send(request())
    (first,) = [fake for fake in proxy.instances.values() if fake.connections]
    first.last.take()
    first.last.answer(UNAVAILABLE)  # a retry does not store it either
    other = next(fake for fake in proxy.instances.values() if fake is not first)
    other.last.take()
    other.last.answer(OK)
    assert head_of(proxy.received())[2] == b"ok"
    assert noted == [(None, False)]


@pytest.mark.parametrize(
    ("observability", "reads"),
    [
        ({}, False),
        ({"metrics": {"enabled": True}}, False),  # metrics have no instance label per request
        ({"access_log": {"enabled": True}}, True),
        ({"tracing": {"enabled": True, "otlp_endpoint": "http://127.0.0.1:1/v1/traces"}}, True),
    ],
)
def test_the_observer_says_whether_it_reads_the_instance(
    loop: asyncio.AbstractEventLoop, observability: dict[str, Any], reads: bool
) -> None:
    settings = parse_config(
        yaml.safe_dump({**config(), "observability": observability}), "<test>"
    ).observability
    observer = build_observer(settings, loop, admin=True)
    assert observer.reads_upstream_instance is reads
