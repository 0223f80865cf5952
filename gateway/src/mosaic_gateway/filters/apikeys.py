"""API keys, verified by the auth service over NATS and remembered so requests rarely ask again.

The request path calls `peek(key)`: a SHA-256 of the key and a dict lookup. Only when the answer
is not cached does it await `verify(key)`, which asks auth (`auth.apikeys.verify`); concurrent
misses of the same key share one request. Answers are cached by the key's SHA-256, never by the
key, and no log line carries the key (at most the first hex digits of its hash).

* Accepted keys are cached `ttl` seconds -- but only while the revocation feed is following
  auth's `auth.apikey.revoked` events, which drop every cached entry of the revoked key id as
  soon as the event arrives (well within a second). Without the feed (auth's stream is not there
  yet) every request asks auth, so a revocation is never missed.
* Refused keys (auth's 4xx) are cached `negative_ttl` seconds: a client retrying a bad key, or
  random keys, cost auth one request per key and period.
* When auth cannot be reached (no responder, timeout, a 5xx) the answer is `ApiKeyUnavailable`
  (503) and nothing is cached: the gateway fails closed, and recovers on the next request.

Errors carry the `GatewayProblem` the data path sends: missing key 401, refused key 403, auth
unreachable 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from mosaic_gateway.http.problems import GatewayProblem
from mosaic_kit.events import Event
from mosaic_kit.logging import get_logger
from mosaic_kit.nats.jetstream import RecentEventsSubscription, subscribe_recent
from mosaic_kit.nats.rpc import RpcError, request

__all__ = [
    "API_KEY_HEADER",
    "REVOKED_SUBJECT",
    "VERIFY_SUBJECT",
    "ApiKeyError",
    "ApiKeyIdentity",
    "ApiKeyInvalid",
    "ApiKeyMissing",
    "ApiKeyUnavailable",
    "ApiKeyVerifier",
]

_log = get_logger("mosaic_gateway.filters.apikeys")

API_KEY_HEADER = b"x-api-key"
VERIFY_SUBJECT = "auth.apikeys.verify"
REVOKED_SUBJECT = "events.auth.apikey.revoked"
# Far longer than any key auth issues; bounds the work (hashing, a request) a junk header costs.
MAX_KEY_LENGTH = 512
_LOG_EVERY = 10.0


@dataclass(frozen=True, slots=True)
class ApiKeyIdentity:
    """The client application a key belongs to, as auth answered."""

    id: str
    name: str


class ApiKeyError(Exception):
    """A request cannot proceed with the key it carries; `problem` is the answer to send."""

    problem: GatewayProblem

    def __init__(self) -> None:
        super().__init__(self.problem.detail)


class ApiKeyMissing(ApiKeyError):  # noqa: N818 - reads as a state, like the problem codes
    problem = GatewayProblem(401, "auth.apikey_missing", "An API key (x-api-key) is required")


class ApiKeyInvalid(ApiKeyError):  # noqa: N818
    problem = GatewayProblem(403, "auth.apikey_invalid", "The API key is not valid")


class ApiKeyUnavailable(ApiKeyError):  # noqa: N818
    problem = GatewayProblem(
        503, "gateway.apikey_unavailable", "API keys cannot be verified right now"
    )


_sha256 = hashlib.sha256


def _digest(key: str | bytes) -> bytes:
    return _sha256(key if key.__class__ is bytes else key.encode()).digest()  # type: ignore[union-attr]


def _hint(digest: bytes) -> str:
    """Enough of the hash to correlate log lines; nothing that helps guess the key."""
    return digest[:4].hex()


class ApiKeyVerifier:
    """Verifies API keys through auth, with the caches described in the module docstring.

    `start()` begins following revocations (call it once the NATS connection is up) and `stop()`
    ends it. `max_entries` bounds each cache (accepted, refused); the entry stored longest ago
    goes first. A hit does not reorder (that would cost every request), but an accepted key in
    use is stored again at least once per `ttl`, which keeps this close to least-recently-used.
    Refused keys have their own bound, so a flood of random keys cannot push the real clients'
    keys out.
    """

    def __init__(
        self,
        nc: Client,
        *,
        ttl: float = 300.0,
        negative_ttl: float = 10.0,
        max_entries: int = 10_000,
        timeout: float = 2.0,
        subject: str = VERIFY_SUBJECT,
        retry_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or negative_ttl < 0 or max_entries < 1 or timeout <= 0:
            raise ValueError(
                "ttl and timeout must be positive, negative_ttl >= 0, max_entries >= 1"
            )
        self._nc = nc
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._timeout = timeout
        self._subject = subject
        self._retry_interval = retry_interval
        self._clock = clock
        # digest -> (identity, expires at); digest -> expires at. Oldest stored first.
        self._accepted: OrderedDict[bytes, tuple[ApiKeyIdentity, float]] = OrderedDict()
        self._refused: OrderedDict[bytes, float] = OrderedDict()
        self._digests_by_id: dict[str, set[bytes]] = {}
        # Key ids revoked lately -> when: an answer from auth that was already on its way when
        # the revocation arrived must not put the key back in the cache.
        self._revoked: dict[str, float] = {}
        self._in_flight: dict[bytes, asyncio.Task[ApiKeyIdentity]] = {}
        self._subscription: RecentEventsSubscription | None = None
        self._retrier: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._last_warning = -_LOG_EVERY
        # Plain counters, cheap on the hot path, for metrics and tests.
        self.hits = 0
        self.misses = 0
        self.requests = 0

    @property
    def following(self) -> bool:
        """Whether revocations are being followed (and so accepted keys are cached)."""
        return self._subscription is not None

    @property
    def cached(self) -> int:
        return len(self._accepted) + len(self._refused)

    # --- the request path -------------------------------------------------------------------

    def peek(self, key: str | bytes | None) -> ApiKeyIdentity | None:
        """The identity of `key` if a cached answer accepts it; None if auth must be asked.

        Raises `ApiKeyMissing` for no key and `ApiKeyInvalid` when the key is known to be bad,
        so the request path stays synchronous whenever the answer is known.
        """
        if not key:
            raise ApiKeyMissing
        if len(key) > MAX_KEY_LENGTH:
            raise ApiKeyInvalid
        # Inlined `_digest`: this runs for every request of every API-key route.
        digest = _sha256(key if key.__class__ is bytes else key.encode()).digest()  # type: ignore[union-attr]
        hit = self._accepted.get(digest)
        if hit is not None:
            if hit[1] > self._clock():
                self.hits += 1
                return hit[0]
            self._forget_accepted(digest, hit[0].id)
        refused = self._refused.get(digest)
        if refused is not None:
            if refused > self._clock():
                self.hits += 1
                raise ApiKeyInvalid
            del self._refused[digest]
        return None

    async def verify(self, key: str | bytes | None) -> ApiKeyIdentity:
        """The identity of `key`, asking auth when the answer is not cached.

        Raises `ApiKeyMissing`, `ApiKeyInvalid` or `ApiKeyUnavailable`.
        """
        identity = self.peek(key)
        if identity is not None:
            return identity
        assert key  # peek raised otherwise
        if isinstance(key, bytes):
            try:
                text = key.decode("ascii")
            except UnicodeDecodeError:
                raise ApiKeyInvalid from None
        else:
            text = key
        digest = _digest(key)
        task = self._in_flight.get(digest)
        if task is None:
            self.misses += 1
            task = asyncio.create_task(self._ask(digest, text))
            self._in_flight[digest] = task
            task.add_done_callback(lambda done: self._landed(digest, done))
        # Shielded: one caller giving up (its client left) must not fail the others.
        return await asyncio.shield(task)

    def _landed(self, digest: bytes, task: asyncio.Task[ApiKeyIdentity]) -> None:
        if self._in_flight.get(digest) is task:
            del self._in_flight[digest]
        if not task.cancelled():
            task.exception()  # retrieved, in case every waiter was cancelled

    async def _ask(self, digest: bytes, key: str) -> ApiKeyIdentity:
        self.requests += 1
        try:
            data = await request(self._nc, self._subject, {"key": key}, timeout=self._timeout)
        except RpcError as exc:
            if 400 <= exc.status < 500 and exc.status != 429:
                _log.debug("apikey_refused", key_hash=_hint(digest), code=exc.code)
                self._remember_refused(digest)
                raise ApiKeyInvalid from None
            self._warn_unavailable(exc.code)
            raise ApiKeyUnavailable from None
        except (nats.errors.Error, OSError) as exc:
            self._warn_unavailable(type(exc).__name__)
            raise ApiKeyUnavailable from None
        identity = _identity(data)
        if identity is None:
            self._warn_unavailable("bad_reply")
            raise ApiKeyUnavailable
        if identity.id in self._revoked:
            # Auth answered before it revoked the key, and the event overtook the reply.
            self._remember_refused(digest)
            raise ApiKeyInvalid
        if self.following:
            self._remember_accepted(digest, identity)
        return identity

    # --- the caches -------------------------------------------------------------------------

    def _remember_accepted(self, digest: bytes, identity: ApiKeyIdentity) -> None:
        accepted = self._accepted
        accepted[digest] = (identity, self._clock() + self.ttl)
        accepted.move_to_end(digest)
        self._digests_by_id.setdefault(identity.id, set()).add(digest)
        self._refused.pop(digest, None)
        if len(accepted) > self._max_entries:
            oldest, (old_identity, _) = accepted.popitem(last=False)
            self._unindex(oldest, old_identity.id)

    def _remember_refused(self, digest: bytes) -> None:
        if self.negative_ttl <= 0:
            return
        refused = self._refused
        refused[digest] = self._clock() + self.negative_ttl
        refused.move_to_end(digest)
        if len(refused) > self._max_entries:
            refused.popitem(last=False)

    def _forget_accepted(self, digest: bytes, key_id: str) -> None:
        del self._accepted[digest]
        self._unindex(digest, key_id)

    def _unindex(self, digest: bytes, key_id: str) -> None:
        digests = self._digests_by_id.get(key_id)
        if digests is not None:
            digests.discard(digest)
            if not digests:
                del self._digests_by_id[key_id]

    def revoke(self, key_id: str) -> int:
        """Forget every cached acceptance of `key_id`; returns how many entries were dropped."""
        now = self._clock()
        # Kept only as long as a reply sent before the revocation could still arrive.
        horizon = now - 2 * self._timeout
        for stale in [k for k, at in self._revoked.items() if at < horizon]:
            del self._revoked[stale]
        self._revoked[key_id] = now
        digests = self._digests_by_id.pop(key_id, set())
        for digest in digests:
            self._accepted.pop(digest, None)
            self._remember_refused(digest)
        return len(digests)

    def clear(self) -> None:
        self._accepted.clear()
        self._refused.clear()
        self._digests_by_id.clear()

    # --- following revocations --------------------------------------------------------------

    async def start(self, js: JetStreamContext | None = None) -> None:
        """Follow `auth.apikey.revoked`, replaying the last `ttl` (and a minute) of them.

        When auth's stream does not exist yet this returns anyway and keeps trying in the
        background; until then accepted keys are not cached.
        """
        if self._subscription is not None or self._retrier is not None:
            return
        stream = js if js is not None else self._nc.jetstream()
        if not await self._try_subscribe(stream):
            self._retrier = asyncio.create_task(self._retry_until_subscribed(stream))

    async def wait_following(self, timeout: float) -> bool:  # noqa: ASYNC109 - a deadline
        """Whether the feed is following, its replay done, within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                await self._subscribed.wait()
        except TimeoutError:
            return False
        assert self._subscription is not None
        return await self._subscription.wait_caught_up(max(0.0, deadline - loop.time()))

    async def _try_subscribe(self, js: JetStreamContext) -> bool:
        since = timedelta(seconds=self.ttl + 60)
        try:
            self._subscription = await subscribe_recent(
                js, [REVOKED_SUBJECT], self._on_revoked, since=since
            )
        except (nats.errors.Error, TimeoutError) as exc:
            # Typically auth has not created its stream yet: nothing to replay, and nothing
            # accepted gets cached meanwhile.
            _log.warning(
                "apikey_revocations_retry", error=type(exc).__name__, retry_in=self._retry_interval
            )
            return False
        self._subscribed.set()
        _log.info("apikey_revocations_following", since_s=since.total_seconds())
        return True

    async def _retry_until_subscribed(self, js: JetStreamContext) -> None:
        while True:
            await asyncio.sleep(self._retry_interval)
            if await self._try_subscribe(js):
                self._retrier = None
                return

    async def _on_revoked(self, event: Event) -> None:
        key_id = event.data.get("id")
        if not isinstance(key_id, str) or not key_id:
            _log.warning("apikey_revocation_malformed", event_id=event.id)
            return
        dropped = self.revoke(key_id)
        _log.info("apikey_revoked", key_id=key_id, dropped=dropped)

    async def stop(self) -> None:
        if self._retrier is not None:
            self._retrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrier
            self._retrier = None
        if self._subscription is not None:
            await self._subscription.stop()
            self._subscription = None
            self._subscribed.clear()
        # Without the feed, cached acceptances could outlive a revocation.
        self._accepted.clear()
        self._digests_by_id.clear()
        for task in list(self._in_flight.values()):
            task.cancel()

    def _warn_unavailable(self, reason: str) -> None:
        now = self._clock()
        if now - self._last_warning >= _LOG_EVERY:
            self._last_warning = now
            _log.warning("apikey_auth_unavailable", reason=reason, subject=self._subject)


def _identity(data: Any) -> ApiKeyIdentity | None:
    if not isinstance(data, dict):
        return None
    key_id, name = data.get("id"), data.get("name")
    if not isinstance(key_id, str) or not key_id or not isinstance(name, str):
        return None
    return ApiKeyIdentity(key_id, name)
