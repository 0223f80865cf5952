"""The blog service announces public changes as events, through its outbox."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import orjson
from blog_support import Platform
from nats.js.api import DeliverPolicy


async def _next(sub: Any, event_type: str, blog_id: str) -> dict[str, Any]:
    async def find() -> dict[str, Any]:
        while True:
            msg = await sub.next_msg(timeout=5)
            event: dict[str, Any] = orjson.loads(msg.data)
            if event["type"] == event_type and event["data"]["id"] == blog_id:
                return event

    return await asyncio.wait_for(find(), timeout=10)


async def test_publish_update_unpublish_delete_are_announced(
    platform: Platform, author: dict[str, Any], editor: dict[str, Any], nats_url: str
) -> None:
    nc = await nats.connect(nats_url)
    sub = await nc.jetstream().subscribe(
        "events.blog.>", ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
    )
    try:
        blog = await platform.published(author, editor, tags=["events"])
        bid = blog["id"]
        published = await _next(sub, "blog.blog.published", bid)
        assert published["data"]["slug"] == blog["slug"]
        assert published["data"]["tags"] == ["EVENTS"]
        assert published["data"]["authorId"] == author["user"]["id"]
        assert published["data"]["publishedAt"] == blog["publishedAt"]

        hdr = author["headers"]
        await platform.blog_a.patch(
            f"/v1/author/blogs/{bid}", json={"title": "Renamed post"}, headers=hdr
        )
        updated = await _next(sub, "blog.blog.updated", bid)
        assert updated["data"]["title"] == "Renamed post"

        await platform.blog_a.post(f"/v1/editor/blogs/{bid}/unpublish", headers=editor["headers"])
        await _next(sub, "blog.blog.unpublished", bid)
        await platform.blog_a.delete(f"/v1/author/blogs/{bid}", headers=hdr)
        deleted = await _next(sub, "blog.blog.deleted", bid)
        assert deleted["data"]["wasPublic"] is False
    finally:
        await sub.unsubscribe()
        await nc.close()


async def test_draft_edits_announce_nothing(
    platform: Platform, author: dict[str, Any], nats_url: str
) -> None:
    nc = await nats.connect(nats_url)
    sub = await nc.jetstream().subscribe(
        "events.blog.>", ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
    )
    try:
        draft = await platform.draft(author)
        await platform.blog_a.patch(
            f"/v1/author/blogs/{draft['id']}",
            json={"title": "Still a draft"},
            headers=author["headers"],
        )
        # A later public change is announced; nothing for the draft came before it.
        marker = await platform.published(author, await platform.user("EDITOR"))
        first = orjson.loads((await sub.next_msg(timeout=5)).data)
        assert first["type"] == "blog.blog.published"
        assert first["data"]["id"] == marker["id"]
    finally:
        await sub.unsubscribe()
        await nc.close()


async def test_replicas_are_discoverable_with_their_http_address(
    platform: Platform, nats_url: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SRV.INFO.blog", b"", reply=inbox)
        infos = []
        try:
            while True:
                infos.append(orjson.loads((await sub.next_msg(timeout=0.5)).data))
        except nats.errors.TimeoutError:
            pass
        apps = platform.blog_apps  # type: ignore[attr-defined]
        wanted = {app.state.settings.instance_id for app in apps}
        announced = {i["metadata"]["instance"]: i["metadata"]["http"] for i in infos}
        assert wanted <= set(announced)
        for app in apps:
            assert announced[app.state.settings.instance_id] == app.state.settings.http_url()
    finally:
        await nc.close()
