"""Keep-alive HTTP/1.1 connections to backend instances, pooled per instance.

A connection carries one exchange at a time (no pipelining upstream: a slow response would hold
up the ones behind it). It returns to its pool only if the request bytes written match the
framing its head declared (exactly `content-length` body bytes, or the last chunk), the response
was read to its end with nothing after it, and neither side asked to close; anything else closes
it, so a connection in the pool is always at a message boundary on both sides. The connection
keeps that account itself (`send_request`, `send_body`, `end_body`): a caller that sends less
than it declared gets a closed connection, never a pooled one owing bytes that the next request
on it would pay for.

The response is parsed with httptools and handed to a `ResponseSink` (the proxy) piece by piece;
the sink batches what one read produced into one write to the client (`response_flush`).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import Protocol, cast

import httptools

from mosaic_gateway.http.wire import LAST_CHUNK, chunk, connection_tokens

# `send_request`'s body length for a chunked body.
BODY_CHUNKED = -1
# The body-bytes-owed counter before a request head is sent.
_NOT_SENT = -2


class UpstreamError:
    """Why an exchange with an instance failed; `status` is what the client is told."""

    __slots__ = ("name", "status")

    def __init__(self, name: str, status: int) -> None:
        self.name = name
        self.status = status

    def __repr__(self) -> str:
        return f"UpstreamError({self.name})"


CONNECT_FAILED = UpstreamError("connect_failed", 503)  # refused, unreachable: the instance is down
CONNECT_TIMEOUT = UpstreamError("connect_timeout", 504)
CONNECTION_RESET = UpstreamError("connection_reset", 502)  # closed before a complete response
BAD_RESPONSE = UpstreamError("bad_response", 502)  # not parseable as HTTP/1.1
# No response byte within retries.per_try_timeout (a hung instance): retried if it can be.
TRY_TIMEOUT = UpstreamError("per_try_timeout", 504)


class ResponseSink(Protocol):
    """The receiving end of one upstream exchange."""

    head_only: bool  # a response to HEAD: no body follows, whatever its headers say

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """Status and headers arrived. Returns True if the body is delimited by the connection
        closing (no Content-Length, not chunked), so the connection's end completes it."""

    def response_body(self, data: bytes) -> None: ...

    def response_flush(self) -> None:
        """Everything one read produced has been delivered; a good moment to write it out."""

    def response_end(self) -> None:
        """The response is complete (the connection is back in the pool, or closed)."""

    def upstream_failed(self, error: UpstreamError, partial: bool) -> None:
        """The connection broke. `partial`: some response bytes had arrived before."""

    def request_paused(self) -> None:
        """The instance is not reading the request body as fast as it is sent."""

    def request_resumed(self) -> None: ...


class PoolClient(Protocol):
    """Someone waiting for a connection from a pool."""

    @property
    def wants_connection(self) -> bool: ...

    def attach(self, conn: UpstreamConnection, reused: bool) -> None: ...

    def connect_failed(self, error: UpstreamError) -> None: ...


class _StrayResponse(Exception):  # noqa: N818 - control flow out of a parser callback
    pass


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_close_delimited",
        "_ended",
        "_head_done",
        "_head_only_done",
        "_headers",
        "_informational",
        "_now",
        "_owed",
        "_paused",
        "_reusable",
        "_tainted",
        "closed",
        "idle_since",
        "last_read",
        "parser",
        "pool",
        "received",
        "sink",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._now = pool.loop.time
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.closed = False
        self.idle_since = 0.0  # non-zero exactly while the connection sits in its pool's idle stack
        self.last_read = 0.0
        self.received = False
        # Body bytes still owed to the instance under the framing the request head declared:
        # BODY_CHUNKED until the last chunk is written, _NOT_SENT before the head. Only 0 lets
        # the connection back into the pool.
        self._owed = _NOT_SENT
        # The response ended in the read being parsed; whether the connection may be reused is
        # settled once the rest of that read is known (`_reusable`).
        self._ended = False
        self._reusable = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_done = False
        self._head_only_done = False
        self._informational = False
        self._close_delimited = False
        self._tainted = False
        self._paused = False

    # --- use by the proxy -------------------------------------------------------------------

    def bind(self, sink: ResponseSink) -> None:
        """Start an exchange on this (idle) connection."""
        self.sink = sink
        self.received = False
        self._owed = _NOT_SENT
        self._head_done = False
        if self._paused:
            # Paused for a slow client in the same read that completed the last response.
            self.resume_reading()

    def send_request(self, head: bytes, body_length: int, body: bytes | None = None) -> None:
        """Write a request head whose framing announces `body_length` body bytes (0: none;
        BODY_CHUNKED: a chunked body), with the whole `body` when given (one write, chunked
        here if so announced); else the body follows through `send_body` and `end_body`."""
        if body is None:
            self._owed = body_length
            data = head
        elif body_length == BODY_CHUNKED:
            self._owed = 0
            data = head + chunk(body) + LAST_CHUNK if body else head + LAST_CHUNK
        elif len(body) == body_length:
            self._owed = 0
            data = head + body if body else head
        else:
            self.close()  # the head would promise what the body does not hold
            return
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def send_body(self, data: bytes) -> None:
        """Write the next piece of the body announced by `send_request`."""
        owed = self._owed
        if owed == BODY_CHUNKED:
            if data:
                data = chunk(data)
        elif len(data) <= owed:
            self._owed = owed - len(data)
        else:
            # More than announced (or no head yet): the excess would be read as a request.
            self.close()
            return
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def end_body(self) -> None:
        """The body is complete: the last chunk goes out; a length-delimited body must have
        been sent whole, or the instance would wait for (or take from the next request) the
        bytes still owed, so the connection closes instead."""
        owed = self._owed
        if owed == BODY_CHUNKED:
            self._owed = 0
            if self.transport is not None and not self.closed:
                self.transport.write(LAST_CHUNK)
        elif owed:
            self.close()

    def abandon(self) -> None:
        """Drop the exchange in progress: the connection is in an unknown state, so close it."""
        self.sink = None
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self._paused:
            self._paused = False
            self.transport.resume_reading()

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            # Bytes outside an exchange: the instance broke the protocol; never reuse this.
            self.close()
            return
        self.received = True
        self.last_read = self._now()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # (HttpParserUpgrade: a 101, to a request that never asks for an upgrade.)
            if self._ended:
                # A complete response, then bytes nobody asked for: out of step from here.
                self._reusable = False
                self._end()
            else:
                self._fail(BAD_RESPONSE)
            return
        if self._ended:
            self._end()
        elif self._head_only_done:
            self._finish_head_only()
        else:
            sink.response_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        sink = self.sink
        self.sink = None
        if sink is None:
            return
        if self._head_done and self._close_delimited:
            sink.response_end()
            return
        sink.upstream_failed(CONNECTION_RESET, self.received)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.request_paused()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.request_resumed()

    # --- httptools callbacks ----------------------------------------------------------------

    # No on_status: each callback httptools does not find is one Python call saved per
    # response. The reason phrase is optional in HTTP/1.1 (RFC 9112 4) and clients must ignore
    # it, so the standard phrase is sent; the header list is reset after use.

    def on_message_begin(self) -> None:
        if self._ended:
            # Another message after the response, in the same read: stop parsing it.
            raise _StrayResponse

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_done:
            self._headers.append((name, value))
        # else: a trailer after a chunked body; dropped like the other hop-by-hop framing.

    def on_headers_complete(self) -> None:
        sink = self.sink
        if sink is None:
            return
        status = self.parser.get_status_code()
        headers = self._headers
        self._headers = []
        if status < 200:
            # 100/103 interim responses: the gateway handles Expect itself, hints are dropped.
            self._informational = True
            return
        self._head_done = True
        self._close_delimited = sink.response_head(status, headers)
        if sink.head_only:
            # llhttp would wait for the body announced by Content-Length; there is none. So
            # whether the instance keeps the connection is read from the head here: llhttp's
            # own answer comes with the end of a body that never comes.
            self._head_only_done = True
            self._reusable = self.parser.get_http_version() == "1.1" and not _says_close(headers)

    def on_body(self, body: bytes) -> None:
        if self._informational:
            return
        if self._head_only_done:
            self._tainted = True  # a body after a HEAD response: the stream is out of step
            return
        sink = self.sink
        if sink is not None:
            sink.response_body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._head_only_done:
            return
        self._ended = True
        self._reusable = self.parser.should_keep_alive()

    # --- internals --------------------------------------------------------------------------

    def _finish_head_only(self) -> None:
        self._head_only_done = False
        self.parser = httptools.HttpResponseParser(self)
        self._reusable = self._reusable and not self._tainted
        self._end()

    def _end(self) -> None:
        """The response is complete: pool the connection if both directions are at a message
        boundary, else close it; then tell the sink."""
        sink = self.sink
        self.sink = None
        self._ended = False
        if self._reusable and not self._owed and not self.closed and not self._close_delimited:
            self.pool.release(self)
        else:
            self.close()
        if sink is not None:
            sink.response_end()

    def _fail(self, error: UpstreamError) -> None:
        sink = self.sink
        self.sink = None
        self.close()
        if sink is not None:
            sink.upstream_failed(error, self.received)


def _says_close(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"connection" and b"close" in connection_tokens(value):
            return True
    return False


class Pool:
    """Connections to one instance: idle ones on a stack, a bound on how many are open, and a
    queue of clients waiting when all are busy.

    The stack is last-in-first-out so the busiest few connections stay warm and the rest age
    out through `sweep`, which closes connections idle longer than `idle_timeout`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        *,
        max_connections: int,
        idle_timeout: float,
        connect_timeout: float,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.idle: list[UpstreamConnection] = []
        self.open = 0  # connected or connecting
        self.waiters: deque[PoolClient] = deque()
        self.closed = False
        self._connecting: set[asyncio.Task[None]] = set()

    def acquire(self, client: PoolClient, *, fresh: bool = False) -> None:
        """Give `client` a connection now, or when one is opened or freed.

        `fresh` skips idle connections: for a retry after a reused one turned out stale."""
        if not fresh:
            idle = self.idle
            while idle:
                conn = idle.pop()
                conn.idle_since = 0.0
                if not conn.closed:
                    client.attach(conn, True)
                    return
        if self.open < self.max_connections:
            self._open_for(client)
        else:
            self.waiters.append(client)

    def release(self, conn: UpstreamConnection) -> None:
        """A connection finished an exchange cleanly and can carry another."""
        if self.closed:
            conn.close()
            return
        waiters = self.waiters
        while waiters:
            client = waiters.popleft()
            if client.wants_connection:
                client.attach(conn, True)
                return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """A connection closed (either side)."""
        self.open -= 1
        if conn.idle_since and conn in self.idle:
            self.idle.remove(conn)
        self._serve_waiters()

    def sweep(self, now: float) -> None:
        idle = self.idle
        expired = 0
        while expired < len(idle) and now - idle[expired].idle_since > self.idle_timeout:
            expired += 1
        if expired:
            stale = idle[:expired]
            del idle[:expired]
            for conn in stale:
                conn.idle_since = 0.0
                conn.close()

    def close(self) -> None:
        self.closed = True
        idle = self.idle
        self.idle = []
        for conn in idle:
            conn.idle_since = 0.0
            conn.close()
        for task in list(self._connecting):
            task.cancel()

    def _serve_waiters(self) -> None:
        while self.waiters and self.open < self.max_connections:
            client = self.waiters.popleft()
            if client.wants_connection:
                self._open_for(client)

    def _open_for(self, client: PoolClient) -> None:
        self.open += 1
        task = self.loop.create_task(self._open(client))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _open(self, client: PoolClient) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port
                )
        except TimeoutError:
            self._open_failed(client, CONNECT_TIMEOUT)
            return
        except OSError:
            self._open_failed(client, CONNECT_FAILED)
            return
        except asyncio.CancelledError:
            self.open -= 1
            raise
        if self.closed:
            conn.close()
            return
        if client.wants_connection:
            client.attach(conn, False)
        else:
            self.release(conn)

    def _open_failed(self, client: PoolClient, error: UpstreamError) -> None:
        self.open -= 1
        if client.wants_connection:
            client.connect_failed(error)
        # Waiters queued behind a full pool get their own attempt (and their own error).
        self._serve_waiters()
