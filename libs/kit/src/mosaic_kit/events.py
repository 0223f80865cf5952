"""Domain events as data: the envelope, its types and where each travels; no broker client here.

An event of type `auth.user.created` travels on subject `events.auth.user.created`, stored in the
producing service's stream `EVENTS_AUTH` (subjects `events.auth.>`); events a consumer gave up on
go to the dead-letter stream `DLQ` (subject `dlq.<durable>`) with the `Mosaic-Dlq-*` headers.
Publishing and consuming them is the NATS adapter's (`mosaic_kit.nats.jetstream`,
`mosaic_kit.nats.consumer`); services publish through the outbox (`mosaic_kit.sql.outbox`).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Self

import orjson
from pydantic import BaseModel, ConfigDict, PlainSerializer
from pydantic.alias_generators import to_camel

__all__ = [
    "DLQ_CONSUMER",
    "DLQ_DELIVERIES",
    "DLQ_PREFIX",
    "DLQ_REASON",
    "DLQ_SEQUENCE",
    "DLQ_STREAM",
    "DLQ_STREAM_HEADER",
    "DLQ_SUBJECT",
    "EVENT_PREFIX",
    "Event",
    "EventPayload",
    "MalformedEventError",
    "RejectEventError",
    "Timestamp",
    "dlq_subject",
    "event_subject",
    "new_event",
    "stream_name",
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


Timestamp = Annotated[
    datetime, PlainSerializer(lambda value: value.isoformat(), return_type=str, when_used="json")
]
"""A time in an event payload, written as the HTTP bodies write times (`isoformat()`)."""


class EventPayload(BaseModel):
    """The typed `data` of one event type, shared by its producer and its consumers.

    camelCase on the wire like the HTTP bodies. A reader ignores fields it does not know, so a
    producer may add one without breaking its consumers (removing or changing one is a new event
    type). Producers write `outbox.add(conn, UserCreated(...).event())`; consumers read
    `UserCreated.of(event)`. The models are listed in the service's AsyncAPI document.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")
    TYPE: ClassVar[str]

    def event(self, occurred_at: datetime | None = None) -> Event:
        """A new event of this type carrying this payload, happening now (or at `occurred_at`:
        replays, simulations)."""
        return new_event(self.TYPE, self.model_dump(mode="json", by_alias=True), occurred_at)

    @classmethod
    def of(cls, event: Event) -> Self:
        """The payload of `event`; `RejectEventError` for another type or a payload that does not
        fit (it never will: the consumer dead-letters it at once rather than retrying)."""
        if event.type != cls.TYPE:
            raise RejectEventError(f"expected a {cls.TYPE} event, got {event.type}")
        try:
            return cls.model_validate(event.data)
        except ValueError as exc:  # pydantic's ValidationError
            raise RejectEventError(f"{cls.TYPE}: {exc}") from exc


def new_event(type: str, data: dict[str, Any], occurred_at: datetime | None = None) -> Event:
    """An event of `type` (`<service>.<entity>.<what>`) that happens now (or at `occurred_at`)."""
    if not _TYPE.match(type):
        raise ValueError(f"invalid event type {type!r}: expected lower-case dotted tokens")
    when = datetime.now(UTC) if occurred_at is None else occurred_at
    return Event(id=str(uuid.uuid4()), type=type, occurred_at=when, data=data)


def event_subject(event_type: str) -> str:
    return EVENT_PREFIX + event_type


def stream_name(service: str) -> str:
    return f"EVENTS_{service.upper()}"


def dlq_subject(durable: str) -> str:
    return DLQ_PREFIX + durable
