"""JetStream for events: the streams, publishing, and ephemeral "recent events" subscriptions.

`ensure_stream` creates a service's event stream and the shared DLQ stream; `publish` stores one
event (its id as `Nats-Msg-Id`, so a re-publication within the duplicate window is dropped);
`subscribe_recent` replays the recent events on some subjects, then follows new ones, for state
kept in memory and rebuilt on each start (revocations, API keys, cache invalidation).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from opentelemetry import trace

from mosaic_kit import tracing
from mosaic_kit.events import (
    DLQ_PREFIX,
    DLQ_STREAM,
    EVENT_PREFIX,
    Event,
    MalformedEventError,
    stream_name,
)
from mosaic_kit.logging import get_logger

__all__ = ["RecentEventsSubscription", "ensure_stream", "publish", "subscribe_recent"]


_log = get_logger("mosaic_kit.events")


_tracer = tracing.tracer("mosaic_kit.events")


async def ensure_stream(
    js: JetStreamContext,
    service: str,
    *,
    max_age: timedelta = timedelta(days=7),
    duplicate_window: timedelta = timedelta(minutes=2),
    dlq_max_age: timedelta = timedelta(days=30),
    replicas: int = 1,
) -> None:
    """Create (or bring up to date) the service's event stream and the shared DLQ stream.

    Every replica calls this on start; creating an identical stream is a no-op for the server.
    `replicas` is how many servers of a JetStream cluster keep each stream (the service's
    `nats_stream_replicas` setting); 3 survives the loss of one.
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
            num_replicas=replicas,
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
            num_replicas=replicas,
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
