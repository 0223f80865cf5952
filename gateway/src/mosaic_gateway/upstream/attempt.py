"""A request's tries at a backend: when one more try is allowed, where it goes, and how each
try's outcome is reported to the balancer.

Forwarding (`handlers.forward.Forward`, which relays the response as it comes) and the gateway's
own calls (`upstream.fetch.Fetch`, which reads it whole) are both an `Attempt`: the retry rules,
the retry budget, the breaker and ejection accounting live here once. What differs is told by
the subclass: whether a retry is still possible (nothing relayed to the client yet; the call's
deadline not passed), what starting the next try means, and how to give up.

Rules, in order, for a try that failed:

* a pooled connection that the instance had just closed (its keep-alive timeout raced ours),
  with nothing received and a request that can be sent again: once more on a fresh connection
  to the same instance; not a retry, and not a failure of the instance;
* a response with a status in `retries.on` is read and dropped (the connection stays usable),
  then retried;
* a connection error (refused, connect timeout, lost before any response byte) when
  `connect_error` is in `retries.on`: retried;
* each retry goes to another instance that admits it, spends a token of the backend's retry
  budget, and is reported as a failure of the instance first, so that the failure can open the
  instance's breaker before the re-pick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mosaic_gateway.upstream.connection import CONNECTION_RESET, UpstreamError

if TYPE_CHECKING:
    from mosaic_gateway.upstream.balancer import Backend, Instance
    from mosaic_gateway.upstream.connection import UpstreamConnection

# A try answered with a status in the retry list; if no instance is left, the client gets 503.
RETRIED_STATUS = UpstreamError("retried_status", 503)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a request may be tried again on another instance."""

    attempts: int  # retries after the first try
    on_connect_error: bool
    statuses: frozenset[int]
    # A try with no response byte by then is retried elsewhere (Forward.on_timeout); None: off.
    per_try_timeout: float | None = None


class Attempt:
    """The tries of one request at one backend (a `PoolClient` of the instances' pools)."""

    __slots__ = (
        "backend",
        "conn",
        "discarding",
        "done",
        "instance",
        "permit",
        "retried",
        "retries_left",
        "retry",
        "reused",
    )

    # The instance of the current try (set by `begin`, switched by a retry).
    instance: Instance

    def __init__(
        self,
        backend: Backend,
        retry: RetryPolicy | None,
        retries: int,
        instance: Instance | None = None,
    ) -> None:
        self.backend = backend
        # Forwarding knows its instance at once (one call less per request); a fetch `begin`s.
        if instance is not None:
            self.instance = instance
            self.permit = backend.permit
        else:
            self.permit = 0
        self.retry = retry
        self.retries_left = retries
        self.conn: UpstreamConnection | None = None
        self.reused = False  # this try's connection came from the pool
        self.retried = False  # this try was sent again on a fresh connection already
        self.discarding = False  # reading a retried status's body, to drop it
        self.done = False

    @property
    def wants_connection(self) -> bool:
        """A pool's question: does this attempt still wait for a connection?"""
        return not self.done and self.conn is None

    def begin(self, instance: Instance) -> None:
        """The first try goes to `instance` (picked by the backend's balancer just now)."""
        self.instance = instance
        self.permit = self.backend.permit

    # --- what the subclass says ----------------------------------------------------------------

    def can_retry_now(self) -> bool:
        """Whether a retry could still help (nothing relayed yet, time left)."""
        raise NotImplementedError

    def next_try(self, previous: Instance, error: UpstreamError) -> None:
        """Start the next try, on `self.instance` (just switched from `previous`)."""
        raise NotImplementedError

    def give_up(self, error: UpstreamError, *, account: bool = True) -> None:
        """No further try: end with `error` (`account=False`: the last try was reported)."""
        raise NotImplementedError

    def try_failed(self, instance: Instance, error: UpstreamError) -> None:
        """A try failed and is retried (reported to the balancer already); for metrics."""

    # --- the rules ----------------------------------------------------------------------------

    def may_retry(self) -> bool:
        """Whether one more try is allowed now; spends a token of the backend's budget."""
        return self.retries_left > 0 and self.can_retry_now() and self.backend.take_retry_token()

    def retries_status(self, status: int) -> bool:
        """A response with this status is to be dropped and retried (sets `discarding`)."""
        retry = self.retry
        self.discarding = retry is not None and status in retry.statuses and self.may_retry()
        return self.discarding

    def connect_failed(self, error: UpstreamError) -> None:
        retry = self.retry
        if retry is not None and retry.on_connect_error and self.may_retry():
            self.retry_elsewhere(error)
            return
        self.give_up(error)

    def recover(
        self, error: UpstreamError, partial: bool, *, replayable: bool, answered: bool
    ) -> bool:
        """A try's connection failed (`partial`: after some of its response's bytes;
        `replayable`: the request can be sent again as is; `answered`: a response head was
        taken): True when another try was started, False when the attempt fails with `error`."""
        if (
            error is CONNECTION_RESET
            and self.reused
            and not partial
            and not self.retried
            and replayable
        ):
            self.retried = True
            self.instance.pool.acquire(self, fresh=True)  # type: ignore[arg-type]
            return True
        if self.discarding:
            # The retried status's body was cut short: the retry is still due.
            self.retry_elsewhere(RETRIED_STATUS)
            return True
        retry = self.retry
        if (
            error is CONNECTION_RESET
            and not answered
            and retry is not None
            and retry.on_connect_error
            and self.may_retry()
        ):
            # The instance went away with the request (a restart, a crash): idempotent, so
            # trying elsewhere is safe even if it had started processing it.
            self.retry_elsewhere(error)
            return True
        return False

    def retry_elsewhere(self, error: UpstreamError) -> None:
        """Report the failed try, then start the next one on another instance if one admits."""
        self.retries_left -= 1
        self.discarding = False
        instance = self.instance
        backend = self.backend
        backend.failed(instance, self.permit, error.name)
        self.try_failed(instance, error)
        following = backend.pick_other(instance)
        if following is None:
            self.give_up(error, account=False)
            return
        self.instance = following
        self.permit = backend.permit
        self.reused = False
        self.retried = False
        self.next_try(instance, error)

    def account(self, ok: bool | None, reason: str) -> None:
        """Tell the balancer how the last try ended (None: no verdict on the instance)."""
        if ok is None:
            self.backend.finished(self.instance, self.permit)
        elif ok:
            self.backend.succeeded(self.instance, self.permit)
        else:
            self.backend.failed(self.instance, self.permit, reason)
