"""An awaitable request to a backend, read whole: for the gateway's own calls (aggregation).

`Fetch` is the counterpart of `handlers.forward.Forward` for a response the gateway consumes instead of
relaying: it rides the same per-instance connection pools (`upstream.Pool`, as a `PoolClient`
and a `ResponseSink`), picks its instance through the backend's balancer and reports every
outcome back to it, so aggregated calls count for ejection, the circuit breaker and the retry
budget exactly like proxied ones. The status, headers and body (up to a size cap) resolve a
future; a transport failure, a timeout or an oversized body resolve it too, with `error` set:
awaiting a fetch never raises.

Only bodyless requests are sent (the caller renders the whole head), so a retry is always safe
to send again: connection errors, listed statuses and a try with no answer within
`retries.per_try_timeout` are retried on another instance, within
the deadline and the backend's retry budget, as `Forward` does for idempotent methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mosaic_gateway.http.wire import is_chunked
from mosaic_gateway.upstream.attempt import RETRIED_STATUS, Attempt, RetryPolicy
from mosaic_gateway.upstream.balancer import Backend, Instance
from mosaic_gateway.upstream.connection import TRY_TIMEOUT, UpstreamConnection, UpstreamError

TIMEOUT = UpstreamError("timeout", 504)
TOO_LARGE = UpstreamError("response_too_large", 502)
CIRCUIT_OPEN = UpstreamError("circuit_open", 503)
NO_INSTANCE = UpstreamError("no_instance", 503)
CANCELLED = UpstreamError("cancelled", 499)


class FetchResult:
    """What came back: a response (`error` None), or why there is none."""

    __slots__ = ("body", "error", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        error: UpstreamError | None,
    ) -> None:
        self.status = status  # 0 when there is no response
        self.headers = headers
        self.body = body
        self.error = error

    @property
    def timed_out(self) -> bool:
        return self.error is not None and self.error.status == 504

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class Fetch(Attempt):
    """One bodyless request to a backend, its response collected whole.

    `head` renders the request head for the chosen instance (only `Host` may depend on it).
    Start with `start()`, await `future`; `cancel()` drops it (the client went away)."""

    __slots__ = (
        "_body",
        "_size",
        "deadline",
        "future",
        "head",
        "head_only",
        "headers",
        "loop",
        "max_bytes",
        "status",
        "timer",
        "try_timer",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        backend: Backend,
        head: Callable[[Instance], bytes],
        *,
        deadline: float,
        max_bytes: int,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(backend, retry, retry.attempts if retry is not None else 0)
        self.loop = loop
        self.head = head
        self.deadline = deadline
        self.max_bytes = max_bytes
        self.future: asyncio.Future[FetchResult] = loop.create_future()
        self.head_only = False
        self.timer: asyncio.TimerHandle | None = None
        # A try's own limit (retries.per_try_timeout), armed when its request is sent.
        self.try_timer: asyncio.TimerHandle | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0

    def start(self) -> asyncio.Future[FetchResult]:
        backend = self.backend
        if self.retry is not None:
            backend.deposit_retry_token()
        instance = backend.pick()
        if instance is None:
            self._resolve(CIRCUIT_OPEN if backend.instances else NO_INSTANCE)
            return self.future
        self.begin(instance)
        self.timer = self.loop.call_at(self.deadline, self._on_timeout)
        instance.pool.acquire(self)
        return self.future

    def cancel(self) -> None:
        """Nobody wants the answer any more: drop the connection, no verdict on the instance."""
        if self.done:
            return
        self._drop_connection()
        self._settle(None, CANCELLED)

    # --- PoolClient -------------------------------------------------------------------------

    def attach(self, conn: UpstreamConnection, reused: bool) -> None:
        self.conn = conn
        self.reused = reused
        conn.bind(self)
        conn.send_request(self.head(self.instance), 0)
        # A try sent again on a fresh connection (a stale pooled one) still has the first
        # sending's timer: left armed, it would fire during a later try on another instance.
        self._cancel_try_timer()
        per_try = self.retry.per_try_timeout if self.retry is not None else None
        if per_try is not None and self.retries_left:
            at = self.loop.time() + per_try
            if at < self.deadline:
                self.try_timer = self.loop.call_at(at, self._on_try_timeout)

    # --- ResponseSink -----------------------------------------------------------------------

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        self._cancel_try_timer()
        self.retries_status(status)
        self.status = status
        self.headers = headers
        self._body = []
        self._size = 0
        framed = False
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                framed = True
                if not self.discarding and value.isdigit() and int(value) > self.max_bytes:
                    # Known too big before reading it: give up on this response at once.
                    self.loop.call_soon(self._too_large)
            elif lower == b"transfer-encoding" and is_chunked(value):
                framed = True
        return not framed and status not in (204, 304)

    def response_body(self, data: bytes) -> None:
        if self.discarding or self.done:
            return
        self._size += len(data)
        if self._size > self.max_bytes:
            self._too_large()
            return
        self._body.append(data)

    def response_flush(self) -> None:
        pass

    def response_end(self) -> None:
        self.conn = None
        if self.done:
            return
        if self.discarding:
            self.retry_elsewhere(RETRIED_STATUS)
            return
        self._settle(self.status not in self.backend.failure_statuses, None)

    def upstream_failed(self, error: UpstreamError, partial: bool) -> None:
        self.conn = None
        if self.done:
            return
        # Bodyless: always safe to send again.
        if not self.recover(error, partial, replayable=True, answered=self.status != 0):
            self._settle(False, error)

    def request_paused(self) -> None:
        pass  # no request body: nothing to hold back

    def request_resumed(self) -> None:
        pass

    # --- internals --------------------------------------------------------------------------

    # --- tries (attempt.py) ----------------------------------------------------------------

    def can_retry_now(self) -> bool:
        return self.loop.time() < self.deadline

    def next_try(self, previous: Instance, error: UpstreamError) -> None:
        self._cancel_try_timer()
        self.status = 0
        self.instance.pool.acquire(self)

    def give_up(self, error: UpstreamError, *, account: bool = True) -> None:
        self._settle(False, error, account=account)

    def _too_large(self) -> None:
        if self.done:
            return
        self._drop_connection()
        # The instance answered; its answer is just more than the gateway will hold.
        self._settle(None, TOO_LARGE)

    def _on_timeout(self) -> None:
        self.timer = None
        if self.done:
            return
        self._drop_connection()
        self._settle(False, TIMEOUT)

    def _on_try_timeout(self) -> None:
        """The try had no response head within `per_try_timeout` (a hung instance): give it
        up for another instance, as `Forward` does, when a retry is allowed; else it runs
        on to the call's deadline."""
        self.try_timer = None
        conn = self.conn
        if self.done or conn is None or conn.received or not self.may_retry():
            return
        self._drop_connection()
        self.retry_elsewhere(TRY_TIMEOUT)

    def _cancel_try_timer(self) -> None:
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None

    def _drop_connection(self) -> None:
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.abandon()

    def _settle(
        self, ok: bool | None, error: UpstreamError | None, *, account: bool = True
    ) -> None:
        """Report the outcome to the balancer and resolve the future, exactly once."""
        if self.done:
            return
        self.done = True
        self._cancel_try_timer()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if account:
            self.account(ok, error.name if error else "status")
        self._resolve(error)

    def _resolve(self, error: UpstreamError | None) -> None:
        self.done = True
        if self.future.done():
            return
        if error is None:
            result = FetchResult(self.status, self.headers, b"".join(self._body), None)
        else:
            result = FetchResult(0, [], b"", error)
        self.future.set_result(result)
