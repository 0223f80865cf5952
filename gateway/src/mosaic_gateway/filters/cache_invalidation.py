"""Dropping cached responses on domain events, and building a runtime's caches.

Every pattern a route lists in `cache.invalidate_on` becomes one core NATS subscription to
`events.<pattern>` (the subject an event of that type travels on; JetStream publications reach
plain subscribers too), in every worker. A message drops the whole partition of each route that
listed the pattern: simple, and correct whatever the event's payload says.

Core NATS delivers only while connected, so events published while the connection is down are
lost to the gateway. A watcher checks the connection twice a second: while it is down, the
routes with `invalidate_on` bypass their cache (nothing is read or stored that an event could
have invalidated); once it is back (or after a reconnection the watcher did not see as a
disconnection) their partitions are dropped and the cache is used again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from mosaic_gateway.config import GatewayConfig
from mosaic_gateway.filters.cache import CacheStore, RouteCache
from mosaic_gateway.filters.context import WorkerContext
from mosaic_kit.events import event_subject
from mosaic_kit.logging import get_logger

__all__ = ["CacheInvalidation", "build_caches"]

_log = get_logger("mosaic_gateway.filters.cache")

_WATCH_EVERY = 0.5
_FLUSH_TIMEOUT = 2.0


class CacheInvalidation:
    """A runtime component: the event subscriptions and the connection watcher."""

    def __init__(
        self,
        nc: Client,
        loop: asyncio.AbstractEventLoop,
        by_pattern: dict[str, list[RouteCache]],
    ) -> None:
        self.nc = nc
        self.loop = loop
        self.by_pattern = by_pattern
        self.partitions = list({id(p): p for ps in by_pattern.values() for p in ps}.values())
        self._subs: list[Subscription] = []
        self._timer: asyncio.TimerHandle | None = None
        self._up = True
        self._reconnects = 0

    async def start(self) -> None:
        for pattern, partitions in self.by_pattern.items():
            sub = await self.nc.subscribe(
                event_subject(pattern), cb=self._on_event(pattern, partitions)
            )
            self._subs.append(sub)
        try:
            # The server knows about the interest before the first request is served.
            await self.nc.flush(timeout=_FLUSH_TIMEOUT)  # type: ignore[arg-type]
        except (nats.errors.Error, TimeoutError) as exc:
            _log.warning("cache_subscriptions_unconfirmed", error=repr(exc))
        self._reconnects = self.nc.stats["reconnects"]
        self._watch()
        _log.info("cache_invalidation_started", patterns=sorted(self.by_pattern))

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    def _on_event(
        self, pattern: str, partitions: list[RouteCache]
    ) -> Callable[[Msg], Awaitable[None]]:
        async def on_event(msg: Msg) -> None:
            dropped = 0
            for partition in partitions:
                dropped += partition.drop()
            _log.debug(
                "cache_invalidated",
                subject=msg.subject,
                pattern=pattern,
                routes=[partition.name for partition in partitions],
                entries=dropped,
            )

        return on_event

    def _watch(self) -> None:
        nc = self.nc
        reconnects = nc.stats["reconnects"]
        if not nc.is_connected:
            if self._up:
                self._up = False
                _log.warning("cache_suspended", reason="nats_disconnected")
                for partition in self.partitions:
                    partition.live = False
                    partition.drop()
        elif not self._up or reconnects != self._reconnects:
            # Events published while disconnected were not seen: start over.
            for partition in self.partitions:
                partition.drop()
                partition.live = True
            if not self._up:
                _log.info("cache_resumed")
            self._up = True
        self._reconnects = reconnects
        self._timer = self.loop.call_later(_WATCH_EVERY, self._watch)


def build_caches(
    config: GatewayConfig, context: WorkerContext
) -> tuple[list[RouteCache | None], CacheInvalidation | None]:
    """Each route's cache (None for a route without one, in route order), and the component
    that invalidates them (None when no route listens to events)."""
    routes = config.routes
    if all(route.cache is None for route in routes):
        return [None] * len(routes), None
    store = CacheStore.from_config(config.cache, context.loop.time)
    caches: list[RouteCache | None] = []
    by_pattern: dict[str, list[RouteCache]] = {}
    for index, route in enumerate(routes):
        spec = route.cache
        if spec is None:
            caches.append(None)
            continue
        cache = RouteCache.from_config(store, spec, name=route.path, index=index)
        caches.append(cache)
        for pattern in spec.invalidate_on:
            by_pattern.setdefault(pattern, []).append(cache)
    if not by_pattern:
        return caches, None
    return caches, CacheInvalidation(context.nats, context.loop, by_pattern)
