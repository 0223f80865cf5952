"""The AsyncAPI document: what a service publishes, consumes and answers, with their schemas."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from pydantic import BaseModel

from mosaic_kit.asyncapi import document
from mosaic_kit.events import EventPayload


class ThingMade(EventPayload):
    """`demo.thing.made`: a thing was made."""

    TYPE: ClassVar[str] = "demo.thing.made"
    id: uuid.UUID
    display_name: str


class OtherHappened(EventPayload):
    TYPE: ClassVar[str] = "other.it.happened"
    count: int


class Query(BaseModel):
    ids: list[uuid.UUID]


class Answer(BaseModel):
    names: list[str]


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_the_document_lists_published_consumed_and_request_reply_with_schemas() -> None:
    doc = document(
        title="Demo",
        version="1.2.3",
        description="A demo service",
        publishes=[ThingMade],
        consumes=[OtherHappened, "events.legacy.untyped"],
        endpoints={"demo.things.get": (Query, Answer)},
    )
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"] == {"title": "Demo", "version": "1.2.3", "description": "A demo service"}
    published = doc["channels"]["demo_thing_made"]
    assert published["address"] == "events.demo.thing.made"
    message = resolve(doc, published["messages"]["ThingMade"]["$ref"])
    assert message["summary"] == "`demo.thing.made`: a thing was made."
    envelope = message["payload"]
    assert envelope["properties"]["type"] == {"const": "demo.thing.made"}
    data = resolve(doc, envelope["properties"]["data"]["$ref"])
    assert set(data["properties"]) == {"id", "displayName"}  # camelCase, as on the wire
    actions = {name: op["action"] for name, op in doc["operations"].items()}
    assert actions == {
        "publish_demo_thing_made": "send",
        "consume_other_it_happened": "receive",
        "consume_events_legacy_untyped": "receive",
        "answer_demo_things_get": "receive",
    }
    assert doc["channels"]["events_legacy_untyped"] == {"address": "events.legacy.untyped"}
    answer = doc["operations"]["answer_demo_things_get"]
    assert doc["channels"]["demo_things_get"]["address"] == "demo.things.get"
    reply = resolve(doc, answer["reply"]["channel"]["$ref"])
    assert reply["address"] is None  # the requester's inbox
    # Every reference resolves inside the document.
    for ref in refs(doc):
        assert resolve(doc, ref) is not None, ref
