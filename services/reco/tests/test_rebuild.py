"""`mosaic-reco rebuild`: the read model replayed from the streams and swapped in while the
service answers, with nothing lost or applied twice around the swap."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from reco_support import Bus, eventually, ids
from sqlalchemy import text

from mosaic_kit.fastapi.parts import DATABASE
from mosaic_reco.rebuild import rebuild
from mosaic_reco.settings import RecoSettings


async def schemas(app: Any, prefix: str) -> set[str]:
    async with DATABASE.of(app).connect() as conn:
        rows = await conn.execute(
            text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"), {"p": prefix + "%"}
        )
        return {row[0] for row in rows}


async def test_a_rebuild_while_serving_loses_no_answer_and_no_event(
    settings: RecoSettings, client: httpx.AsyncClient, bus: Bus, app: Any
) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    blogs = [await bus.blog(f"Rebuilt {n}", [name]) for n in range(6)]
    for rank, blog in enumerate(blogs):
        for _ in range(6 - rank):  # the first the most liked
            await bus.like(uuid.uuid4(), blog)
    await bus.settled(client)
    before = await client.get("/v1/recommendations/trending", params={"tag": name})
    assert ids(before) == [str(b) for b in blogs]

    answers: list[int] = []
    stop = asyncio.Event()

    async def keep_asking() -> None:
        while not stop.is_set():
            answer = await client.get("/v1/recommendations/trending", params={"tag": name})
            answers.append(answer.status_code)
            if answer.status_code == 200:
                # Whichever model answered, it holds every blog seen before.
                assert set(ids(answer)) >= {str(b) for b in blogs}, answer.text
            await asyncio.sleep(0)

    async def keep_publishing() -> uuid.UUID:
        # Events during the rebuild: some before the swap, some after.
        late = await bus.blog("Published during the rebuild", [name])
        for _ in range(10):
            await bus.like(uuid.uuid4(), late)
            await asyncio.sleep(0.02)
        return late

    asker = asyncio.create_task(keep_asking())
    publisher = asyncio.create_task(keep_publishing())
    done = await rebuild(settings)
    late = await publisher
    stop.set()
    await asker
    assert answers
    assert set(answers) == {200}
    assert done.schema == settings.db_schema
    assert done.events > 6 * 7 / 2  # the whole stream was replayed, ours among it

    # The late blog's ten likes all count, in the model now serving: none lost at the swap,
    # none applied twice (the ones the replay and the live consumer both saw).
    async def late_counted() -> bool:
        answer = await client.get("/v1/recommendations/trending", params={"tag": name})
        return ids(answer)[:1] == [str(late)]

    await eventually(late_counted)
    async with DATABASE.of(app).connect() as conn:
        likes = await conn.scalar(
            text("SELECT readers FROM like_counts WHERE blog_id = :b"), {"b": late}
        )
        version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    assert likes == 10
    assert version == "0001"
    after = await client.get("/v1/recommendations/trending", params={"tag": name})
    assert ids(after)[1:] == [str(b) for b in blogs]
    # The old model is gone, no half-built one is left.
    assert await schemas(app, settings.db_schema + "_") == set()
