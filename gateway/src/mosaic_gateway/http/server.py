"""The HTTP/1.1 server side: an asyncio Protocol per client connection, httptools parsing.

No framework sits in the request path. Each parsed request becomes an `Exchange`, handed to a
`Handler` (the proxy, or the admin endpoints) when its turn comes: pipelined requests are parsed
as they arrive but answered strictly in order, one at a time. A request body is not buffered: its
chunks go to the handler's `BodySink` as they arrive (kept only while nobody consumes them yet,
with reading paused past a small high-water mark).

Flow control both ways: when the client stops reading, the handler is told to stop reading its
upstream; when the upstream stops taking the request body, reading from the client pauses.

Timers are not armed per request: a once-a-second sweep closes idle keep-alive connections and
answers 408 to requests whose head is too slow, so the common path pays no timer cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar, cast

import httptools

from mosaic_gateway.http import problems
from mosaic_gateway.http.listener import Acceptor
from mosaic_gateway.http.problems import GatewayProblem
from mosaic_gateway.http.wire import CRLF, STATUS_LINES, DateHeader, RequestIds, connection_tokens
from mosaic_kit.logging import get_logger

# Reasons to stop reading from a client, as bits: reading resumes when none is left.
_PAUSE_PIPELINE = 1  # a request is waiting behind the one being answered
_PAUSE_BODY = 2  # body chunks are piling up with nobody consuming them yet
_PAUSE_UPSTREAM = 4  # the upstream is not taking the request body as fast as it comes
_PAUSE_CLOSING = 8  # nothing more will be answered on this connection

_BODY_HIGH_WATER = 256 * 1024

# Header names the server itself looks at while parsing.
_SPECIAL_HEADERS = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"x-request-id",
        b"expect",
        b"traceparent",
        b"authorization",
        b"x-api-key",
        b"connection",
    }
)

# What a `Connection` header may name without the header going (RFC 9110 7.6.1): its own
# options, `Host` (always forwarded, part of every cache key) and the framing (re-done upstream).
_CONNECTION_KEEP = frozenset(
    {b"close", b"keep-alive", b"host", b"content-length", b"transfer-encoding"}
)

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_RETRY_AFTER = (b"retry-after", b"1")

_log = get_logger("mosaic_gateway.http.server")

T = TypeVar("T")


class BodySink(Protocol):
    """Takes a request body as it arrives."""

    def body_chunk(self, data: bytes) -> None: ...

    def body_end(self) -> None: ...


class Responder(Protocol):
    """Whoever produces an exchange's response: told about the client's state."""

    def pause_response(self) -> None: ...

    def resume_response(self) -> None: ...

    def client_gone(self) -> None: ...


class ResponseHook(Protocol):
    """Told about the upstream response relayed for an exchange (a filter's: the cache's)."""

    def head(self, status: int, headers: list[tuple[bytes, bytes]], out: list[bytes]) -> bool:
        """The upstream's status and headers; lines appended to `out` go to the client's head.
        False: nothing more is wanted (the body and the end are not reported)."""

    def body(self, data: bytes) -> bool:
        """A piece of the body as relayed; False: nothing more is wanted."""

    def end(self) -> None:
        """The response completed."""

    def abandon(self) -> None:
        """The response will not complete (the client left, the upstream failed)."""


class Handler(Protocol):
    def handle(self, exchange: Exchange) -> None:
        """Start answering `exchange`; must eventually call `finish`, `respond` or `abort`."""


class ServerLimits:
    __slots__ = ("header_timeout", "keep_alive", "max_body_bytes", "max_header_bytes")

    def __init__(
        self,
        *,
        max_body_bytes: int,
        max_header_bytes: int,
        keep_alive: float,
        header_timeout: float,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.keep_alive = keep_alive
        self.header_timeout = header_timeout


class StateKey(Generic[T]):
    """A key of `Exchange.state`, typed with what it holds: made once, at import, by the module
    that owns the state (as Envoy's filters name theirs in a stream's filter state). Keys compare
    by identity, so two modules cannot collide on a name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StateKey({self.name!r})"


class Exchange:
    """One request and the state of its response."""

    __slots__ = (
        "api_key",
        "authorization",
        "body_bytes",
        "body_chunks",
        "body_done",
        "bytes_out",
        "chunked",
        "close_after",
        "conn",
        "content_length",
        "expect_continue",
        "finished",
        "has_body",
        "head_sent",
        "headers",
        "hook",
        "host",
        "http11",
        "keep_alive",
        "max_body_bytes",
        "method",
        "path",
        "query",
        "rejected",
        "request_id",
        "responder",
        "response_extra",
        "route",
        "sink",
        "started",
        "state",
        "status",
        "traceparent",
        "upstream_headers",
    )

    def __init__(
        self,
        conn: ClientConnection,
        method: bytes,
        path: bytes,
        query: bytes | None,
        headers: list[tuple[bytes, bytes]],
        http11: bool,
        keep_alive: bool,
    ) -> None:
        self.conn = conn
        self.method = method
        self.path = path
        self.query = query
        # (lower-cased name, value) in arrival order, duplicates kept.
        self.headers = headers
        self.http11 = http11
        self.keep_alive = keep_alive
        self.request_id = b""
        self.host: bytes | None = None
        # The credentials, as the client sent them (each at most once: a second is refused),
        # found while the server reads the head anyway, so no filter scans the headers for them.
        self.authorization: bytes | None = None
        self.api_key: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.has_body = False  # set once the headers are known
        self.expect_continue = False
        self.max_body_bytes = conn.server.limits.max_body_bytes
        self.body_chunks: list[bytes] = []
        self.body_bytes = 0
        self.body_done = False
        self.sink: BodySink | None = None
        self.responder: Responder | None = None
        self.head_sent = False
        self.finished = False
        self.close_after = False
        # A problem found while the exchange waited behind another (pipelined): it is answered
        # when its turn comes, never ahead of the responses before it.
        self.rejected: GatewayProblem | None = None
        # Set by the dispatcher: the matched route (a `routing.route.CompiledRoute`).
        self.route: object | None = None
        # Rendered header lines added to the forwarded request (the caller's identity claims:
        # filters/upstream_headers.py) and to every response (CORS), a problem included.
        self.upstream_headers = b""
        self.response_extra = b""
        # Told about the upstream response relayed for the exchange (routing/chain.py).
        self.hook: ResponseHook | None = None
        # The per-request state of the modules above the server, under keys each of them owns
        # (`StateKey`): who the caller is (filters/caller.py), the cache's verdict, the upstream
        # instance tried, the span. None until one of them stores something. Values are typed
        # by their key (`get`, `put`); `Any` here lets the hot paths read the dict directly
        # without a `typing.cast` call per read.
        self.state: dict[StateKey[Any], Any] | None = None
        # What the access log, metrics and tracing report (lifecycle/observer.py)
        self.started = time.perf_counter()
        self.status = 0  # of the response head sent, once sent
        self.bytes_out = 0  # written to the client, head included
        self.traceparent: bytes | None = None  # as the client sent it

    # --- per-request state of other modules ------------------------------------------------

    def get(self, key: StateKey[T]) -> T | None:
        """What the owner of `key` stored for this request, if anything."""
        state = self.state
        if state is None:
            return None
        found: T | None = state.get(key)
        return found

    def put(self, key: StateKey[T], value: T) -> None:
        state = self.state
        if state is None:
            self.state = {key: value}
        else:
            state[key] = value

    # --- request body -----------------------------------------------------------------------

    def accept_body(self, sink: BodySink) -> None:
        """Route the body to `sink`: what arrived already first, the rest as it comes.

        Sends `100 Continue` to a client that waits for it, now that the request is accepted."""
        if self.expect_continue and not self.body_bytes and not self.body_done:
            self.expect_continue = False
            self.conn.write(_CONTINUE)
        self.sink = sink
        pending = self.body_chunks
        if pending:
            self.body_chunks = []
            for data in pending:
                sink.body_chunk(data)
            self.conn.resume_reading(_PAUSE_BODY)
        if self.body_done:
            sink.body_end()

    def take_body(self, sink: BodySink) -> bytes:
        """The whole body at once, when all of it arrived before anyone consumed it."""
        body = b"".join(self.body_chunks)
        self.body_chunks = []
        self.sink = sink
        self.conn.resume_reading(_PAUSE_BODY)
        return body

    def _feed_body(self, data: bytes) -> None:
        if self.finished:
            return
        self.body_bytes += len(data)
        if self.max_body_bytes and self.body_bytes > self.max_body_bytes:
            self._body_too_large()
            return
        sink = self.sink
        if sink is not None:
            sink.body_chunk(data)
            return
        self.body_chunks.append(data)
        if self.body_bytes > _BODY_HIGH_WATER:
            self.conn.pause_reading(_PAUSE_BODY)

    def _end_body(self) -> None:
        self.body_done = True
        if self.sink is not None and not self.finished:
            self.sink.body_end()

    def _body_too_large(self) -> None:
        queue = self.conn.queue
        if queue and queue[0] is not self:
            self.rejected = problems.BODY_TOO_LARGE
            self.body_chunks = []
            self.finished_body_early()
            return
        # A chunked body can only be measured as it streams; part of it may be upstream already.
        responder = self.responder
        self.responder = None
        self.sink = None
        if responder is not None:
            responder.client_gone()
        if self.head_sent:
            self.abort()
        else:
            self.send_problem(problems.BODY_TOO_LARGE)

    def finished_body_early(self) -> None:
        """Nothing more of this body is wanted: later chunks are dropped, not buffered."""
        self.max_body_bytes = 0
        self.sink = _DISCARD

    def pause_body(self) -> None:
        """The body's consumer cannot keep up: stop reading from the client."""
        self.conn.pause_reading(_PAUSE_UPSTREAM)

    def resume_body(self) -> None:
        self.conn.resume_reading(_PAUSE_UPSTREAM)

    # --- response ---------------------------------------------------------------------------

    def set_responder(self, responder: Responder) -> None:
        self.responder = responder
        if self.conn.write_paused:
            responder.pause_response()

    def will_close(self) -> bool:
        """Decide, when the response head is written, whether the connection ends after it.

        A request body not fully read by then cannot be skipped reliably, so it closes too. A
        closing connection ends after the last request it had parsed, not before it."""
        conn = self.conn
        if not self.keep_alive or not self.body_done or (conn.closing and len(conn.queue) <= 1):
            self.close_after = True
        return self.close_after

    def write(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.conn.write(data)

    def finish(self) -> None:
        """The response is complete on the wire."""
        if self.finished:
            return
        self.finished = True
        self.responder = None
        self.sink = None
        on_end = self.conn.server.on_end
        if on_end is not None:
            on_end(self, False)
        self.conn.exchange_done(self)

    def abort(self) -> None:
        """The response cannot be completed: the client learns it from the connection closing."""
        if self.finished:
            return
        self.finished = True
        self.responder = None
        self.sink = None
        on_end = self.conn.server.on_end
        if on_end is not None:
            on_end(self, True)
        self.conn.close()

    def respond(
        self,
        status: int,
        body: bytes,
        content_type: bytes,
        extra_headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """Answer with a response made by the gateway itself (with `response_extra`, as every
        response of the exchange has)."""
        if self.finished:
            return
        if self.head_sent:
            self.abort()
            return
        self.head_sent = True
        parts = [
            STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status,
            self.conn.server.date.line(),
            b"content-type: ",
            content_type,
            b"\r\ncontent-length: %d\r\nx-request-id: " % len(body),
            self.request_id,
            CRLF,
        ]
        for name, value in extra_headers:
            parts += (name, b": ", value, CRLF)
        if self.response_extra:
            parts.append(self.response_extra)
        if self.will_close():
            parts.append(b"connection: close\r\n")
        parts.append(CRLF)
        if self.method != b"HEAD":
            parts.append(body)
        data = b"".join(parts)
        self.status = status
        self.bytes_out += len(data)
        self.conn.write(data)
        self.finish()

    def send_problem(
        self, problem: GatewayProblem, extra_headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        instance = self.path.decode("latin-1") if self.path else None
        if problem.status == 503:
            # Every 503 of the gateway's (no instance, circuit open, auth out of reach) is a
            # moment's unavailability, as the services' own 503s say too: tell clients when.
            extra_headers = (*extra_headers, _RETRY_AFTER)
        self.respond(
            problem.status, problem.body(instance), problems.PROBLEM_CONTENT_TYPE, extra_headers
        )


class ClientConnection(asyncio.Protocol):
    """One client TCP connection: parses requests, answers them in order."""

    __slots__ = (
        "_head_read",
        "_header_bytes",
        "_headers",
        "_incoming",
        "_paused",
        "_reject",
        "_url",
        "closed",
        "closing",
        "forwarded_tail",
        "handler",
        "in_message",
        "last_activity",
        "parser",
        "peer",
        "queue",
        "seen_request",
        "server",
        "transport",
        "write_paused",
    )

    def __init__(self, server: Server, handler: Handler) -> None:
        self.server = server
        self.handler = handler
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        # What every proxied request from this client ends with, up to the request id.
        self.forwarded_tail = b""
        self.queue: deque[Exchange] = deque()
        self.closing = False
        self.closed = False
        self.write_paused = False
        self.in_message = False
        self.seen_request = False
        self.last_activity = 0.0
        self._paused = 0
        self._incoming: Exchange | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        # Bytes of the reads that fell wholly inside the current head (-1: it began in the
        # read being parsed); see `data_received`.
        self._head_read = 0
        self._reject: GatewayProblem | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0]).encode("ascii")
        self.forwarded_tail = (
            b"x-forwarded-for: " + self.peer + b"\r\nx-forwarded-proto: http\r\nx-request-id: "
        )
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Responses are written whole; waiting for more data to coalesce only adds latency.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_activity = self.server.loop.time()
        self.server.connections.add(self)
        if self.server.draining:
            self.closing = True

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # Upgrades (WebSocket, h2c) are not offered: the request was answered as plain
            # HTTP/1.1 (the Upgrade header is hop-by-hop and dropped). Keep parsing after it:
            # it has no body (one with a body, and CONNECT, were refused with the head).
            offset = exc.args[0] if exc.args else len(data)
            self.parser = httptools.HttpRequestParser(self)
            if offset < len(data):
                self.data_received(data[offset:])
            return
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Rejected):
                raise
            self._reject_request(self._reject or problems.BAD_REQUEST)
        except httptools.HttpParserError:
            self._reject_request(problems.BAD_REQUEST)
            return
        if self.in_message and self._incoming is None and not self._paused & _PAUSE_CLOSING:
            # Still in a head. httptools buffers a header line whole before `on_header` can
            # measure it, so a line that never ends would be held in memory for the whole head
            # timeout: count the reads instead (all but the first, which may hold the request
            # before it; it bounds the overshoot).
            if self._head_read < 0:
                self._head_read = 0
            else:
                self._head_read += len(data)
                if self._head_read > self.server.limits.max_header_bytes:
                    self._reject_request(problems.HEADERS_TOO_LARGE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.forget(self)
        queue = self.queue
        self.queue = deque()
        on_end = self.server.on_end
        if on_end is not None and queue and not queue[0].finished:
            # The exchange being answered (those behind it were never handled) ends unanswered.
            on_end(queue[0], True)
        for exchange in queue:
            responder = exchange.responder
            exchange.finished = True
            exchange.responder = None
            exchange.sink = None
            if responder is not None:
                responder.client_gone()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.queue:
            responder = self.queue[0].responder
            if responder is not None:
                responder.pause_response()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.queue:
            responder = self.queue[0].responder
            if responder is not None:
                responder.resume_response()

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = True
        self.seen_request = True
        self.last_activity = self.server.loop.time()
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._head_read = -1

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.server.limits.max_header_bytes:
            self._reject = problems.HEADERS_TOO_LARGE
            raise _Rejected

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._incoming is not None:
            return  # a trailer of a chunked body: not forwarded
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.server.limits.max_header_bytes:
            self._reject = problems.HEADERS_TOO_LARGE
            raise _Rejected
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.closed:
            return
        parser = self.parser
        version = parser.get_http_version()
        if version not in {"1.1", "1.0"}:
            # llhttp also takes 0.9 and 2.0 request lines, whose framing rules are not HTTP/1.x's.
            self._reject = problems.BAD_VERSION
            raise _Rejected
        method = parser.get_method()
        if method == b"CONNECT":
            self._reject = problems.CONNECT_REFUSED
            raise _Rejected
        url = self._url
        query: bytes | None = None
        if url[:1] == b"/":
            if b"?" in url or b"#" in url:
                # The fragment first: a `?` inside it starts no query.
                url, question, query = url.partition(b"#")[0].partition(b"?")
                if not question:
                    query = None
        else:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self._reject = problems.BAD_REQUEST
                raise _Rejected from None
            url = parsed.path or b"/"
            query = parsed.query
        exchange = Exchange(
            self,
            method,
            url,
            query,
            self._headers,
            version == "1.1",
            parser.should_keep_alive(),
        )
        # The body's extent must be read here exactly as llhttp reads it (which already refuses
        # a second Content-Length, Content-Length with Transfer-Encoding, and non-digits), and as
        # the backend will read what is forwarded. Headers used once (Host, credentials) must be
        # there once, or the gateway and a backend could each read a different one.
        hop: set[bytes] | None = None
        for name, value in self._headers:
            if name in _SPECIAL_HEADERS:
                if name == b"host":
                    if exchange.host is not None:
                        exchange.rejected = problems.DUPLICATE_HOST
                    exchange.host = value
                elif name == b"content-length":
                    exchange.content_length = int(value)
                elif name == b"authorization":
                    if exchange.authorization is not None:
                        exchange.rejected = problems.DUPLICATE_CREDENTIALS
                    exchange.authorization = value
                elif name == b"x-api-key":
                    if exchange.api_key is not None:
                        exchange.rejected = problems.DUPLICATE_CREDENTIALS
                    exchange.api_key = value
                elif name == b"transfer-encoding":
                    # llhttp also takes `gzip, chunked` or two headers ending in chunked as
                    # chunked; the codings before it would be lost when the body is re-chunked.
                    if (
                        exchange.chunked
                        or value.rstrip(b" ").lower() != b"chunked"
                        or version != "1.1"
                    ):
                        self._reject = problems.BAD_TRANSFER_ENCODING
                        raise _Rejected
                    exchange.chunked = True
                elif name == b"x-request-id":
                    exchange.request_id = value
                elif name == b"expect":
                    # An HTTP/1.0 client would take an interim 100 for its response (RFC 9110
                    # 10.1.1: ignore the expectation).
                    exchange.expect_continue = value.lower() == b"100-continue" and version == "1.1"
                elif name == b"traceparent":
                    exchange.traceparent = value
                elif name == b"connection":
                    lowered = value.lower()
                    if lowered not in _CONNECTION_KEEP:
                        named = connection_tokens(lowered) - _CONNECTION_KEEP
                        if named:
                            hop = named if hop is None else hop | named
        if hop is not None:
            # Headers the client made hop-by-hop go here, once, so that the filters, the cache
            # key and the forwarded request all see the same ones.
            exchange.headers = [item for item in self._headers if item[0] not in hop]
            if b"authorization" in hop:
                exchange.authorization = None
            if b"x-api-key" in hop:
                exchange.api_key = None
        exchange.request_id = self.server.request_ids.accept_or_new(exchange.request_id or None)
        exchange.has_body = exchange.chunked or bool(exchange.content_length)
        if exchange.has_body:
            if parser.should_upgrade():
                # llhttp skips the body of an upgrade request (what follows the head belongs to
                # the new protocol), so the body would be parsed as requests here, while the
                # backend is told to wait for it.
                self._reject = problems.UPGRADE_WITH_BODY
                raise _Rejected
        else:
            exchange.body_done = True
        self._incoming = exchange
        self.queue.append(exchange)
        if len(self.queue) == 1:
            self._dispatch(exchange)
        else:
            self.pause_reading(_PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        exchange = self._incoming
        if exchange is not None:
            exchange._feed_body(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        exchange = self._incoming
        self._incoming = None
        if exchange is not None and not exchange.body_done:
            exchange._end_body()

    # --- internals --------------------------------------------------------------------------

    def _dispatch(self, exchange: Exchange) -> None:
        if exchange.rejected is not None:
            exchange.send_problem(exchange.rejected)
            return
        try:
            on_dispatch = self.server.on_dispatch
            if on_dispatch is not None:
                on_dispatch(exchange)  # the span starts (tracing.py)
            self.handler.handle(exchange)
        except Exception:
            self.server.log_exception("handler_error")
            if not exchange.finished:
                exchange.abort()

    def _reject_request(self, problem: GatewayProblem) -> None:
        """The byte stream is unusable: answer what was parsed before it, then the problem,
        then close."""
        self.closing = True
        self.pause_reading(_PAUSE_CLOSING)
        broken = self._incoming
        self._incoming = None
        if broken is not None and broken in self.queue:
            # The head arrived but the body is broken: whatever was forwarded is unusable.
            if self.queue[0] is broken:
                # Told first, so it drops an upstream connection left owing the rest of the
                # body at once rather than at its timeout.
                responder = broken.responder
                broken.responder = None
                if responder is not None:
                    responder.client_gone()
                broken.abort()
                return
            # Waiting behind others, never dispatched: answered with the problem in its turn.
            broken.rejected = problem
            broken.body_chunks = []
            return
        exchange = Exchange(self, b"", b"", None, [], True, False)
        exchange.request_id = self.server.request_ids.accept_or_new(None)
        self.queue.append(exchange)
        if len(self.queue) == 1:
            exchange.send_problem(problem)
        else:
            exchange.rejected = problem

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def exchange_done(self, exchange: Exchange) -> None:
        queue = self.queue
        if queue and queue[0] is exchange:
            queue.popleft()
        if exchange.close_after or (self.closing and not queue):
            self.close()
            return
        self.last_activity = self.server.loop.time()
        if queue:
            self.resume_reading(_PAUSE_PIPELINE)
            self._dispatch(queue[0])

    def pause_reading(self, reason: int) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._paused |= reason

    def resume_reading(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        # connection_lost follows and tells any responder still attached.

    @property
    def idle(self) -> bool:
        return not self.queue and not self.in_message

    def begin_shutdown(self) -> None:
        """Stop taking requests: close now if idle, else after the response in progress."""
        self.closing = True
        if self.idle:
            self.close()

    def sweep(self, now: float) -> None:
        limits = self.server.limits
        if self.idle:
            # A connection that never sent a request gets the head's timeout, not keep-alive's.
            limit = limits.keep_alive if self.seen_request else limits.header_timeout
            if now - self.last_activity > limit:
                self.close()
        elif (
            self.in_message
            and self._incoming is None
            and now - self.last_activity > limits.header_timeout
        ):
            # Only the head is timed here; a slow body is the upstream's timeout to judge.
            self.in_message = False
            if not self.queue:
                self._reject_request(problems.REQUEST_TIMEOUT)
            else:
                self.closing = True


class _Rejected(Exception):  # noqa: N818 - control flow out of a parser callback
    pass


class _Discard:
    """A body sink that drops what it is given."""

    def body_chunk(self, data: bytes) -> None:
        pass

    def body_end(self) -> None:
        pass


_DISCARD = _Discard()


class Server:
    """Listening sockets plus the set of live connections, for sweeping and draining."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limits: ServerLimits,
        request_ids: RequestIds | None = None,
    ) -> None:
        self.loop = loop
        self.limits = limits
        self.request_ids = request_ids or RequestIds()
        self.date = DateHeader()
        self.connections: set[ClientConnection] = set()
        self.draining = False
        # The observer (lifecycle/observer.py) is told when an exchange is handed to the handler, and when
        # it ends (True: aborted, the response incomplete or never sent). None on the admin port.
        self.on_dispatch: Callable[[Exchange], None] | None = None
        self.on_end: Callable[[Exchange, bool], None] | None = None
        self._drained = asyncio.Event()
        self._servers: list[Acceptor] = []
        self._sweeper: asyncio.TimerHandle | None = None

    def log_exception(self, event: str) -> None:
        _log.exception(event)

    async def listen(self, sock: socket.socket, handler: Handler) -> None:
        # Not loop.create_server: the socket is shared by the workers (listener.py).
        acceptor = Acceptor(self.loop, sock, lambda: ClientConnection(self, handler))
        acceptor.start()
        self._servers.append(acceptor)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(1.0, self._sweep)

    def forget(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if self.draining and not self.connections:
            self._drained.set()

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections):
            conn.sweep(now)
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish (up to `grace` s), close the rest."""
        self.draining = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.begin_shutdown()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._drained.wait()
        for conn in list(self.connections):
            conn.close()
        for server in self._servers:
            await server.wait_closed()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
