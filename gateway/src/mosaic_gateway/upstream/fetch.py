"""An awaitable request to a backend, read whole: for the gateway's own calls (aggregation).

`Fetch` is the counterpart of `proxy.Forward` for a response the gateway consumes instead of
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
from typing import TYPE_CHECKING

from mosaic_gateway.http.wire import is_chunked
from mosaic_gateway.upstream.balancer import Backend, Instance
from mosaic_gateway.upstream.connection import (
    CONNECTION_RESET,
    TRY_TIMEOUT,
    UpstreamConnection,
    UpstreamError,
)

if TYPE_CHECKING:
    from mosaic_gateway.upstream.attempt import RetryPolicy

TIMEOUT = UpstreamError("timeout", 504)
TOO_LARGE = UpstreamError("response_too_large", 502)
CIRCUIT_OPEN = UpstreamError("circuit_open", 503)
NO_INSTANCE = UpstreamError("no_instance", 503)
CANCELLED = UpstreamError("cancelled", 499)
_RETRIED_STATUS = UpstreamError("retried_status", 503)


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


class Fetch:
    """One bodyless request to a backend, its response collected whole.

    `head` renders the request head for the chosen instance (only `Host` may depend on it).
    Start with `start()`, await `future`; `cancel()` drops it (the client went away)."""

    __slots__ = (
        "_body",
        "_size",
        "backend",
        "conn",
        "deadline",
        "discarding",
        "done",
        "future",
        "head",
        "head_only",
        "headers",
        "instance",
        "loop",
        "max_bytes",
        "permit",
        "retried",
        "retries_left",
        "retry",
        "reused",
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
        self.loop = loop
        self.backend = backend
        self.head = head
        self.deadline = deadline
        self.max_bytes = max_bytes
        self.retry = retry
        self.retries_left = retry.attempts if retry is not None else 0
        self.future: asyncio.Future[FetchResult] = loop.create_future()
        self.instance: Instance | None = None
        self.permit = 0
        self.conn: UpstreamConnection | None = None
        self.reused = False
        self.retried = False
        self.discarding = False
        self.done = False
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
        self.instance = instance
        self.permit = backend.permit
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

    @property
    def wants_connection(self) -> bool:
        return not self.done and self.conn is None

    def attach(self, conn: UpstreamConnection, reused: bool) -> None:
        assert self.instance is not None
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

    def connect_failed(self, error: UpstreamError) -> None:
        retry = self.retry
        if retry is not None and retry.on_connect_error and self._may_retry():
            self._retry(error)
            return
        self._settle(False, error)

    # --- ResponseSink -----------------------------------------------------------------------

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        self._cancel_try_timer()
        retry = self.retry
        self.discarding = retry is not None and status in retry.statuses and self._may_retry()
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
            self._retry(_RETRIED_STATUS)
            return
        self._settle(self.status not in self.backend.failure_statuses, None)

    def upstream_failed(self, error: UpstreamError, partial: bool) -> None:
        self.conn = None
        if self.done:
            return
        instance = self.instance
        assert instance is not None
        if error is CONNECTION_RESET and self.reused and not partial and not self.retried:
            # A pooled connection the instance had just closed (keep-alive race): nothing was
            # processed, try once more on a new connection (not a retry, as in proxy.Forward).
            self.retried = True
            instance.pool.acquire(self, fresh=True)
            return
        if self.discarding:
            self._retry(_RETRIED_STATUS)
            return
        retry = self.retry
        if (
            error is CONNECTION_RESET
            and self.status == 0
            and retry is not None
            and retry.on_connect_error
            and self._may_retry()
        ):
            self._retry(error)
            return
        self._settle(False, error)

    def request_paused(self) -> None:
        pass  # no request body: nothing to hold back

    def request_resumed(self) -> None:
        pass

    # --- internals --------------------------------------------------------------------------

    def _may_retry(self) -> bool:
        return (
            self.retries_left > 0
            and self.loop.time() < self.deadline
            and self.backend.take_retry_token()
        )

    def _retry(self, error: UpstreamError) -> None:
        self._cancel_try_timer()
        self.retries_left -= 1
        self.discarding = False
        self.status = 0
        instance = self.instance
        assert instance is not None
        backend = self.backend
        # Reported first, so the failure can open this instance's breaker before the re-pick.
        backend.failed(instance, self.permit, error.name)
        following = backend.pick_other(instance)
        if following is None:
            self._settle(False, error, account=False)
            return
        self.instance = following
        self.permit = backend.permit
        self.reused = False
        self.retried = False
        following.pool.acquire(self)

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
        up for another instance, as `proxy.Forward` does, when a retry is allowed; else it runs
        on to the call's deadline."""
        self.try_timer = None
        conn = self.conn
        if self.done or conn is None or conn.received or not self._may_retry():
            return
        self._drop_connection()
        self._retry(TRY_TIMEOUT)

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
        instance = self.instance
        if account and instance is not None:
            if ok is None:
                self.backend.finished(instance, self.permit)
            elif ok:
                self.backend.succeeded(instance, self.permit)
            else:
                self.backend.failed(instance, self.permit, error.name if error else "status")
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
