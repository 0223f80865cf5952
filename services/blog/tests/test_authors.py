"""The author read model: fed by auth events, idempotent, and enough to serve reads alone."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
from blog_support import Platform, eventually
from sqlalchemy import text

from mosaic_kit.contracts import blog as blog_contracts
from mosaic_kit.contracts.auth import UserCreated, UserUpdated
from mosaic_kit.events import DLQ_DELIVERIES, Event
from mosaic_kit.fastapi.parts import DATABASE
from mosaic_kit.nats.jetstream import publish


async def test_a_renamed_author_shows_the_new_name_in_public_views(
    platform: Platform, editor: dict[str, Any]
) -> None:
    writer = await platform.user("AUTHOR", name="Old Name")
    blog = await platform.published(writer, editor)
    path = f"/v1/blogs/{blog['id']}"
    assert (await platform.blog_b.get(path)).json()["author"]["name"] == "Old Name"  # cached
    renamed = await platform.auth.patch(
        "/v1/users/me", json={"name": "New Name"}, headers=writer["headers"]
    )
    assert renamed.status_code == 200

    async def shows_new_name() -> bool:
        body = (await platform.blog_b.get(path)).json()
        return bool(body["author"]["name"] == "New Name")

    await eventually(shows_new_name)


async def test_the_same_user_event_delivered_twice_is_applied_once(
    platform: Platform, nats_url: str
) -> None:
    app = platform.blog_apps[0]  # type: ignore[attr-defined]
    db = DATABASE.of(app)
    author_id = str(uuid.uuid4())
    occurred = datetime.now(UTC)
    event = Event(
        id=str(uuid.uuid4()),
        type="auth.user.updated",
        occurred_at=occurred,
        data={"id": author_id, "name": "Twice Sent", "profilePicUrl": None},
    )
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        # Two copies past JetStream's de-duplication (different message ids), same event id.
        await publish(js, event, headers={"Nats-Msg-Id": event.id + "-a"})
        await publish(js, event, headers={"Nats-Msg-Id": event.id + "-b"})
        # An older event for the same user arrives afterwards: it must not win.
        stale = Event(
            id=str(uuid.uuid4()),
            type="auth.user.updated",
            occurred_at=occurred - timedelta(minutes=5),
            data={"id": author_id, "name": "Stale Name", "profilePicUrl": None},
        )
        await publish(js, stale)
    finally:
        await nc.close()
    consumer = app.state.settings.blog_authors_consumer

    async def both_seen() -> bool:
        async with db.connect() as conn:
            count = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM processed_events WHERE consumer = :c "
                        "AND event_id IN (:a, :b)"
                    ),
                    {"c": consumer, "a": event.id, "b": stale.id},
                )
            ).scalar_one()
        return bool(count == 2)

    await eventually(both_seen)
    async with db.connect() as conn:
        rows = (
            await conn.execute(text("SELECT name FROM authors WHERE id = :id"), {"id": author_id})
        ).all()
        applied = (
            await conn.execute(
                text("SELECT count(*) FROM processed_events WHERE event_id = :e AND consumer = :c"),
                {"e": event.id, "c": consumer},
            )
        ).scalar_one()
    assert [r[0] for r in rows] == ["Twice Sent"]
    assert applied == 1


async def test_an_event_that_changes_nothing_keeps_the_cache(
    platform: Platform, editor: dict[str, Any], nats_url: str
) -> None:
    writer = await platform.user("AUTHOR", name="Steady Name")
    blog = await platform.published(writer, editor)
    path = f"/v1/blogs/{blog['id']}"
    await platform.blog_a.get(path)
    assert (await platform.blog_b.get(path)).headers["x-cache"] == "HIT"
    same = Event(
        id=str(uuid.uuid4()),
        type="auth.user.updated",
        occurred_at=datetime.now(UTC),
        data={"id": writer["user"]["id"], "name": "Steady Name", "profilePicUrl": None},
    )
    nc = await nats.connect(nats_url)
    try:
        await publish(nc.jetstream(), same)
    finally:
        await nc.close()
    app = platform.blog_apps[0]  # type: ignore[attr-defined]
    consumer = app.state.settings.blog_authors_consumer

    async def processed() -> bool:
        async with DATABASE.of(app).connect() as conn:
            found = (
                await conn.execute(
                    text("SELECT 1 FROM processed_events WHERE consumer = :c AND event_id = :e"),
                    {"c": consumer, "e": same.id},
                )
            ).first()
        return found is not None

    await eventually(processed)
    await asyncio.sleep(0.1)  # past the after-commit step
    assert (await platform.blog_b.get(path)).headers["x-cache"] == "HIT"


async def test_a_user_event_built_from_the_contract_is_applied_and_a_broken_one_dead_lettered(
    platform: Platform, nats_url: str
) -> None:
    app = platform.blog_apps[0]  # type: ignore[attr-defined]
    db = DATABASE.of(app)
    author = uuid.uuid4()
    good = UserCreated(id=author, name="From The Contract", roles=["AUTHOR"]).event()
    # Outside the contract (no name): it can never be applied, so it is not retried.
    broken = Event(
        id=str(uuid.uuid4()),
        type=UserUpdated.TYPE,
        occurred_at=datetime.now(UTC) + timedelta(seconds=5),
        data={"id": str(author)},
    )
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        consumer = app.state.settings.blog_authors_consumer
        dead = await js.subscribe(f"dlq.{consumer}", ordered_consumer=True)
        await publish(js, good)
        await publish(js, broken)
        message = await dead.next_msg(timeout=10)
        assert Event.from_json(message.data).id == broken.id
        assert message.headers is not None
        assert message.headers.get(DLQ_DELIVERIES) == "1"  # at once, not after five tries
    finally:
        await nc.close()

    async def applied() -> bool:
        async with db.connect() as conn:
            name = await conn.scalar(text("SELECT name FROM authors WHERE id = :i"), {"i": author})
        return name == "From The Contract"

    await eventually(applied)


async def test_the_asyncapi_document_lists_what_blog_publishes_and_consumes(
    platform: Platform,
) -> None:
    contract = (await platform.blog_a.get("/asyncapi.json")).json()
    operations = {(op["action"], op["channel"]["$ref"]) for op in contract["operations"].values()}
    for event in blog_contracts.BLOG_EVENTS:
        assert ("send", f"#/channels/{event.TYPE.replace('.', '_')}") in operations
    for event in (UserCreated, UserUpdated):
        assert ("receive", f"#/channels/{event.TYPE.replace('.', '_')}") in operations
