"""An adversarial review of the issue 8 hardening, through a real gateway process in front of a
recording backend (framing_support.py): what was found, each as a regression test, and the
probes that found nothing kept as standing checks.

- A header line is buffered whole by the parser before the gateway sees it (httptools calls
  `on_header` once the value ends), so `max_header_bytes` was checked only after the whole line
  had arrived: one connection could make a worker hold gigabytes for the head timeout.
- A `?` inside a request target's fragment started the forwarded query string.
- An upstream response whose transfer coding only ended in the letters `chunked` (`xchunked`) was
  relayed as chunked while the parser read it to the close: the client's response was cut off.
- An aggregated call sent again on a fresh connection (a stale pooled one) left its first
  per-try timer armed: it fired during the next try, on another instance, and gave that up too.
- An upstream's `content-length` on a 204 was relayed to the client (no body follows).
- A HEAD's upstream connection went back to the pool despite the instance's `Connection: close`.
- A header the client named in `Connection` was kept in the cache key but not forwarded (an
  answer made without `Accept-Language: fr` was stored as the French one), and `Connection: host`
  sent the request upstream with no `Host` at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from framing_support import (
    BackendRequest,
    ClientResponse,
    RecordingBackend,
    parse_responses,
    send_and_read,
    wait_for,
)
from gateway_support import Gateway, GatewayFactory, gateway_config, plain_client

pytestmark = pytest.mark.timeout(60)

_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE"]
_MAX_HEADER_BYTES = 8 * 1024


class _ScriptedBackend:
    """Answers every request head with `answer` (set by each test), then closes the
    connection."""

    def __init__(self) -> None:
        self.answer = b""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with sock:
                received = b""
                while b"\r\n\r\n" not in received:
                    data = sock.recv(65536)
                    if not data:
                        break
                    received += data
                with contextlib.suppress(OSError):
                    sock.sendall(self.answer)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)


@pytest.fixture(scope="module")
def backend() -> Iterator[RecordingBackend]:
    server = RecordingBackend()
    yield server
    server.close()


@pytest.fixture(scope="module")
def scripted() -> Iterator[_ScriptedBackend]:
    server = _ScriptedBackend()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(
    backend: RecordingBackend,
    scripted: _ScriptedBackend,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway"))
    config = gateway_config(
        {
            "rec": {
                "instances": [backend.url],
                "retries": {"attempts": 1, "on": ["connect_error"]},
            },
            "scripted": {"instances": [scripted.url]},
        },
        [
            {"path": "/r/*", "methods": _METHODS, "backend": "rec", "timeout": 3},
            {"path": "/early/*", "methods": _METHODS, "backend": "rec", "timeout": 3},
            {"path": "/s/*", "methods": _METHODS, "backend": "scripted", "timeout": 3},
            {"path": "/big/*", "methods": _METHODS, "backend": "rec", "max_body_bytes": 0},
            {
                "path": "/policy/*",
                "methods": ["GET"],
                "backend": "rec",
                "rate_limit": {"requests": 1000, "per": 1},
            },
            {
                "path": "/cached/*",
                "methods": ["GET"],
                "backend": "rec",
                "cache": {"ttl": "60s", "vary_headers": ["accept-language"]},
            },
            {"path": "/small/*", "methods": _METHODS, "backend": "rec", "max_body_bytes": 100},
            {
                "path": "/small-early/*",
                "methods": _METHODS,
                "backend": "rec",
                "max_body_bytes": 100,
                "rewrite": {"strip_prefix": "/small-early", "add_prefix": "/early"},
            },
        ],
        limits={"max_header_bytes": _MAX_HEADER_BYTES},
        # Long enough that a 408 cannot be what ends the endless header below.
        timeouts={"header": 30},
    )
    gw = factory(config, workers=1)
    yield gw
    gw.process.stop()


def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    received = bytearray()
    deadline = time.monotonic() + timeout
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                break
            received += data
    return bytes(received)


@pytest.mark.parametrize("part", ["value", "name"])
def test_an_endless_header_line_is_refused_once_it_passes_the_limit(
    gateway: Gateway, backend: RecordingBackend, part: str
) -> None:
    """A header line that never ends is answered 431 after about the limit, not buffered."""
    mark = backend.seq
    head = b"GET /r/endless HTTP/1.1\r\nhost: x\r\n"
    head += b"x-big: " if part == "value" else b"x-"
    filler = b"a" * 16 * 1024
    sent = 0
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(head)
        # 64 times the limit, in pieces: the gateway must refuse within a read or two of the
        # limit (writing stops being possible once it closes the connection).
        with contextlib.suppress(OSError):
            while sent < 64 * _MAX_HEADER_BYTES:
                sock.sendall(filler)
                sent += len(filler)
        received = _read_until_closed(sock, 3.0)
    responses = parse_responses(received, [])
    assert [r.status for r in responses] == [431], received[:200]
    assert backend.requests_after(mark) == []


def _forwarded(
    gateway: Gateway, backend: RecordingBackend, raw: bytes, methods: list[bytes] | None = None
) -> tuple[list[ClientResponse], list[BackendRequest]]:
    """Send `raw` (ending with a `connection: close` request) and return the responses and
    the requests the backend received meanwhile."""
    mark = backend.seq
    responses, closed = send_and_read(gateway.port, raw, methods=methods)
    assert closed
    wait_for(lambda: all(r.complete or r.ended for r in backend.requests_after(mark)))
    assert backend.take_errors() == []
    return responses, backend.requests_after(mark)


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        (b"/r/f#frag", b"/r/f"),
        (b"/r/f#?admin=1", b"/r/f"),
        (b"/r/f#a?b=1", b"/r/f"),
        (b"/r/f?q=1#frag?x=2", b"/r/f?q=1"),
        (b"/r/f?", b"/r/f?"),
    ],
)
def test_a_fragment_is_dropped_whole_never_read_as_a_query(
    gateway: Gateway, backend: RecordingBackend, target: bytes, forwarded: bytes
) -> None:
    """Found: a `?` inside the fragment started the forwarded query (`/r/f#?admin=1` went
    upstream as `/r/f?admin=1`), and a fragment alone added an empty query (`/r/f?`)."""
    raw = b"GET " + target + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    responses, requests = _forwarded(gateway, backend, raw)
    assert [r.status for r in responses] == [200]
    assert [r.target for r in requests] == [forwarded]


@pytest.mark.parametrize("coding", [b"xchunked", b"gzip, notchunked", b"chunked, identity"])
def test_an_upstream_body_not_chunked_by_its_last_coding_is_read_to_the_close(
    gateway: Gateway, scripted: _ScriptedBackend, coding: bytes
) -> None:
    """Found: a response whose transfer coding merely ended in the letters `chunked` was taken
    for chunked by the proxy, while the parser (rightly, RFC 9112 6.3) read its body to the
    connection's close: the client's response was cut off instead of completed."""
    scripted.answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: " + coding + b"\r\n\r\nhello, world"
    responses, closed = send_and_read(
        gateway.port, b"GET /s/y HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    assert closed
    assert [(r.status, r.body) for r in responses] == [(200, b"hello, world")]


async def _json_answer(writer: asyncio.StreamWriter, name: bytes) -> None:
    body = b'{"instance": "%b"}' % name
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
        % (len(body), body)
    )
    await writer.drain()


async def test_an_aggregated_call_after_a_stale_pooled_connection_keeps_whole_tries(
    tmp_path: Path,
) -> None:
    """Found: a call whose pooled connection turned out closed (the instance's keep-alive ended
    as the request went out) is sent again on a fresh connection, which armed a second per-try
    timer without cancelling the first. The stray timer then fired during the *next* try, on
    another instance, a moment after it started: that healthy instance was given up, counted as
    failed, and the call went on to the hung one until its deadline."""
    connections = 0

    async def stale_then_hung(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            if first:
                await _json_answer(writer, b"a")  # kept in the gateway's pool
                await reader.readuntil(b"\r\n\r\n")  # then closed as the next request comes
            else:
                await reader.read()  # hung: never answers
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await asyncio.sleep(0.3)  # well within a try (500 ms)
                await _json_answer(writer, b"b")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    first = await asyncio.start_server(stale_then_hung, "127.0.0.1", 0)
    second = await asyncio.start_server(slow, "127.0.0.1", 0)
    urls = [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in (first, second)]
    backend = {
        "instances": urls,
        "balancing": "round_robin",
        "retries": {"attempts": 2, "per_try_timeout": "500ms"},
        "ejection": {"consecutive_failures": 1000},
        "breaker": {"failure_threshold": 1000},
    }
    route = {
        "path": "/agg/{id}",
        "methods": ["GET"],
        "timeout": "3s",
        "aggregate": {"backends": [{"backend": "svc", "path": "/item/{id}", "group": "item"}]},
    }
    factory = GatewayFactory(tmp_path)
    gw = factory(gateway_config({"svc": backend}, [route]))
    try:
        async with plain_client(base_url=gw.url, timeout=10) as client:
            # Round robin: a call to the first instance leaves a pooled connection to it; once
            # the last call went to the other one, the next meets the stale connection.
            seen = [
                (await client.get(f"/agg/{index}")).json()["item"]["instance"] for index in (0, 1)
            ]
            if seen[-1] == "a":
                seen.append((await client.get("/agg/2")).json()["item"]["instance"])
            assert seen[-2:] == ["a", "b"]
            answer = await client.get("/agg/3")
    finally:
        gw.process.stop()
        for server in (first, second):
            server.close()
        await asyncio.sleep(0.2)  # the handlers see their connections end
    assert answer.status_code == 200
    assert answer.headers["x-mosaic-completed"] == "true"
    assert answer.json()["item"]["instance"] == "b"


def test_a_204_goes_to_the_client_without_the_content_length_its_upstream_gave_it(
    gateway: Gateway, scripted: _ScriptedBackend
) -> None:
    """Found: an upstream's `content-length` on a 204 was relayed (with no body, rightly). A
    client or a proxy in front that honours it (RFC 9110 8.6 forbids it on a 204) takes that
    many bytes of the next response on the connection as this one's body."""
    scripted.answer = b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"DELETE /s/y HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        received = _read_until_closed(sock, 3.0)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 204 "), received
    assert b"\r\ncontent-length:" not in head.lower() + b"\r\n"
    assert body == b""


async def test_a_head_response_saying_connection_close_is_not_pooled(tmp_path: Path) -> None:
    """Found: the answer to a HEAD was pooled whatever its `Connection: close` (an instance
    that ends connections after N requests says so on whichever response is the last), so the
    next request went out on a connection the instance was closing: a POST got 502."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":", 1)[1]))
                if head.startswith(b"HEAD "):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"
                    )
                    await writer.drain()
                    await asyncio.sleep(0.5)  # closes a moment later, reading nothing more
                    return
                await _json_answer(writer, b"a")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    factory = GatewayFactory(tmp_path)
    gw = factory(
        gateway_config(
            {"b": {"instances": [url]}},
            [{"path": "/x/*", "methods": ["HEAD", "POST"], "backend": "b", "timeout": 3}],
        )
    )
    try:
        async with plain_client(base_url=gw.url, timeout=10) as client:
            head = await client.head("/x/y")
            posted = await client.post("/x/y", content=b"{}")
    finally:
        gw.process.stop()
        server.close()
        await asyncio.sleep(0.2)
    assert head.status_code == 200
    assert posted.status_code == 200


def test_a_head_response_keeping_the_connection_is_pooled(
    gateway: Gateway, backend: RecordingBackend
) -> None:
    """The other side of the above: a HEAD's connection is reused when the instance keeps it."""
    _forwarded(gateway, backend, b"GET /r/warm HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    opened = len(backend.connections)
    for method in (b"HEAD", b"GET", b"HEAD"):
        raw = method + b" /r/h HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        responses, _ = _forwarded(gateway, backend, raw, [method])
        assert [r.status for r in responses] == [200]
    assert len(backend.connections) == opened


@pytest.mark.parametrize(
    ("header", "connection"),
    [
        (b"accept-language: fr", b"accept-language"),  # a header the cache key varies on
        (b"host: x", b"host"),  # always in the key
        (b"host: x", b"keep-alive, Host"),
    ],
)
def test_a_header_named_in_connection_is_keyed_as_forwarded(
    gateway: Gateway, backend: RecordingBackend, header: bytes, connection: bytes
) -> None:
    """Found: a header the client named in `Connection` (hop-by-hop, RFC 9110 7.6.1) was left
    out of the forwarded request but kept in the cache key: an answer made without it (another
    language; no `Host` at all) was stored as the answer for requests that carry it."""
    name = header.partition(b":")[0]
    target = b"/cached/conn-" + name + b"-" + connection.replace(b" ", b"").replace(b",", b"-")
    raw = b"GET " + target + b" HTTP/1.1\r\n" + header + b"\r\n"
    if name != b"host":
        raw += b"host: x\r\n"
    sneaky = raw + b"connection: " + connection + b"\r\n\r\n"
    plain = raw + b"connection: close\r\n\r\n"
    responses, requests = _forwarded(gateway, backend, sneaky + plain)
    assert [r.status for r in responses] == [200, 200]
    value = header.partition(b": ")[2]
    forwarded = [r.header(name) for r in requests]
    if name == b"host":
        assert forwarded[0] == value  # never left out: every request upstream has a Host
    if responses[1].header(b"x-cache") == b"HIT":
        # Served the first one's answer: only if the first went upstream as the second would.
        assert forwarded == [value]
    else:
        assert forwarded == [None, value]


def test_a_host_named_in_connection_still_goes_upstream_on_a_filtered_route(
    gateway: Gateway, backend: RecordingBackend
) -> None:
    """The same on a route with a policy (its header filter, HeaderPolicy, dropped it too)."""
    raw = b"GET /policy/conn-host HTTP/1.1\r\nhost: x\r\nconnection: close, host\r\n\r\n"
    responses, requests = _forwarded(gateway, backend, raw)
    assert [r.status for r in responses] == [200]
    assert [r.header(b"host") for r in requests] == [b"x"]


# --- probes that found nothing, kept as standing checks -----------------------------------------

_BIG_CHUNKED = b"32\r\n" + b"a" * 50 + b"\r\n" + b"32\r\n" + b"a" * 50 + b"\r\n" + b"32\r\n"
_BIG_CHUNKED += b"a" * 50 + b"\r\n0\r\n\r\n"
_CLOSE = b"GET /r/after HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"


@pytest.mark.parametrize("prefix", [b"/small/", b"/small-early/"])
def test_a_chunked_body_over_the_route_limit_leaves_only_an_incomplete_request_upstream(
    gateway: Gateway, backend: RecordingBackend, prefix: bytes
) -> None:
    """Streamed until it passes the limit (to a backend that answers before reading it, too):
    413, the connection closed, and upstream at most the one request, never completed."""
    mark = backend.seq
    raw = b"POST " + prefix + b"a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    responses, closed = send_and_read(gateway.port, raw + _BIG_CHUNKED + _CLOSE)
    assert closed
    assert [r.status for r in responses] == [413]
    wait_for(lambda: all(r.ended for r in backend.requests_after(mark)))
    requests = backend.requests_after(mark)
    assert [r.complete for r in requests] in ([], [False])
    assert backend.take_errors() == []


def test_a_refused_expect_100_continue_request_then_its_body_smuggles_nothing(
    gateway: Gateway, backend: RecordingBackend
) -> None:
    """A client that sends the body anyway after a refusal (no 100 was sent): the connection
    closes, the body is never read as a request."""
    smuggled = b"GET /r/smuggled HTTP/1.1\r\nhost: x\r\n\r\n"
    raw = b"POST /nowhere HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
    raw += b"content-length: %d\r\n\r\n" % (len(smuggled) + 10)
    responses, requests = _forwarded(gateway, backend, raw + smuggled + _CLOSE)
    assert [r.status for r in responses] == [404]
    assert requests == []


def test_trailers_never_reach_the_backend(gateway: Gateway, backend: RecordingBackend) -> None:
    """Trailers of a chunked body are dropped (an identity header there is no way around the
    strip), and the request after it is parsed where it starts."""
    raw = b"POST /r/t HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n"
    raw += b"0\r\nx-user-id: admin\r\nx-user-roles: admin\r\n\r\n" + _CLOSE
    responses, requests = _forwarded(gateway, backend, raw)
    assert [r.status for r in responses] == [200, 200]
    assert [(r.target, r.body) for r in requests] == [(b"/r/t", b"abc"), (b"/r/after", b"")]
    assert all(r.header(b"x-user-id") is None for r in requests)


@pytest.mark.parametrize(
    ("target", "host", "forwarded"),
    [
        (b"http://evil.example/r/abs?q=1", b"good", b"/r/abs?q=1"),
        (b"https://u:p@evil.example:99/r/abs", b"good", b"/r/abs"),
        (b"http://evil.example", b"good", None),  # "/": no route
        (b"//evil.example/r/x", b"good", None),  # a path with an empty first segment
        (b"http://evil.example/r/x/%2e%2e", b"good", None),  # 400 bad_path
    ],
)
def test_an_absolute_form_target_is_served_for_the_host_header_only(
    gateway: Gateway,
    backend: RecordingBackend,
    target: bytes,
    host: bytes,
    forwarded: bytes | None,
) -> None:
    """The target's authority is ignored: routing, the cache key and the forwarded `Host` all
    use the client's `Host` header (one rule, so no two readings of one request)."""
    raw = b"GET " + target + b" HTTP/1.1\r\nhost: " + host + b"\r\nconnection: close\r\n\r\n"
    responses, requests = _forwarded(gateway, backend, raw)
    if forwarded is None:
        assert requests == []
        assert responses[0].status in (400, 404)
        return
    assert [r.status for r in responses] == [200]
    assert [(r.target, r.header(b"host")) for r in requests] == [(forwarded, host)]


@pytest.mark.parametrize("size", [1000, 200_000])  # buffered for a retry / streamed
def test_a_client_gone_mid_body_leaves_no_complete_request_upstream(
    gateway: Gateway, backend: RecordingBackend, size: int
) -> None:
    """The client sends half its body and closes: the upstream connection (if one was opened)
    is closed too, with the request incomplete; nothing is answered or reused."""
    mark = backend.seq
    head = b"PUT /big/x HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % size
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(head + b"a" * (size // 2))
        time.sleep(0.3)  # the head (and what body there is) reaches the gateway first
    wait_for(lambda: all(r.ended for r in backend.requests_after(mark)), timeout=3)
    requests = backend.requests_after(mark)
    assert [(r.complete, r.ended) for r in requests] in ([], [(False, True)])
    # The pool is in step: the next request on it is answered as itself.
    responses, forwarded = _forwarded(gateway, backend, _CLOSE)
    assert [r.seq for r in responses] == [r.seq for r in forwarded]
