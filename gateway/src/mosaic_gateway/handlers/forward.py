"""Forwarding a request to a backend instance and streaming the response back.

`Forwarding` ends a proxied route's chain: it picks an instance and starts a `Forward`, which takes a pooled
connection, writes the request head (and body, as it arrives), and relays the response: status
and headers re-written once, body bytes passed through (re-chunked when the upstream chunked or
delimited by close), one client write per upstream read.

Per request the gateway arms no timer: a forward joins the set of active forwards with its
deadline, and a 100 ms ticker arms real timers only for forwards still running by then, so the
usual sub-millisecond request never touches the timer heap. A finished forward leaves the set at
once: holding finished requests until the next tick would age them into the garbage collector's
older generations, which costs more than the timers saved.

Retries (`RetryPolicy`, per backend) apply to idempotent methods whose request body has not been
streamed upstream: no body, or a small body that had fully arrived and was sent in one write (it
is kept for the retry). A retry happens on a connection error (refused, connect timeout, or the
connection lost before any response byte) or on a listed status, before anything was relayed to
the client; it goes to another instance when one admits it, within the overall route deadline,
and only while the backend's retry budget has a token. A retried status's response is read and
dropped rather than the connection closed, so the pooled connection stays usable. With
`retries.per_try_timeout`, a try that has had no response byte by then (a hung instance) is given
up, its connection closed, and retried the same way; the last try has until the route's deadline.
The per-try deadline rides on the same ticker as the route's: no timer for a quick request.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from mosaic_gateway.http import problems
from mosaic_gateway.http.server import Exchange, StateKey
from mosaic_gateway.http.wire import (
    CRLF,
    HOP_BY_HOP,
    IDEMPOTENT_METHODS,
    LAST_CHUNK,
    chunk,
    connection_tokens,
    is_chunked,
    status_line,
)
from mosaic_gateway.routing.route import CompiledRoute
from mosaic_gateway.upstream.attempt import RETRIED_STATUS, Attempt
from mosaic_gateway.upstream.balancer import Instance
from mosaic_gateway.upstream.breaker import CIRCUIT_OPEN
from mosaic_gateway.upstream.connection import (
    BODY_CHUNKED,
    TRY_TIMEOUT,
    UpstreamConnection,
    UpstreamError,
)
from mosaic_kit.logging import get_logger

if TYPE_CHECKING:
    from mosaic_gateway.observe.metrics import Metrics

# Request headers never copied upstream: hop-by-hop ones, the body framing (re-done here), the
# ones the gateway sets itself, and `expect` (answered here).
_REQUEST_SKIP = HOP_BY_HOP | {
    b"content-length",
    b"expect",
    b"x-request-id",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
_RESPONSE_SKIP = HOP_BY_HOP | {b"x-request-id"}
_RESPONSE_SKIP_CACHED = _RESPONSE_SKIP | {b"x-cache"}
_NO_BODY_STATUSES = frozenset({204, 304})
_LENGTH = frozenset({b"content-length"})
_TICK = 0.1
# A retryable request with a declared body up to this size is read whole before it is sent, so
# that a retry can send it again; bigger ones stream (and are then not retried).
_REPLAYABLE_BODY = 64 * 1024

_log = get_logger("mosaic_gateway.handlers.forward")

# The URL of the instance last tried for the request (the access log's `upstream`, the span's).
UPSTREAM_INSTANCE: StateKey[str] = StateKey("upstream_instance")


class Forwarder:
    """A worker's forwarding: the forwards in flight and their deadlines, shared by routes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, trust_forwarded: bool) -> None:
        self.loop = loop
        self.trust_forwarded = trust_forwarded
        self.active: set[Forward] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self.metrics: Metrics | None = None  # upstream failures and retries
        # Whether anything reads UPSTREAM_INSTANCE (the access log, spans: the worker says, from
        # its observer); if not, a request stores no state for it (no dict made per request).
        self.note_instance = True

    def start(self) -> None:
        self._ticker = self.loop.call_later(_TICK, self._tick)

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def _tick(self) -> None:
        call_at = self.loop.call_at
        for forward in self.active:
            if forward.timer is None:
                # The try's own limit first, if it has one (retries.per_try_timeout).
                forward.timer = call_at(
                    forward.try_deadline or forward.deadline, forward.on_timeout
                )
        self._ticker = self.loop.call_later(_TICK, self._tick)

    def request_head(
        self, exchange: Exchange, route: CompiledRoute, instance: Instance
    ) -> tuple[bytes, bool]:
        """The request line and headers for the upstream; and whether the body is chunked."""
        # (The server never makes an empty path: `upstream_path` only for a route that rewrites.)
        path = route.upstream_path(exchange.path) if route.rewrites else exchange.path
        parts = [exchange.method, b" ", path]
        if exchange.query is not None:
            parts += (b"?", exchange.query)
        parts.append(b" HTTP/1.1\r\n")
        forwarded_for: bytes | None = None
        # (Headers the client named in `Connection` were taken out by the server already.)
        for name, value in exchange.headers:
            if name in _REQUEST_SKIP:
                if name == b"x-forwarded-for" and self.trust_forwarded:
                    forwarded_for = (
                        value if forwarded_for is None else forwarded_for + b", " + value
                    )
                continue
            parts += (name, b": ", value, CRLF)
        chunked = exchange.chunked
        if chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif exchange.content_length is not None:
            parts.append(b"content-length: %d\r\n" % exchange.content_length)
        if exchange.host is None:
            parts += (b"host: ", f"{instance.host}:{instance.port}".encode("ascii"), CRLF)
        else:
            parts += (b"x-forwarded-host: ", exchange.host, CRLF)
        append_forwarded(parts, exchange, forwarded_for)
        parts.append(CRLF)
        return b"".join(parts), chunked


class Forwarding:
    """The terminal handler of a proxied route: the request goes to one of its backend's
    instances (retried on another when allowed) and the response comes back as it arrives."""

    __slots__ = ("forwarder", "route")

    def __init__(self, forwarder: Forwarder, route: CompiledRoute) -> None:
        self.forwarder = forwarder
        self.route = route

    def start(self, exchange: Exchange) -> None:
        route = self.route
        backend = route.backend
        if route.retry is not None:
            backend.deposit_retry_token()
        instance = backend.pick()
        if instance is None:
            # Every instance's breaker refuses (or there is no instance at all): fail fast.
            hook = exchange.hook
            if hook is not None:
                exchange.hook = None
                hook.abandon()
            exchange.send_problem(CIRCUIT_OPEN if backend.instances else problems.UNAVAILABLE)
            return
        forwarder = self.forwarder
        forward = Forward(forwarder, exchange, route, instance)
        forwarder.active.add(forward)
        if (
            forward.retries_left
            and exchange.has_body
            and not exchange.body_done
            and exchange.content_length is not None
            and exchange.content_length <= _REPLAYABLE_BODY
        ):
            forward.buffer_body()  # asks the pool once the body is complete
            return
        instance.pool.acquire(forward)


def append_forwarded(parts: list[bytes], exchange: Exchange, forwarded_for: bytes | None) -> None:
    """The header lines the gateway adds to every upstream request: `X-Forwarded-For` (the
    trusted chain, if any, then the peer), `-Proto`, `X-Request-Id`, and the caller's identity
    claims."""
    if forwarded_for is None:
        parts.append(exchange.conn.forwarded_tail)
    else:
        parts += (
            b"x-forwarded-for: ",
            forwarded_for,
            b", ",
            exchange.conn.peer,
            b"\r\nx-forwarded-proto: http\r\nx-request-id: ",
        )
    parts += (exchange.request_id, CRLF, exchange.upstream_headers)


class Forward(Attempt):
    """One request's trip to an instance and back (its tries: attempt.py)."""

    __slots__ = (
        "body",
        "body_chunked",
        "buffered",
        "deadline",
        "exchange",
        "failure_status",
        "forwarder",
        "head_only",
        "hook",
        "out",
        "route",
        "timer",
        "to_client_chunked",
        "try_deadline",
    )

    def __init__(
        self,
        forwarder: Forwarder,
        exchange: Exchange,
        route: CompiledRoute,
        instance: Instance,
    ) -> None:
        retry = route.retry
        Attempt.__init__(  # not super(): no proxy object to make, once per request
            self,
            route.backend,
            retry,
            retry.attempts if retry is not None and exchange.method in IDEMPOTENT_METHODS else 0,
            instance,
        )
        self.forwarder = forwarder
        self.exchange = exchange
        self.route = route
        if forwarder.note_instance:
            exchange.put(UPSTREAM_INSTANCE, instance.url)
        self.body: bytes | None = None
        self.buffered: list[bytes] | None = None
        self.head_only = exchange.method == b"HEAD"
        self.body_chunked = False
        self.to_client_chunked = False
        self.failure_status = False
        self.out: list[bytes] = []
        self.deadline = forwarder.loop.time() + route.timeout
        # When this try is given up for another instance (0.0: never, it may take until
        # `deadline`); the ticker arms the timer, as for `deadline`.
        self.try_deadline = (
            0.0 if retry is None or retry.per_try_timeout is None else self._next_try_deadline()
        )
        self.timer: asyncio.TimerHandle | None = None
        # Told about the response (a filter's: the cache labels and tees it); chain.py.
        self.hook = exchange.hook
        exchange.hook = None
        exchange.responder = self
        if exchange.conn.write_paused:
            self.pause_response()

    # --- PoolClient -------------------------------------------------------------------------

    def attach(self, conn: UpstreamConnection, reused: bool) -> None:
        self.conn = conn
        self.reused = reused
        conn.bind(self)
        exchange = self.exchange
        if exchange.conn.write_paused:
            conn.pause_reading()  # the client stopped reading before this connection came
        head, self.body_chunked = self.forwarder.request_head(exchange, self.route, self.instance)
        if not exchange.has_body:
            conn.send_request(head, 0)
            return
        # The framing `head` declares; the connection holds the body sent to it.
        length = BODY_CHUNKED if self.body_chunked else exchange.content_length or 0
        body = self.body
        if body is None and exchange.body_done and exchange.sink is None:
            # The whole body is here already (the usual small JSON body): one write.
            body = exchange.take_body(self)
            if self.retries_left:
                self.body = body  # a retry sends it again; the exchange gave it away
        if body is not None:
            conn.send_request(head, length, body)
            return
        # Streamed as it arrives: once bytes went upstream they cannot be replayed.
        self.retries_left = 0
        conn.send_request(head, length)
        exchange.accept_body(self)

    # --- BodySink ---------------------------------------------------------------------------

    def buffer_body(self) -> None:
        """Collect the (small) body before taking a connection, to be able to replay it."""
        self.buffered = []
        self.exchange.accept_body(self)

    def body_chunk(self, data: bytes) -> None:
        buffered = self.buffered
        if buffered is not None:
            buffered.append(data)
            return
        conn = self.conn
        if conn is not None:
            conn.send_body(data)

    def body_end(self) -> None:
        buffered = self.buffered
        if buffered is not None:
            self.buffered = None
            self.body = b"".join(buffered)
            if not self.done:
                self.instance.pool.acquire(self)
            return
        conn = self.conn
        if conn is not None:
            conn.end_body()

    # --- Responder --------------------------------------------------------------------------

    def pause_response(self) -> None:
        if self.conn is not None:
            self.conn.pause_reading()

    def resume_response(self) -> None:
        if self.conn is not None:
            self.conn.resume_reading()

    def client_gone(self) -> None:
        if self.done:
            return
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.abandon()
        self._settle(None)

    # --- ResponseSink -----------------------------------------------------------------------

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        exchange = self.exchange
        self.failure_status = status in self.backend.failure_statuses
        retry = self.retry
        # The status is looked up here first: the usual answer costs no call.
        if retry is not None and status in retry.statuses and self.retries_status(status):
            # Read and drop this answer, then retry (in response_end). Returning False for a
            # close-delimited body makes its end arrive as upstream_failed: also a retry.
            self.failure_status = True
            return False
        out = self.out
        head_at = len(out)  # the buffer may hold bytes not yet flushed; the head starts here
        out.append(status_line(status))
        upstream_chunked = False
        has_length = False
        drop: set[bytes] | None = None
        # A cached route's `x-cache` is the gateway's (its hook's); an upstream's own would
        # contradict it.
        skip = _RESPONSE_SKIP if self.hook is None else _RESPONSE_SKIP_CACHED
        if status == 204:
            # Content-Length is forbidden on a 204 (RFC 9110 8.6): a client honouring an
            # upstream's would take the next response's first bytes as this one's body.
            skip = skip | _LENGTH
        for name, value in headers:
            lower = name.lower()
            if lower in skip:
                if lower == b"transfer-encoding":
                    upstream_chunked = is_chunked(value)
                elif lower == b"connection":
                    tokens = connection_tokens(value) - {b"close", b"keep-alive"}
                    if tokens:
                        drop = tokens if drop is None else drop | tokens
                continue
            if lower == b"content-length":
                has_length = True
            out += (name, b": ", value, CRLF)
        if drop:
            del out[head_at + 1 :]
            for name, value in headers:
                lower = name.lower()
                if lower not in skip and lower not in drop:
                    out += (name, b": ", value, CRLF)
        no_body = self.head_only or status in _NO_BODY_STATUSES
        close_delimited = not no_body and not upstream_chunked and not has_length
        if not no_body and (upstream_chunked or close_delimited):
            if exchange.http11:
                self.to_client_chunked = True
                out.append(b"transfer-encoding: chunked\r\n")
            else:
                # An HTTP/1.0 client knows no chunks: the body ends when the connection does.
                exchange.close_after = True
        hook = self.hook
        if hook is not None and not hook.head(status, headers, out):
            self.hook = None
        out += (b"x-request-id: ", exchange.request_id, CRLF)
        if exchange.response_extra:
            out.append(exchange.response_extra)
        if exchange.will_close():
            out.append(b"connection: close\r\n")
        out.append(CRLF)
        exchange.head_sent = True
        exchange.status = status
        return close_delimited

    def response_body(self, data: bytes) -> None:
        if self.discarding:
            return
        self.out.append(chunk(data) if self.to_client_chunked else data)
        hook = self.hook
        if hook is not None and not hook.body(data):
            self.hook = None

    def response_flush(self) -> None:
        out = self.out
        if out:
            self.exchange.write(b"".join(out))
            out.clear()

    def response_end(self) -> None:
        if self.discarding:
            self.conn = None
            self.retry_elsewhere(RETRIED_STATUS)
            return
        out = self.out
        if self.to_client_chunked:
            out.append(LAST_CHUNK)
        if out:
            self.exchange.write(b"".join(out))
            out.clear()
        self.conn = None
        hook = self.hook  # the response is complete (the cache may store it)
        if hook is not None:
            self.hook = None
            hook.end()
        self._settle(not self.failure_status)
        self.exchange.finish()

    def upstream_failed(self, error: UpstreamError, partial: bool) -> None:
        self.conn = None
        if self.done:
            return
        exchange = self.exchange
        replayable = not exchange.has_body and exchange.method in IDEMPOTENT_METHODS
        if not self.recover(error, partial, replayable=replayable, answered=exchange.head_sent):
            self.give_up(error)

    def request_paused(self) -> None:
        self.exchange.pause_body()

    def request_resumed(self) -> None:
        self.exchange.resume_body()

    # --- tries (attempt.py) ----------------------------------------------------------------

    def can_retry_now(self) -> bool:
        return not self.exchange.head_sent

    def try_failed(self, instance: Instance, error: UpstreamError) -> None:
        metrics = self.forwarder.metrics
        if metrics is not None:
            metrics.upstream_failed(self.backend.name, instance.url, error.name)

    def next_try(self, previous: Instance, error: UpstreamError) -> None:
        following = self.instance
        metrics = self.forwarder.metrics
        if metrics is not None:
            metrics.retried(self.backend.name, error.name)
        _log.info(
            "upstream_retry",
            error=error.name,
            backend=self.backend.name,
            instance=previous.url,
            next_instance=following.url,
            request_id=self.exchange.request_id.decode("latin-1"),
        )
        if self.forwarder.note_instance:
            self.exchange.put(UPSTREAM_INSTANCE, following.url)
        self.failure_status = False
        if self.timer is not None:
            # Armed for the failed try; the ticker arms the next one's.
            self.timer.cancel()
            self.timer = None
        self.try_deadline = self._next_try_deadline()
        following.pool.acquire(self)

    def _next_try_deadline(self) -> float:
        """`try_deadline` for a try starting now: a try's time if one more retry may follow it
        and that ends before the route's deadline, else 0.0."""
        per_try = self.retry.per_try_timeout if self.retry is not None else None
        if per_try is None or not self.retries_left:
            return 0.0
        at = self.forwarder.loop.time() + per_try
        return at if at < self.deadline else 0.0

    def _try_expired(self) -> bool:
        """The try's time is up (`try_deadline`). With no response byte yet, give it up for
        another instance and return True; else it runs on (to a later `try_deadline`, or to the
        route's deadline) and False."""
        conn = self.conn
        if conn is None:
            # Not at the instance yet (connecting, queued for a connection, the body still
            # arriving): judged a try's time later instead.
            self.try_deadline = self._next_try_deadline()
            return False
        if conn.received or not self.may_retry():
            # An answer has begun (relayed as it comes), or no retry is left or affordable.
            return False
        self.conn = None
        conn.abandon()  # it may still answer: the connection cannot carry another exchange
        self.retry_elsewhere(TRY_TIMEOUT)
        return True

    # --- endings ----------------------------------------------------------------------------

    def on_timeout(self) -> None:
        self.timer = None
        if self.done:
            return
        if self.try_deadline:
            self.try_deadline = 0.0
            if not self._try_expired():
                self.timer = self.forwarder.loop.call_at(
                    self.try_deadline or self.deadline, self.on_timeout
                )
            return
        conn = self.conn
        if self.exchange.head_sent and conn is not None:
            # Streaming a body: the timeout bounds silence, not the whole transfer.
            idle_until = conn.last_read + self.route.timeout
            if idle_until > self.forwarder.loop.time():
                self.timer = self.forwarder.loop.call_at(idle_until, self.on_timeout)
                return
        self.conn = None
        if conn is not None:
            conn.abandon()
        self.give_up(_TIMEOUT)

    def give_up(self, error: UpstreamError, *, account: bool = True) -> None:
        if self.done:
            return
        self._settle(False, error.name, account=account)
        exchange = self.exchange
        _log.warning(
            "upstream_failed",
            error=error.name,
            backend=self.backend.name,
            instance=self.instance.url,
            route=self.route.template,
            request_id=exchange.request_id.decode("latin-1"),
            response_started=exchange.head_sent,
        )
        if exchange.head_sent:
            exchange.abort()
        elif error.status == 504:
            exchange.send_problem(problems.UPSTREAM_TIMEOUT)
        elif error.status == 503:
            exchange.send_problem(problems.UNAVAILABLE)
        else:
            exchange.send_problem(problems.BAD_GATEWAY)

    def _settle(self, ok: bool | None, reason: str = "status", *, account: bool = True) -> None:
        """Account for the end of the exchange, exactly once (`account=False`: the last try
        was already reported)."""
        if self.done:
            return
        self.done = True
        self.forwarder.active.discard(self)
        hook = self.hook  # ended without a complete response
        if hook is not None:
            self.hook = None
            hook.abandon()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not account:
            return
        self.account(ok, reason)
        if ok is False:
            metrics = self.forwarder.metrics
            if metrics is not None:
                metrics.upstream_failed(self.backend.name, self.instance.url, reason)


_TIMEOUT = UpstreamError("timeout", 504)
