"""The outbox relay: committed outbox rows published to JetStream, in order, each once in effect.

`OutboxRelay` publishes unpublished rows (`mosaic_kit.sql.outbox`) in creation order, waits for
each JetStream acknowledgement and marks the rows published. Rows are claimed with
`FOR UPDATE SKIP LOCKED`, so every replica can run a relay; the event id travels as `Nats-Msg-Id`,
so a row published again after a crash (published, but not yet marked) is dropped by the stream's
duplicate window. While NATS is unreachable rows simply stay and are retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import timedelta
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from sqlalchemy import (
    delete,
    func,
    select,
    update,
)

from mosaic_kit import metrics
from mosaic_kit.events import Event
from mosaic_kit.logging import get_logger
from mosaic_kit.nats.jetstream import publish
from mosaic_kit.sql.db import Database, new_metadata
from mosaic_kit.sql.outbox import NOTIFY_CHANNEL, outbox_table

_outbox = outbox_table(new_metadata())


__all__ = ["OutboxRelay"]


_log = get_logger("mosaic_kit.outbox")

# The outbox's health for alerting: rows waiting mean events not yet seen by any consumer.
_PUBLISHED = metrics.counter(
    "outbox_published", "Outbox rows published to JetStream.", ("service",)
)
_FAILURES = metrics.counter(
    "outbox_publish_failures",
    "Relay rounds that stopped at a row it could not publish (NATS down, no stream...).",
    ("service",),
)
_BACKLOG = metrics.gauge(
    "outbox_backlog", "Outbox rows not yet published, counted after each relay round.", ("service",)
)
_OLDEST = metrics.gauge(
    "outbox_oldest_unpublished_seconds",
    "Age of the oldest unpublished outbox row after each relay round (0 when there is none).",
    ("service",),
)


class OutboxRelay:
    """Publishes the outbox of `db`'s schema to JetStream until stopped.

    `nats` is the connection or a JetStream context made from it.
    """

    def __init__(
        self,
        db: Database,
        nats: Client | JetStreamContext,
        *,
        service: str,
        poll_interval: float = 1.0,
        batch: int = 100,
        publish_timeout: float = 5.0,
        max_retry_delay: float = 30.0,
        retention: timedelta = timedelta(days=1),
        prune_interval: float = 600.0,
    ) -> None:
        self._db = db
        self._js = nats if isinstance(nats, JetStreamContext) else nats.jetstream()
        self.service = service
        self._poll_interval = poll_interval
        self._batch = batch
        self._publish_timeout = publish_timeout
        self._max_retry_delay = max_retry_delay
        self._retention = retention
        self._prune_interval = prune_interval
        self._wake = asyncio.Event()
        self._halt = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_prune = 0.0
        self._last_measure = float("-inf")
        self._log = _log.bind(outbox=db.schema, service=service)

    async def start(self) -> None:
        if self._tasks:
            return
        self._halt.clear()
        self._tasks = [
            asyncio.create_task(self._relay_loop(), name=f"outbox relay {self.service}"),
            asyncio.create_task(self._listen_loop(), name=f"outbox listen {self.service}"),
        ]

    async def stop(self) -> None:
        """Let the batch being published finish, then stop."""
        self._halt.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks[1:]:  # the listener holds nothing worth finishing
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def relay_once(self) -> int:
        """Publish one batch of unpublished rows, oldest first; return how many were published.

        Stops at the first failure (so that order is kept) after recording it on the row, and
        raises it once the rows published before it are marked.
        """
        published: list[str] = []
        failure: Exception | None = None
        async with self._db.transaction() as conn:
            rows = (
                await conn.execute(
                    select(_outbox.c.id, _outbox.c.payload, _outbox.c.headers)
                    .where(_outbox.c.published_at.is_(None))
                    .order_by(_outbox.c.seq)
                    .limit(self._batch)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in rows:
                try:
                    await self._publish(row.payload, row.headers)
                except Exception as exc:  # NATS down, no stream, a corrupt row: keep it, retry
                    failure = exc
                    await conn.execute(
                        update(_outbox)
                        .where(_outbox.c.id == row.id)
                        .values(attempts=_outbox.c.attempts + 1, last_error=repr(exc)[:1000])
                    )
                    break
                published.append(row.id)
            if published:
                await conn.execute(
                    update(_outbox)
                    .where(_outbox.c.id.in_(published))
                    .values(published_at=func.now())
                )
        _PUBLISHED.labels(self.service).inc(len(published))
        if failure is not None:
            _FAILURES.labels(self.service).inc()
            raise failure
        return len(published)

    async def measure_backlog(self) -> tuple[int, float]:
        """Count the unpublished rows and the oldest one's age in seconds; update the gauges."""
        async with self._db.transaction() as conn:
            row = (
                await conn.execute(
                    select(
                        func.count(),
                        func.coalesce(
                            func.extract("epoch", func.now() - func.min(_outbox.c.created_at)), 0
                        ),
                    ).where(_outbox.c.published_at.is_(None))
                )
            ).one()
        backlog, oldest = int(row[0]), float(row[1])
        _BACKLOG.labels(self.service).set(backlog)
        _OLDEST.labels(self.service).set(oldest)
        return backlog, oldest

    async def _publish(self, payload: Any, headers: Any) -> None:
        event = Event.from_dict(payload)
        stored = {str(k): str(v) for k, v in (headers or {}).items()}
        await publish(self._js, event, headers=stored, timeout=self._publish_timeout)

    async def prune(self) -> int:
        """Delete rows published longer ago than the retention; return how many."""
        async with self._db.transaction() as conn:
            result = await conn.execute(
                delete(_outbox).where(
                    _outbox.c.published_at.is_not(None),
                    _outbox.c.published_at < func.now() - self._retention,
                )
            )
        return int(result.rowcount or 0)

    async def _relay_loop(self) -> None:
        failures = 0
        while not self._halt.is_set():
            self._wake.clear()
            try:
                count = await self.relay_once()
            except Exception as exc:
                failures += 1
                pause = min(0.2 * 2**failures, self._max_retry_delay) * random.uniform(0.5, 1.0)
                self._log.warning("outbox_relay_failed", error=repr(exc), retry_in=round(pause, 2))
                # A failing relay is when the backlog grows: its gauges must keep up.
                await self._maybe_measure()
                # Not woken by new rows: a struggling NATS or database gets time to recover.
                await self._sleep(pause, wakeable=False)
                continue
            if failures:
                self._log.info("outbox_relay_recovered", after_failures=failures)
            failures = 0
            if count:
                self._log.debug("outbox_relayed", count=count)
            await self._maybe_measure()
            await self._maybe_prune()
            if count < self._batch:
                await self._sleep(self._poll_interval, wakeable=True)

    async def _sleep(self, seconds: float, *, wakeable: bool) -> None:
        waits = [asyncio.ensure_future(self._halt.wait())]
        if wakeable:
            waits.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _maybe_measure(self) -> None:
        # At most once per poll interval: a relay working through a backlog runs round after
        # round, and a count over the unpublished rows after each would grow with the backlog.
        now = asyncio.get_running_loop().time()
        if now - self._last_measure < self._poll_interval:
            return
        self._last_measure = now
        try:
            await self.measure_backlog()
        except Exception as exc:  # a metric must never stop the relay
            self._log.warning("outbox_backlog_unmeasured", error=repr(exc))

    async def _maybe_prune(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_prune < self._prune_interval:
            return
        self._last_prune = now
        try:
            pruned = await self.prune()
        except Exception as exc:
            self._log.warning("outbox_prune_failed", error=repr(exc))
            return
        if pruned:
            self._log.info("outbox_pruned", rows=pruned)

    async def _listen_loop(self) -> None:
        """Hold a connection LISTENing for new rows; polling covers the time it is down."""
        pause = 0.5
        while not self._halt.is_set():
            try:
                await self._listen()
                pause = 0.5
            except Exception as exc:
                self._log.warning("outbox_listen_failed", error=repr(exc), retry_in=pause)
            await self._sleep(pause, wakeable=False)
            pause = min(pause * 2, 30.0)

    async def _listen(self) -> None:
        schema = self._db.schema
        lost = asyncio.Event()

        def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            if payload == schema:
                self._wake.set()

        def on_terminated(_conn: object) -> None:
            lost.set()

        async with self._db.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            driver.add_termination_listener(on_terminated)
            await driver.add_listener(NOTIFY_CHANNEL, on_notify)
            try:
                self._wake.set()  # rows added while nobody listened
                await lost.wait()
                self._log.warning("outbox_listen_connection_lost")
            finally:
                driver.remove_termination_listener(on_terminated)
                if not lost.is_set():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(driver.remove_listener(NOTIFY_CHANNEL, on_notify))
