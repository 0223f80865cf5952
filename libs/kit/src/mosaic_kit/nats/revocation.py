"""The revocation events followed from JetStream into a `mosaic_kit.revocation.RevocationSet`."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import nats.errors
from nats.js import JetStreamContext

from mosaic_kit.logging import get_logger
from mosaic_kit.nats.jetstream import RecentEventsSubscription, subscribe_recent
from mosaic_kit.revocation import REVOCATION_SUBJECTS, RevocationSet

_log = get_logger("mosaic_kit.revocation")

__all__ = ["RevocationFeed", "follow_revocations"]


class RevocationFeed:
    """Keeps a `RevocationSet` fed with auth's revocation events; see `follow_revocations`."""

    def __init__(
        self, js: JetStreamContext, revocations: RevocationSet, since: timedelta, retry: float
    ) -> None:
        self._js = js
        self._revocations = revocations
        self._since = since
        self._retry = retry
        self._subscription: RecentEventsSubscription | None = None
        self._subscribed = asyncio.Event()
        self._retrier: asyncio.Task[None] | None = None

    @property
    def following(self) -> bool:
        """Whether the subscription exists (False while auth's stream is not there yet)."""
        return self._subscription is not None

    async def _try_subscribe(self) -> bool:
        try:
            self._subscription = await subscribe_recent(
                self._js, REVOCATION_SUBJECTS, self._revocations.apply_event, since=self._since
            )
        except (nats.errors.Error, TimeoutError) as exc:
            # Typically auth has not created its stream yet (it starts after us); then there
            # is nothing to replay either, and subscribing once it exists misses no event.
            _log.warning("revocation_feed_retry", error=type(exc).__name__, retry_in=self._retry)
            return False
        self._subscribed.set()
        _log.info("revocation_feed_following", since_s=self._since.total_seconds())
        return True

    async def _retry_until_subscribed(self) -> None:
        while True:
            await asyncio.sleep(self._retry)
            if await self._try_subscribe():
                return

    async def wait_caught_up(self, timeout: float) -> bool:  # noqa: ASYNC109 - a deadline, not I/O
        """Whether the replay of past revocations finished within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                await self._subscribed.wait()
        except TimeoutError:
            return False
        assert self._subscription is not None
        return await self._subscription.wait_caught_up(max(0.0, deadline - loop.time()))

    async def stop(self) -> None:
        if self._retrier is not None:
            self._retrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrier
            self._retrier = None
        if self._subscription is not None:
            await self._subscription.stop()
            self._subscription = None


async def follow_revocations(
    js: JetStreamContext,
    revocations: RevocationSet,
    *,
    since: timedelta,
    retry_interval: float = 2.0,
) -> RevocationFeed:
    """Replay the revocation events of the last `since` into `revocations`, then follow live ones.

    `since` should be at least the access-token lifetime so that a restarted process again rejects
    every token revoked before it started. When the subscription cannot be made yet (auth's stream
    does not exist), this returns anyway and keeps retrying in the background: a service must not
    fail to start because auth is not up. Call `.stop()` on shutdown.
    """
    feed = RevocationFeed(js, revocations, since, retry_interval)
    if not await feed._try_subscribe():
        feed._retrier = asyncio.create_task(feed._retry_until_subscribed())
    return feed
