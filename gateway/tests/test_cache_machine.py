"""The cache filter's admission without sockets (proxy_support.py): what is answered from memory,
what waits for a fetch in flight, what bypasses, what is stored; byte-exact on both sides.

test_cache.py keeps the end-to-end cases (invalidation events, lifetimes, workers)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from proxy_support import FakeInstance, Proxy, head_of

A = "http://10.0.0.1:8001"
FRESH = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: max-age=60\r\n"
    b'content-length: 7\r\n\r\n{"n":1}'
)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def proxy(loop: asyncio.AbstractEventLoop) -> Proxy:
    config: dict[str, Any] = {
        "defaults": {"headers": {"allow": ["*"]}, "query": {"allow": ["*"]}},
        "backends": {"svc": {"instances": [A], "retries": {"attempts": 0}}},
        "routes": [
            {
                "path": "/items/*",
                "methods": ["GET", "HEAD", "POST"],
                "backend": "svc",
                "cache": {"ttl": "30s"},
            },
        ],
    }
    return Proxy(loop, config)


def get(path: bytes = b"/items/1", extra: bytes = b"") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nhost: gw.example\r\n" + extra + b"\r\n"


def upstream_requests(fake: FakeInstance) -> list[bytes]:
    """Request lines written to the instance since the last look, over all its connections."""
    lines = []
    for upstream in fake.connections:
        data = upstream.take()
        lines += [part.split(b"\r\n", 1)[0] for part in data.split(b"\r\n\r\n") if part]
    return lines


def test_a_miss_is_fetched_and_labelled_then_a_hit_is_answered_from_memory(proxy: Proxy) -> None:
    fake = proxy.instances[A]
    proxy.send(get())
    assert upstream_requests(fake) == [b"GET /items/1 HTTP/1.1"]
    fake.last.answer(FRESH)
    _, headers, body = head_of(proxy.received())
    assert headers[b"x-cache"] == b"MISS"
    assert body == b'{"n":1}'
    proxy.send(get())
    status, headers, body = head_of(proxy.received())
    assert status == b"HTTP/1.1 200 OK"
    assert headers[b"x-cache"] == b"HIT"
    assert headers[b"age"] == b"0"
    assert headers[b"content-length"] == b"7"
    assert body == b'{"n":1}'
    assert upstream_requests(fake) == []  # answered without the instance


def test_concurrent_misses_wait_for_one_fetch(proxy: Proxy) -> None:
    fake = proxy.instances[A]
    others = [proxy.connect() for _ in range(3)]
    proxy.send(get())
    for other in others:
        other.send(get())
    assert upstream_requests(fake) == [b"GET /items/1 HTTP/1.1"]  # one fetch for four
    assert all(other.received() == b"" for other in others)
    fake.last.answer(FRESH)
    assert head_of(proxy.received())[1][b"x-cache"] == b"MISS"
    for other in others:  # answered from the new entry as it landed, in the same call
        _, headers, body = head_of(other.received())
        assert headers[b"x-cache"] == b"HIT"
        assert body == b'{"n":1}'
    proxy.run()  # their filter steps resolve "answered": the chains end there
    assert upstream_requests(fake) == []


def test_waiters_go_on_by_themselves_when_the_fetch_is_not_storable(proxy: Proxy) -> None:
    fake = proxy.instances[A]
    waiter = proxy.connect()
    proxy.send(get())
    waiter.send(get())
    fake.last.answer(b'HTTP/1.1 200 OK\r\nset-cookie: s=1\r\ncontent-length: 7\r\n\r\n{"n":1}')
    assert head_of(proxy.received())[2] == b'{"n":1}'
    assert waiter.received() == b""
    proxy.run()  # the waiter's filter step resolves: the chain goes on, to the instance
    assert upstream_requests(fake) == [b"GET /items/1 HTTP/1.1"] * 2
    fake.last.answer(FRESH)
    _, headers, _ = head_of(waiter.received())
    assert headers[b"x-cache"] == b"MISS"
    # The waiter's own answer was storable: it is kept.
    proxy.send(get())
    assert head_of(proxy.received())[1][b"x-cache"] == b"HIT"


@pytest.mark.parametrize(
    "extra",
    [
        b"authorization: Bearer abc\r\n",
        b"cookie: s=1\r\n",
        b"x-original-url: /admin\r\n",
        b"cache-control: no-store\r\n",
    ],
)
def test_a_personal_or_steering_request_bypasses_the_cache(proxy: Proxy, extra: bytes) -> None:
    fake = proxy.instances[A]
    proxy.send(get(extra=extra))
    fake.last.answer(FRESH)
    assert head_of(proxy.received())[1][b"x-cache"] == b"BYPASS"
    proxy.send(get())  # nothing was stored from it
    assert upstream_requests(fake)[-1] == b"GET /items/1 HTTP/1.1"
    fake.last.answer(FRESH)
    assert head_of(proxy.received())[1][b"x-cache"] == b"MISS"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncache-control: no-store\r\ncontent-length: 2\r\n\r\nno",
        b"HTTP/1.1 200 OK\r\nvary: accept-language\r\ncontent-length: 2\r\n\r\nno",
        b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: 2\r\n\r\nno",
        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 2\r\n\r\nno",
    ],
)
def test_answers_that_may_not_be_shared_are_not_stored(proxy: Proxy, answer: bytes) -> None:
    fake = proxy.instances[A]
    proxy.send(get())
    fake.last.answer(answer)
    assert head_of(proxy.received())[2] == b"no"
    proxy.send(get())
    assert upstream_requests(fake) == [b"GET /items/1 HTTP/1.1"] * 2


def test_a_successful_post_drops_the_routes_entries(proxy: Proxy) -> None:
    fake = proxy.instances[A]
    proxy.send(get())
    fake.last.answer(FRESH)
    proxy.received()
    proxy.send(b"POST /items/1 HTTP/1.1\r\nhost: gw.example\r\ncontent-length: 0\r\n\r\n")
    fake.last.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert head_of(proxy.received())[0] == b"HTTP/1.1 204 No Content"
    proxy.send(get())
    assert upstream_requests(fake)[-1] == b"GET /items/1 HTTP/1.1"  # fetched again
