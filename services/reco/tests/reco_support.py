"""Helpers of the reco tests: publishing the events the blog and auth services publish."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from mosaic_kit.contracts.auth import UserCreated
from mosaic_kit.contracts.blog import BlogLiked, BlogPublished
from mosaic_kit.events import Event, EventPayload
from mosaic_kit.nats import jetstream
from mosaic_kit.nats.connection import Client


class Bus:
    """Publishes events to the blog's and auth's streams, as their outbox relays do."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream()

    async def start(self) -> None:
        for service in ("blog", "auth"):
            await jetstream.ensure_stream(self.js, service)

    async def send(self, event: Event, *, msg_id: str | None = None) -> Event:
        # The stream drops a repeated Nats-Msg-Id: another id delivers the same event twice.
        await self.js.publish(
            event.subject, event.to_json(), headers={"Nats-Msg-Id": msg_id or event.id}
        )
        return event

    async def emit(self, payload: EventPayload, at: datetime | None = None) -> Event:
        return await self.send(payload.event(at))

    async def author(self, name: str) -> uuid.UUID:
        user = uuid.uuid4()
        await self.emit(UserCreated(id=user, name=name, roles=["AUTHOR"]))
        return user

    async def blog(
        self,
        title: str,
        tags: list[str],
        *,
        author: uuid.UUID | None = None,
        description: str = "A blog about things",
        age: timedelta = timedelta(0),
    ) -> uuid.UUID:
        blog_id = uuid.uuid4()
        await self.emit(
            BlogPublished(
                id=blog_id,
                slug=f"b-{blog_id.hex[:10]}",
                title=title,
                description=description,
                tags=[tag.upper() for tag in tags],
                author_id=author or uuid.uuid4(),
                published_at=datetime.now(UTC) - age,
            )
        )
        return blog_id

    async def like(self, user: uuid.UUID, blog: uuid.UUID, likes: int = 1) -> Event:
        return await self.emit(BlogLiked(blog_id=blog, user_id=user, likes=likes))

    async def settled(self, client: httpx.AsyncClient) -> None:
        """Wait until the app applied every event sent so far: one consumer applies the blog's
        stream in order, so a marker blog liked last shows in trending only after the rest."""
        marker = f"m{uuid.uuid4().hex[:8]}"
        blog = await self.blog("Marker", [marker])
        await self.like(uuid.uuid4(), blog)

        async def seen() -> bool:
            answer = await client.get("/v1/recommendations/trending", params={"tag": marker})
            return ids(answer) == [str(blog)]

        await eventually(seen)


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.05
) -> Any:
    """The first truthy `check()` result, within `timeout` (effects travel through NATS)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(interval)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def ids(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [item["blog"]["id"] for item in answer.json()["items"]]


def reasons(answer: httpx.Response) -> dict[str, str]:
    return {item["blog"]["id"]: item["reason"] for item in answer.json()["items"]}
