"""The bulk load computes exactly the read model the live consumers build one event at a time.

One random history (blogs published, updated, unpublished, deleted; likes, unlikes, bookmarks,
reads; author names), with events repeated and some arriving late, is applied both ways into two
fresh schemas, and every table is compared row by row.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text

from mosaic_kit.contracts.auth import UserCreated, UserUpdated
from mosaic_kit.contracts.blog import (
    BlogBookmarked,
    BlogDeleted,
    BlogLiked,
    BlogPublished,
    BlogRead,
    BlogUnbookmarked,
    BlogUnliked,
    BlogUnpublished,
    BlogUpdated,
)
from mosaic_kit.events import Event, EventPayload
from mosaic_kit.sql import processed
from mosaic_kit.sql.db import Database
from mosaic_kit.sql.migrations import upgrade_async
from mosaic_reco.bulk import Feed, bulk_load
from mosaic_reco.service import CO_LIKE_WINDOW, RecoService
from mosaic_reco.settings import RecoSettings
from mosaic_reco.tables import authors, cards, co_likes, like_counts, processed_events, signals

BLOG, AUTH = "reco-blog", "reco-authors"


def history(rng: random.Random) -> tuple[list[Event], list[Event]]:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    clock = [start]

    def event(payload: EventPayload, late: bool = False) -> Event:
        clock[0] += timedelta(seconds=rng.randint(1, 30))
        when = clock[0] - timedelta(minutes=rng.randint(1, 60)) if late else clock[0]
        return payload.event(when)

    writers = [uuid.uuid4() for _ in range(4)]
    users = [uuid.uuid4() for _ in range(6)]  # many likes each: past the co-like window
    blogs = [uuid.uuid4() for _ in range(40)]
    auth = [event(UserCreated(id=w, name=f"Writer {n}")) for n, w in enumerate(writers)]
    auth += [
        event(UserUpdated(id=rng.choice(writers), name=f"Renamed {n}"), late=rng.random() < 0.3)
        for n in range(6)
    ]

    def card(kind: type[BlogPublished], blog: uuid.UUID) -> BlogPublished:
        return kind(
            id=blog,
            slug=f"s-{blog.hex[:6]}-{rng.randint(0, 9)}",
            title=f"Title {rng.randint(0, 99)}",
            description="words",
            tags=rng.sample(["A", "B", "C", "D"], 2),
            author_id=rng.choice(writers),
            published_at=start,
        )

    stream = [event(card(BlogPublished, b)) for b in blogs]
    for _ in range(1200):
        blog, user, roll = rng.choice(blogs), rng.choice(users), rng.random()
        late = rng.random() < 0.15
        if roll < 0.35:
            payload: EventPayload = BlogLiked(blog_id=blog, user_id=user, likes=1)
        elif roll < 0.5:
            payload = BlogUnliked(blog_id=blog, user_id=user, likes=0)
        elif roll < 0.6:
            payload = BlogBookmarked(blog_id=blog, user_id=user)
        elif roll < 0.65:
            payload = BlogUnbookmarked(blog_id=blog, user_id=user)
        elif roll < 0.9:
            payload = BlogRead(blog_id=blog, user_id=user, day=start.date())
        elif roll < 0.95:
            payload = card(BlogUpdated, blog)
        elif roll < 0.98:
            payload = BlogUnpublished(id=blog)
        else:
            payload = BlogDeleted(id=blog, was_public=True)
        stream.append(event(payload, late))
        if rng.random() < 0.05:  # delivered twice
            stream.append(stream[-1])
    return stream, auth


async def incremental(db: Database, svc: RecoService, consumer: str, events: list[Event]) -> None:
    apply = svc.apply_blog_event if consumer == BLOG else svc.apply_user_event
    for event in events:  # as DurableConsumer does: claim the id, then the handler
        async with db.transaction() as conn:
            if await processed.claim(conn, consumer, event.id):
                await apply(conn, event)


async def dump(db: Database) -> dict[str, Any]:
    async with db.connect() as conn:
        tables: dict[str, Any] = {}
        for table in (authors, signals, co_likes, like_counts):
            tables[table.name] = sorted(map(tuple, (await conn.execute(select(table))).all()))
        columns = [c for c in cards.c if c.name != "search"]
        tables["cards"] = sorted(map(tuple, (await conn.execute(select(*columns))).all()))
        tables["processed"] = sorted(
            map(
                tuple,
                (
                    await conn.execute(
                        select(processed_events.c.consumer, processed_events.c.event_id)
                    )
                ).all(),
            )
        )
        return tables


async def test_the_bulk_load_builds_what_the_consumers_build(pg_url: str, nats_url: str) -> None:
    rng = random.Random(11)
    blog_events, auth_events = history(rng)
    models = []
    for _ in range(2):
        settings = RecoSettings(
            database_url=pg_url, nats_url=nats_url, db_schema=f"t_{uuid.uuid4().hex[:12]}"
        )
        await upgrade_async(settings, "mosaic_reco")
        models.append((settings, Database.from_settings(settings)))
    (_, one_by_one), (_, at_once) = models
    try:
        svc = RecoService(one_by_one)
        await incremental(one_by_one, svc, BLOG, blog_events)
        await incremental(one_by_one, svc, AUTH, auth_events)
        staged = await bulk_load(at_once, [Feed(BLOG, blog_events), Feed(AUTH, auth_events)])
        assert staged == len(blog_events) + len(auth_events)
        expected, got = await dump(one_by_one), await dump(at_once)
        assert expected["co_likes"], "the history must exercise co-likes"
        liked: dict[Any, int] = {}
        for row in expected["signals"]:
            liked[row[0]] = liked.get(row[0], 0) + bool(row[2])
        assert max(liked.values()) > CO_LIKE_WINDOW, "and readers past the co-like window"
        assert any(not row[-2] for row in expected["cards"]), "and hidden cards"
        for name in expected:
            assert got[name] == expected[name], name
    finally:
        for settings, db in models:
            async with db.transaction() as conn:
                await conn.execute(text(f'DROP SCHEMA "{settings.db_schema}" CASCADE'))
            await db.dispose()
