"""A service's messaging contract as an AsyncAPI 3.0 document, beside its OpenAPI.

What it lists is what the service declares to the chassis: the events it publishes (their
`EventPayload` models), the events it consumes, and its NATS request-reply endpoints (request and
reply models). Every event travels in the same envelope (`mosaic_kit.events.Event`), so each
message's payload is that envelope with the model as its `data`. The document is served at
`/asyncapi.json` by the running service (the endpoints are known once it is assembled).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from mosaic_kit.events import EVENT_PREFIX, EventPayload

__all__ = ["VERSION", "document"]

VERSION = "3.0.0"
_REF = "#/components/schemas/{model}"
_ID = re.compile(r"[^A-Za-z0-9_-]")


def _id(text: str) -> str:
    return _ID.sub("_", text)


def _envelope(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "type", "occurredAt", "data"],
        "properties": {
            "id": {"type": "string", "description": "Unique; consumers apply an event once."},
            "type": {"const": event_type},
            "occurredAt": {"type": "string", "format": "date-time"},
            "data": data,
        },
    }


def document(
    *,
    title: str,
    version: str,
    description: str,
    publishes: Sequence[type[EventPayload]] = (),
    consumes: Sequence[type[EventPayload] | str] = (),
    endpoints: Mapping[str, tuple[type[BaseModel], type[BaseModel]] | None] | None = None,
) -> dict[str, Any]:
    """The AsyncAPI document. `consumes` holds payload models, or bare subjects (for events
    consumed without a model); `endpoints` maps a subject to its (request, reply) models, or to
    None for an untyped handler (listed, with any JSON as its payloads)."""
    endpoints = endpoints or {}
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for model in [*publishes, *(c for c in consumes if not isinstance(c, str))]:
        models.append((model, "serialization"))
    for pair in endpoints.values():
        if pair is not None:
            models += [(pair[0], "validation"), (pair[1], "serialization")]
    unique = list(dict.fromkeys(models))
    refs, definitions = models_json_schema(unique, by_alias=True, ref_template=_REF)

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}

    def message(name: str, payload: dict[str, Any], summary: str | None) -> dict[str, str]:
        messages[name] = {"name": name, "contentType": "application/json", "payload": payload}
        if summary:
            messages[name]["summary"] = summary
        return {"$ref": f"#/components/messages/{name}"}

    def event_channel(model: type[EventPayload]) -> str:
        channel = _id(model.TYPE)
        if channel not in channels:
            payload = _envelope(model.TYPE, refs[(model, "serialization")])
            summary = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else None
            channels[channel] = {
                "address": EVENT_PREFIX + model.TYPE,
                "messages": {model.__name__: message(model.__name__, payload, summary)},
            }
        return channel

    for model in publishes:
        channel = event_channel(model)
        operations[f"publish_{channel}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"Published (through the outbox) as {model.TYPE}",
        }
    for consumed in consumes:
        if isinstance(consumed, str):
            channel = _id(consumed)
            channels.setdefault(channel, {"address": consumed})
        else:
            channel = event_channel(consumed)
        operations[f"consume_{channel}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": "Consumed by a durable consumer, each event applied once",
        }
    for subject, pair in endpoints.items():
        request_schema = {} if pair is None else refs[(pair[0], "validation")]
        reply_schema = {} if pair is None else refs[(pair[1], "serialization")]
        channel = _id(subject)
        request_name = f"{channel}_request"
        reply_name = f"{channel}_reply"
        channels[channel] = {
            "address": subject,
            "messages": {request_name: message(request_name, request_schema, None)},
        }
        channels[reply_name] = {
            "address": None,
            "description": "The requester's inbox (the NATS reply subject).",
            "messages": {
                reply_name: message(
                    reply_name,
                    {
                        "type": "object",
                        "required": ["data"],
                        "properties": {"data": reply_schema},
                        "description": "An error reply carries the Nats-Service-Error headers.",
                    },
                    None,
                )
            },
        }
        operations[f"answer_{channel}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"Request-reply on {subject}",
            "reply": {"channel": {"$ref": f"#/channels/{reply_name}"}},
        }
    return {
        "asyncapi": VERSION,
        "info": {"title": title, "version": version, "description": description},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": definitions.get("$defs", {})},
    }
