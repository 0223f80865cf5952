"""Durable JetStream consumers that apply each event effectively once, in a PostgreSQL transaction.

Delivery is at-least-once, so `DurableConsumer` records the event id in the consumer's
`processed_events` table (`mosaic_kit.sql.processed`) in the same transaction as the handler's
writes, and acknowledges an event already recorded without running the handler again. Failed
events are retried with growing delays, then moved to the dead-letter stream `DLQ` (subject
`dlq.<durable>`) for an operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
)
from opentelemetry import trace
from sqlalchemy import delete, func
from sqlalchemy.ext.asyncio import AsyncConnection

from mosaic_kit import metrics, tracing
from mosaic_kit.events import (
    DLQ_CONSUMER,
    DLQ_DELIVERIES,
    DLQ_REASON,
    DLQ_SEQUENCE,
    DLQ_STREAM_HEADER,
    DLQ_SUBJECT,
    Event,
    MalformedEventError,
    RejectEventError,
    dlq_subject,
)
from mosaic_kit.logging import get_logger
from mosaic_kit.sql.db import Database, new_metadata
from mosaic_kit.sql.outages import connection_lost
from mosaic_kit.sql.processed import claim, processed_events_table

_processed_table = processed_events_table(new_metadata())

__all__ = ["DurableConsumer", "EventHandler"]


_log = get_logger("mosaic_kit.events")


_tracer = tracing.tracer("mosaic_kit.events")


EventHandler = Callable[[AsyncConnection, "Event"], Awaitable[None]]


def _header_value(text: str, limit: int = 512) -> str:
    # NATS header values are single lines.
    return " ".join(text.split())[:limit]


# What an operator alerts on (deploy/observability/prometheus/alerts.yaml): a consumer falling
# behind its stream, and events it gave up on. Labelled by durable name only: a bounded set.
_EVENTS = metrics.counter(
    "consumer_events",
    "Events a durable consumer handled, by outcome: applied, duplicate (applied before), "
    "retried (failed, redelivered later) or dead_lettered.",
    ("consumer", "outcome"),
)
_PENDING = metrics.gauge(
    "consumer_pending",
    "Messages of its stream a durable consumer has not been delivered yet (JetStream's "
    "num_pending), as of its last fetch.",
    ("consumer",),
)


class DurableConsumer:
    """A pull consumer that applies each event once, in a transaction, then acknowledges it.

    For each message: in one transaction the event id is inserted into `processed_events`; if it
    was already there the handler is skipped, otherwise `handler(conn, event)` runs on the same
    connection; after the commit the message is acknowledged. A handler error rolls everything back
    and the message is redelivered after `backoff[n-1]` seconds (the last value repeating); on the
    `max_deliver`-th failed attempt, or at once for a malformed message or `RejectEventError`, the
    original is published to `dlq.<durable>` and terminated. Losing the database connection does
    not count as an attempt: the message is held (with in-progress acks) until it comes back.

    `ack_wait` is how long the server waits before redelivering a message whose consumer vanished.
    `after_commit(event)`, if given, runs once the handler's transaction has committed (for side
    effects outside the database, such as cache invalidation); its failure is logged, not retried.
    """

    def __init__(
        self,
        js: JetStreamContext,
        db: Database,
        *,
        stream: str,
        durable: str,
        filter_subjects: Sequence[str],
        handler: EventHandler,
        max_deliver: int = 5,
        backoff: Sequence[float] = (1, 5, 30, 120),
        batch: int = 10,
        ack_wait: float = 30.0,
        fetch_wait: float = 5.0,
        processed_retention: timedelta = timedelta(days=30),
        after_commit: Callable[[Event], Awaitable[None]] | None = None,
    ) -> None:
        if max_deliver < 1 or not backoff or batch < 1:
            raise ValueError("max_deliver and batch must be positive and backoff non-empty")
        self._js = js
        self._db = db
        self.stream = stream
        self.durable = durable
        self._filters = list(filter_subjects)
        self._handler = handler
        self._after_commit = after_commit
        self._max_deliver = max_deliver
        self._backoff = tuple(float(b) for b in backoff)
        self._batch = batch
        self._ack_wait = ack_wait
        self._fetch_wait = fetch_wait
        self._retention = processed_retention
        self._sub: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._halt = asyncio.Event()
        self._idle = False
        self._failures = 0
        self._last_prune = 0.0
        self._log = _log.bind(consumer=durable, stream=stream)

    async def start(self) -> None:
        """Create or update the durable consumer on the server and start processing.

        When the stream does not exist yet (its producer has not started) or NATS is
        unreachable, this logs and keeps trying in the background rather than failing: a
        consumer must not keep its service from starting. Other errors (an invalid
        configuration) are raised.
        """
        if self._task is not None:
            return
        self._halt.clear()
        try:
            await self._bind()
        except nats.js.errors.APIError as exc:
            if not isinstance(exc, nats.js.errors.NotFoundError):
                raise
            self._log.warning("consumer_stream_missing", error=repr(exc))
        except (nats.errors.Error, OSError) as exc:
            self._log.warning("consumer_not_bound_yet", error=repr(exc))
        self._task = asyncio.create_task(self._run(), name=f"consumer {self.durable}")
        self._log.info("consumer_started", subjects=self._filters, bound=self._sub is not None)

    async def _bind(self) -> None:
        config = ConsumerConfig(
            durable_name=self.durable,
            name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait,
            # Unlimited on the server: attempts are counted here so that nothing is ever
            # silently dropped; past `max_deliver` a message goes to the DLQ.
            max_deliver=-1,
            max_ack_pending=max(self._batch * 10, 100),
        )
        if len(self._filters) == 1:
            config.filter_subject = self._filters[0]
        else:
            config.filter_subjects = self._filters
        await self._js.add_consumer(self.stream, config)
        self._sub = await self._js.pull_subscribe_bind(durable=self.durable, stream=self.stream)

    async def stop(self) -> None:
        """Finish the message in hand, hand back the rest of the batch, stop fetching."""
        self._halt.set()
        task, self._task = self._task, None
        if task is not None:
            if self._idle:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error, ValueError):
                await sub.unsubscribe()
        self._log.info("consumer_stopped")

    async def _run(self) -> None:
        while not self._halt.is_set():
            await self._maybe_prune()
            messages = await self._fetch()
            for index, msg in enumerate(messages):
                if self._halt.is_set():
                    await self._release(messages[index:])
                    return
                try:
                    await self._process(msg)
                except Exception as exc:
                    # A bug here must not end consumption; the message comes back after ack_wait.
                    self._log.exception("consumer_error", error=repr(exc))
                    await asyncio.sleep(1.0)

    async def _fetch(self) -> list[Msg]:
        # The only place `stop()` may cancel: no message is in hand here.
        self._idle = True
        try:
            if self._sub is None:
                await self._bind()
                self._log.info("consumer_bound")
            assert self._sub is not None
            messages = await self._sub.fetch(self._batch, timeout=self._fetch_wait)
        except TimeoutError:  # nothing to do; nats.errors.TimeoutError is one too
            self._failures = 0
            _PENDING.labels(self.durable).set(0)
            return []
        except (nats.errors.Error, OSError) as exc:
            self._failures += 1
            pause = min(0.2 * 2**self._failures, 10.0) * random.uniform(0.5, 1.0)
            self._log.warning("consumer_fetch_failed", error=repr(exc), retry_in=round(pause, 2))
            await asyncio.sleep(pause)
            return []
        finally:
            self._idle = False
        self._failures = 0
        return messages

    async def _release(self, messages: Sequence[Msg]) -> None:
        for msg in messages:
            with contextlib.suppress(nats.errors.Error, OSError):
                await msg.nak()

    async def _process(self, msg: Msg) -> None:
        try:
            deliveries = msg.metadata.num_delivered or 1
            _PENDING.labels(self.durable).set(msg.metadata.num_pending or 0)
        except (nats.errors.Error, ValueError, IndexError):
            deliveries = 1
        try:
            event = Event.from_json(msg.data)
        except MalformedEventError as exc:
            await self._dead_letter(msg, f"malformed event: {exc}", deliveries)
            return
        if deliveries > self._max_deliver:
            # Earlier attempts died with their process or their DLQ publish failed.
            await self._dead_letter(msg, "too many deliveries", deliveries)
            return
        context = tracing.extract(msg.headers)
        with _tracer.start_as_current_span(
            f"consume {event.type}", context=context, kind=trace.SpanKind.CONSUMER
        ) as span:
            span.set_attribute("messaging.system", "nats")
            span.set_attribute("messaging.consumer.group.name", self.durable)
            span.set_attribute("messaging.message.id", event.id)
            keepalive = asyncio.create_task(self._keep_alive(msg))
            try:
                outcome = await self._apply(event)
            except RejectEventError as exc:
                await self._dead_letter(msg, f"rejected: {exc}", deliveries)
                return
            except Exception as exc:
                span.set_status(trace.StatusCode.ERROR)
                await self._failed(msg, event, exc, deliveries)
                return
            finally:
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keepalive
        if outcome is None:  # stopping while the database was unreachable
            await self._release([msg])
            return
        if outcome and self._after_commit is not None:
            try:
                await self._after_commit(event)
            except Exception as exc:
                # The effect is committed and must not be applied again: log, do not retry.
                self._log.error("after_commit_failed", event_id=event.id, error=repr(exc))
        await self._ack(msg)
        _EVENTS.labels(self.durable, "applied" if outcome else "duplicate").inc()
        self._log.debug("event_applied" if outcome else "event_duplicate", event_id=event.id)

    async def _apply(self, event: Event) -> bool | None:
        """True when applied now, False when applied before, None when stopped meanwhile."""
        pause = 0.5
        while True:
            try:
                async with self._db.transaction() as conn:
                    if not await claim(conn, self.durable, event.id):
                        return False
                    await self._handler(conn, event)
                return True
            except Exception as exc:
                if not connection_lost(exc):
                    raise
                if self._halt.is_set():
                    return None
                self._log.warning("consumer_db_unavailable", error=repr(exc), retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)

    async def _keep_alive(self, msg: Msg) -> None:
        # Long handlers (or a database outage) must not make the server redeliver meanwhile.
        while True:
            await asyncio.sleep(self._ack_wait / 3)
            with contextlib.suppress(nats.errors.Error, OSError):
                await msg.in_progress()

    async def _ack(self, msg: Msg) -> None:
        try:
            await msg.ack()
        except (nats.errors.Error, OSError) as exc:
            # Redelivered later and then skipped: the event id is already recorded.
            self._log.warning("consumer_ack_failed", error=repr(exc))

    async def _failed(self, msg: Msg, event: Event, exc: Exception, deliveries: int) -> None:
        if deliveries >= self._max_deliver:
            self._log.error(
                "event_failed_giving_up",
                event_id=event.id,
                event_type=event.type,
                deliveries=deliveries,
                error=repr(exc),
                exc_info=exc,
            )
            await self._dead_letter(msg, f"{type(exc).__name__}: {exc}", deliveries)
            return
        delay = self._backoff[min(deliveries, len(self._backoff)) - 1]
        self._log.warning(
            "event_failed_retrying",
            event_id=event.id,
            event_type=event.type,
            deliveries=deliveries,
            retry_in=delay,
            error=repr(exc),
        )
        _EVENTS.labels(self.durable, "retried").inc()
        with contextlib.suppress(nats.errors.Error, OSError):
            await msg.nak(delay=delay)

    async def _dead_letter(self, msg: Msg, reason: str, deliveries: int) -> None:
        headers = dict(msg.headers or {})
        try:
            meta = msg.metadata
            origin, sequence = meta.stream, str(meta.sequence.stream)
        except (nats.errors.Error, ValueError, IndexError):
            origin, sequence = self.stream, f"unknown-{uuid.uuid4()}"
        headers.update(
            {
                DLQ_REASON: _header_value(reason),
                DLQ_DELIVERIES: str(deliveries),
                DLQ_STREAM_HEADER: origin,
                DLQ_SEQUENCE: sequence,
                DLQ_SUBJECT: msg.subject,
                DLQ_CONSUMER: self.durable,
                # One dead letter per message and consumer, however often this is retried.
                "Nats-Msg-Id": f"{self.durable}:{origin}:{sequence}",
            }
        )
        try:
            await self._js.publish(dlq_subject(self.durable), msg.data, headers=headers)
        except (nats.errors.Error, OSError) as exc:
            self._log.error("dead_letter_failed", error=repr(exc))
            with contextlib.suppress(nats.errors.Error, OSError):
                await msg.nak(delay=self._backoff[-1])
            return
        _EVENTS.labels(self.durable, "dead_lettered").inc()
        self._log.error("event_dead_lettered", reason=reason, deliveries=deliveries)
        with contextlib.suppress(nats.errors.Error, OSError):
            await msg.term()

    async def _maybe_prune(self) -> None:
        # Redeliveries and outbox re-publications arrive within minutes or days; ids older than
        # the retention (longer than any stream keeps events) cannot come back.
        now = asyncio.get_running_loop().time()
        if now - self._last_prune < 3600:
            return
        self._last_prune = now
        try:
            async with self._db.transaction() as conn:
                await conn.execute(
                    delete(_processed_table).where(
                        _processed_table.c.consumer == self.durable,
                        _processed_table.c.processed_at < func.now() - self._retention,
                    )
                )
        except Exception as exc:
            self._log.warning("processed_events_prune_failed", error=repr(exc))
