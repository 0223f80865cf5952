"""Domain events on JetStream: the envelope, the streams, publishing and consuming.

An event of type `auth.user.created` travels on subject `events.auth.user.created`, stored in the
producing service's stream `EVENTS_AUTH` (subjects `events.auth.>`). Delivery is at-least-once, so
`DurableConsumer` makes processing effectively-once: the event id is recorded in the consumer's
`processed_events` table in the same transaction as the handler's writes, and an event already
recorded is acknowledged without running the handler again. Failed events are retried with growing
delays, then moved to the dead-letter stream `DLQ` (subject `dlq.<durable>`) for an operator.

Services publish through the transactional outbox (`mosaic_kit.outbox`), which uses `publish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from opentelemetry import trace
from sqlalchemy import Column, DateTime, Index, MetaData, String, Table, delete, func
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from mosaic_kit import tracing
from mosaic_kit.db import Database, new_metadata
from mosaic_kit.logging import get_logger

__all__ = [
    "DLQ_STREAM",
    "DurableConsumer",
    "Event",
    "EventHandler",
    "MalformedEventError",
    "RecentEventsSubscription",
    "RejectEventError",
    "dlq_subject",
    "ensure_stream",
    "event_subject",
    "new_event",
    "processed_events_table",
    "publish",
    "stream_name",
    "subscribe_recent",
]

DLQ_STREAM = "DLQ"
EVENT_PREFIX = "events."
DLQ_PREFIX = "dlq."

# Dead-letter headers: why the event was given up on and where it came from.
DLQ_REASON = "Mosaic-Dlq-Reason"
DLQ_DELIVERIES = "Mosaic-Dlq-Deliveries"
DLQ_STREAM_HEADER = "Mosaic-Dlq-Stream"
DLQ_SEQUENCE = "Mosaic-Dlq-Sequence"
DLQ_SUBJECT = "Mosaic-Dlq-Subject"
DLQ_CONSUMER = "Mosaic-Dlq-Consumer"

_TYPE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)+$")
_log = get_logger("mosaic_kit.events")
_tracer = tracing.tracer("mosaic_kit.events")

EventHandler = Callable[[AsyncConnection, "Event"], Awaitable[None]]


class MalformedEventError(ValueError):
    """A message that is not an event envelope."""


class RejectEventError(Exception):
    """Raised by a handler for an event that can never succeed: it goes to the DLQ at once."""


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    occurred_at: datetime
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return event_subject(self.type)

    def to_dict(self) -> dict[str, Any]:
        occurred = self.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return {"id": self.id, "type": self.type, "occurredAt": occurred, "data": self.data}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, body: Any) -> Event:
        if not isinstance(body, dict):
            raise MalformedEventError("the event is not a JSON object")
        event_id, event_type = body.get("id"), body.get("type")
        occurred, data = body.get("occurredAt"), body.get("data")
        if not isinstance(event_id, str) or not event_id:
            raise MalformedEventError("the event has no id")
        if not isinstance(event_type, str) or not _TYPE.match(event_type):
            raise MalformedEventError("the event has no valid type")
        if not isinstance(data, dict):
            raise MalformedEventError("the event data is not an object")
        if not isinstance(occurred, str):
            raise MalformedEventError("the event has no occurredAt")
        try:
            occurred_at = datetime.fromisoformat(occurred)
        except ValueError as exc:
            raise MalformedEventError("occurredAt is not an ISO 8601 time") from exc
        if occurred_at.tzinfo is None:
            raise MalformedEventError("occurredAt has no time zone")
        return cls(id=event_id, type=event_type, occurred_at=occurred_at, data=data)

    @classmethod
    def from_json(cls, raw: bytes) -> Event:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedEventError("the event is not JSON") from exc
        return cls.from_dict(body)


def new_event(type: str, data: dict[str, Any]) -> Event:
    """An event of `type` (`<service>.<entity>.<what>`) that happens now."""
    if not _TYPE.match(type):
        raise ValueError(f"invalid event type {type!r}: expected lower-case dotted tokens")
    return Event(id=str(uuid.uuid4()), type=type, occurred_at=datetime.now(UTC), data=data)


def event_subject(event_type: str) -> str:
    return EVENT_PREFIX + event_type


def stream_name(service: str) -> str:
    return f"EVENTS_{service.upper()}"


def dlq_subject(durable: str) -> str:
    return DLQ_PREFIX + durable


async def ensure_stream(
    js: JetStreamContext,
    service: str,
    *,
    max_age: timedelta = timedelta(days=7),
    duplicate_window: timedelta = timedelta(minutes=2),
    dlq_max_age: timedelta = timedelta(days=30),
) -> None:
    """Create (or bring up to date) the service's event stream and the shared DLQ stream.

    Every replica calls this on start; creating an identical stream is a no-op for the server.
    """
    await _put_stream(
        js,
        StreamConfig(
            name=stream_name(service),
            description=f"Domain events published by {service}",
            subjects=[f"{EVENT_PREFIX}{service}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=max_age.total_seconds(),
            duplicate_window=duplicate_window.total_seconds(),
        ),
    )
    await _put_stream(
        js,
        StreamConfig(
            name=DLQ_STREAM,
            description="Events that consumers gave up on",
            subjects=[f"{DLQ_PREFIX}>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=dlq_max_age.total_seconds(),
            duplicate_window=duplicate_window.total_seconds(),
        ),
    )


async def _put_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        # 10058: the stream exists with another configuration (an older release of ours).
        if exc.err_code != 10058:
            raise
        await js.update_stream(config)


async def publish(
    js: JetStreamContext,
    event: Event,
    *,
    headers: dict[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the JetStream ack wait
) -> None:
    """Publish `event` and wait for JetStream to store it.

    `Nats-Msg-Id` is the event id, so the stream drops a re-publication within its duplicate
    window. Trace context comes from `headers` when given (the outbox stores the context of the
    request that wrote the event), otherwise from the current span.
    """
    all_headers = tracing.inject({})
    all_headers.update(headers or {})
    all_headers["Nats-Msg-Id"] = event.id
    await js.publish(event.subject, event.to_json(), timeout=timeout, headers=all_headers)


def processed_events_table(metadata: MetaData) -> Table:
    """Ids of the events each durable consumer has applied (its idempotency record)."""
    existing = metadata.tables.get("processed_events")
    if existing is not None:
        return existing
    return Table(
        "processed_events",
        metadata,
        Column("consumer", String(200), primary_key=True),
        Column("event_id", String(200), primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index("ix_processed_events_processed_at", "processed_at"),
    )


_processed = processed_events_table(new_metadata())


def _transient_db_error(exc: BaseException) -> bool:
    """The database connection failed (as opposed to a statement, which may fail every time)."""
    if isinstance(exc, sa_exc.DBAPIError):
        return exc.connection_invalidated
    # Refused connections surface unwrapped; a full pool is SQLAlchemy's own TimeoutError.
    return isinstance(exc, ConnectionError | sa_exc.TimeoutError)


def _header_value(text: str, limit: int = 512) -> str:
    # NATS header values are single lines.
    return " ".join(text.split())[:limit]


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
        self._log.debug("event_applied" if outcome else "event_duplicate", event_id=event.id)

    async def _apply(self, event: Event) -> bool | None:
        """True when applied now, False when applied before, None when stopped meanwhile."""
        pause = 0.5
        while True:
            try:
                async with self._db.transaction() as conn:
                    claimed = await conn.execute(
                        pg_insert(_processed)
                        .values(consumer=self.durable, event_id=event.id)
                        .on_conflict_do_nothing()
                        .returning(_processed.c.event_id)
                    )
                    if claimed.first() is None:
                        return False
                    await self._handler(conn, event)
                return True
            except Exception as exc:
                if not _transient_db_error(exc):
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
                    delete(_processed).where(
                        _processed.c.consumer == self.durable,
                        _processed.c.processed_at < func.now() - self._retention,
                    )
                )
        except Exception as exc:
            self._log.warning("processed_events_prune_failed", error=repr(exc))


class RecentEventsSubscription:
    """Live events (after a replay of recent ones) fed to a handler; see `subscribe_recent`."""

    def __init__(self) -> None:
        self._subs: list[JetStreamContext.PushSubscription] = []
        self._pending: dict[str, asyncio.Event] = {}

    async def wait_caught_up(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Whether the replay of past events reached the end of each stream within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                for done in self._pending.values():
                    await done.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()


async def subscribe_recent(
    js: JetStreamContext,
    subjects: Sequence[str],
    handler: Callable[[Event], Awaitable[None]],
    *,
    since: timedelta,
) -> RecentEventsSubscription:
    """Feed `handler` the events on `subjects` of the last `since`, then new ones as they come.

    For in-memory state rebuilt on each start (revocation sets, cache invalidation): ephemeral
    ordered consumers, no acknowledgements, no database; a failing handler is logged and skipped.
    Subjects may belong to several streams (one consumer per stream).
    """
    start = datetime.now(UTC) - since
    by_stream: dict[str, list[str]] = {}
    for subject in subjects:
        by_stream.setdefault(await js.find_stream_name_by_subject(subject), []).append(subject)

    result = RecentEventsSubscription()
    try:
        for stream, filters in by_stream.items():
            done = asyncio.Event()
            result._pending[stream] = done
            sub = await _follow(js, stream, filters, handler, start=start, done=done)
            result._subs.append(sub)
            info = await sub.consumer_info()
            if info.num_pending == 0 and (
                info.delivered is None or not info.delivered.consumer_seq
            ):
                done.set()
    except BaseException:
        await result.stop()
        raise
    return result


async def _follow(
    js: JetStreamContext,
    stream: str,
    filters: list[str],
    handler: Callable[[Event], Awaitable[None]],
    *,
    start: datetime,
    done: asyncio.Event,
) -> JetStreamContext.PushSubscription:
    async def on_message(msg: Msg) -> None:
        try:
            event = Event.from_json(msg.data)
        except MalformedEventError as exc:
            _log.warning("recent_event_malformed", subject=msg.subject, error=str(exc))
        else:
            context = tracing.extract(msg.headers)
            with _tracer.start_as_current_span(
                f"follow {event.type}", context=context, kind=trace.SpanKind.CONSUMER
            ):
                try:
                    await handler(event)
                except Exception as exc:
                    _log.exception("recent_event_failed", event_id=event.id, error=repr(exc))
        with contextlib.suppress(nats.errors.Error, ValueError, IndexError):
            if msg.metadata.num_pending == 0:
                done.set()

    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=start,
        filter_subjects=filters if len(filters) > 1 else None,
    )
    return await js.subscribe(
        filters[0],
        stream=stream,
        cb=on_message,
        ordered_consumer=True,
        config=config,
        deliver_policy=DeliverPolicy.BY_START_TIME,
    )
