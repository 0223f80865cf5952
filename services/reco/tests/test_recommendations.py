"""Recommendations from events alone, against real PostgreSQL and NATS: the blog's and auth's
events are published to their streams as those services publish them, and the app's durable
consumers apply them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from reco_support import Bus, bearer, eventually, ids, reasons
from sqlalchemy import select

from mosaic_devstack.issuer import TokenIssuer
from mosaic_kit.contracts.blog import (
    BlogBookmarked,
    BlogDeleted,
    BlogLiked,
    BlogRead,
    BlogUnliked,
    BlogUnpublished,
    BlogUpdated,
)
from mosaic_kit.fastapi.parts import DATABASE
from mosaic_kit.nats.connection import connect
from mosaic_reco.app import RECO
from mosaic_reco.settings import RecoSettings
from mosaic_reco.tables import co_likes, like_counts, signals

PROBLEM = "application/problem+json"


def tag() -> str:
    """A tag no other test uses (the streams are shared by the whole session)."""
    return f"t{uuid.uuid4().hex[:8]}"


async def trending_ids(client: httpx.AsyncClient, name: str) -> list[str]:
    return ids(await client.get("/v1/recommendations/trending", params={"tag": name}))


async def test_a_reader_is_recommended_what_readers_like_them_liked(
    client: httpx.AsyncClient, bus: Bus, token_issuer: TokenIssuer
) -> None:
    """Two readers like the same blogs, one likes a third: the other gets the third, because
    of co-engagement."""
    name = tag()
    writer = await bus.author("Wanda Writer")
    a, b, third, other = [await bus.blog(f"Blog {n}", [name], author=writer) for n in "ABCD"]
    ann, bob = uuid.uuid4(), uuid.uuid4()
    for blog in (a, b):
        await bus.like(ann, blog)
        await bus.like(bob, blog)
    await bus.like(ann, third)
    headers = bearer(token_issuer.token(bob))

    async def for_bob() -> httpx.Response | None:
        answer = await client.get("/v1/recommendations/me", headers=headers)
        # A tag match from its publish on; co-engagement once the like of it is applied too.
        top = (answer.json()["items"] or [{}])[0] if answer.status_code == 200 else {}
        wanted = (
            top.get("blog", {}).get("id") == str(third)
            and top["reason"] == "co_engagement"
            and top["blog"]["author"]["name"] == "Wanda Writer"  # auth's stream, another consumer
        )
        return answer if wanted else None

    answer = await eventually(for_bob)
    assert reasons(answer)[str(third)] == "co_engagement"
    picked = ids(answer)
    assert str(a) not in picked
    assert str(b) not in picked
    assert str(other) in picked  # the same tag, nobody's like: tag affinity
    assert reasons(answer)[str(other)] == "tag"
    first = answer.json()["items"][0]
    assert first["blog"]["author"] == {"id": str(writer), "name": "Wanda Writer"}
    assert first["blog"]["tags"] == [name.upper()]

    # "Readers also liked": the blogs liked by a blog's readers, the most shared first.
    also = await client.get(f"/v1/recommendations/blogs/{a}")
    assert ids(also)[0] == str(b)  # both readers of A liked B; one liked the third
    assert reasons(also)[str(b)] == reasons(also)[str(third)] == "co_engagement"
    assert ids(also).index(str(b)) < ids(also).index(str(third))


async def test_a_blog_too_new_for_likes_gets_similar_text(
    client: httpx.AsyncClient, bus: Bus
) -> None:
    name = tag()
    source = await bus.blog(f"Event sourcing with {name}", [name], description="Streams of events")
    near = await bus.blog(f"Sourcing events from {name} streams", ["other"])
    await bus.blog("Gardening for beginners", [name], description="Tomatoes and roses")

    async def similar() -> list[str] | None:
        answer = await client.get(f"/v1/recommendations/blogs/{source}")
        return ids(answer) if answer.status_code == 200 and ids(answer) else None

    found = await eventually(similar)
    assert found[0] == str(near)
    assert set(reasons(await client.get(f"/v1/recommendations/blogs/{source}")).values()) == {
        "similar"
    }


async def test_trending_weighs_signals_and_their_age(client: httpx.AsyncClient, bus: Bus) -> None:
    name = tag()
    hot, warm, old = [await bus.blog(f"Trend {n}", [name]) for n in "123"]
    long_ago = datetime.now(UTC) - timedelta(days=6)
    for _ in range(3):
        await bus.like(uuid.uuid4(), hot)
    await bus.emit(BlogRead(blog_id=warm, user_id=uuid.uuid4(), day=datetime.now(UTC).date()))
    for _ in range(3):  # as many likes as `hot`, but six days old: decayed
        await bus.emit(BlogLiked(blog_id=old, user_id=uuid.uuid4(), likes=1), at=long_ago)

    await bus.settled(client)
    assert await trending_ids(client, name) == [str(hot), str(old), str(warm)]
    # A one-day window leaves the old likes out.
    day = await client.get("/v1/recommendations/trending", params={"tag": name, "window": "24h"})
    assert ids(day) == [str(hot), str(warm)]
    assert set(reasons(day).values()) == {"trending"}


async def test_an_unpublished_or_deleted_blog_leaves_every_list(
    client: httpx.AsyncClient, bus: Bus, token_issuer: TokenIssuer
) -> None:
    name = tag()
    kept, unpublished, deleted = [await bus.blog(f"Going {n}", [name]) for n in "123"]
    fan = uuid.uuid4()
    for blog in (kept, unpublished, deleted):
        await bus.like(fan, blog)
        await bus.like(uuid.uuid4(), blog)
    await eventually(lambda: _has(client, name, 3))
    await bus.emit(BlogUnpublished(id=unpublished))
    await bus.emit(BlogDeleted(id=deleted, was_public=True))
    await eventually(lambda: _has(client, name, 1), timeout=1.0)  # within a second
    assert await trending_ids(client, name) == [str(kept)]
    for gone in (unpublished, deleted):
        answer = await client.get(f"/v1/recommendations/blogs/{gone}")
        assert answer.status_code == 404
        assert answer.json()["code"] == "reco.blog_not_found"
    assert str(unpublished) not in ids(await client.get(f"/v1/recommendations/blogs/{kept}"))
    reader = bearer(token_issuer.token())
    assert not {str(unpublished), str(deleted)} & set(
        ids(await client.get("/v1/recommendations/me", params={"tag": name}, headers=reader))
    )


async def _has(client: httpx.AsyncClient, name: str, count: int) -> bool:
    return len(await trending_ids(client, name)) == count


async def test_an_event_delivered_twice_or_late_changes_nothing(
    client: httpx.AsyncClient, bus: Bus, app: Any
) -> None:
    name = tag()
    first, second = await bus.blog("One", [name]), await bus.blog("Two", [name])
    reader = uuid.uuid4()
    await bus.like(reader, first)
    liked = await bus.like(reader, second)
    await bus.send(liked, msg_id=uuid.uuid4().hex)  # the same event again, past the stream's dedup
    # Taken back, then the like's older copy arrives late: the unlike stands.
    now = datetime.now(UTC)
    await bus.emit(BlogUnliked(blog_id=first, user_id=reader, likes=0), at=now)
    await bus.emit(BlogLiked(blog_id=first, user_id=reader, likes=1), at=now - timedelta(seconds=5))
    # Every kind of signal delivered twice: applied once.
    bookmarked = await bus.emit(BlogBookmarked(blog_id=second, user_id=reader), at=now)
    await bus.send(bookmarked, msg_id=uuid.uuid4().hex)
    read = await bus.emit(BlogRead(blog_id=second, user_id=reader, day=now.date()), at=now)
    await bus.send(read, msg_id=uuid.uuid4().hex)
    unliked = await bus.emit(BlogUnliked(blog_id=first, user_id=reader, likes=0), at=now)
    await bus.send(unliked, msg_id=uuid.uuid4().hex)
    await bus.emit(
        BlogUpdated(
            id=second,
            slug="two",
            title="Two, renamed",
            description="d",
            tags=[name.upper()],
            author_id=uuid.uuid4(),
            published_at=now,
        ),
        at=now,
    )
    marker = await bus.blog("Marker", [name])  # applied after all of the above (one stream)
    await bus.like(uuid.uuid4(), marker)
    await eventually(lambda: _has(client, name, 3))

    db = DATABASE.of(app)
    async with db.connect() as conn:
        rows = {
            row.blog_id: (row.liked, row.bookmarked)
            for row in await conn.execute(select(signals).where(signals.c.user_id == reader))
        }
        reads = await conn.scalar(
            select(signals.c.reads).where(signals.c.user_id == reader, signals.c.blog_id == second)
        )
        counts = dict(
            (
                await conn.execute(
                    select(like_counts.c.blog_id, like_counts.c.readers).where(
                        like_counts.c.blog_id.in_([first, second])
                    )
                )
            ).all()
        )
        pairs = (
            await conn.execute(select(co_likes).where(co_likes.c.blog_id.in_([first, second])))
        ).all()
    assert rows == {first: (False, False), second: (True, True)}
    assert reads == 1  # the read delivered twice counts once
    assert counts == {first: 0, second: 1}  # the second like was applied once
    assert pairs == []  # liked together, then not: no co-engagement left
    titles = {
        item["blog"]["id"]: item["blog"]["title"]
        for item in (await client.get("/v1/recommendations/trending", params={"tag": name})).json()[
            "items"
        ]
    }
    assert titles[str(second)] == "Two, renamed"


async def test_a_new_reader_gets_trending_and_never_their_own_or_what_they_read(
    client: httpx.AsyncClient, bus: Bus, token_issuer: TokenIssuer
) -> None:
    name = tag()
    me = uuid.uuid4()
    mine = await bus.blog("My own", [name], author=me)
    read, popular, quiet = [await bus.blog(f"Other {n}", [name]) for n in "123"]
    for blog in (mine, read, popular, popular):
        await bus.like(uuid.uuid4(), blog)
    await bus.like(uuid.uuid4(), quiet)
    headers = bearer(token_issuer.token(me))
    await bus.settled(client)
    cold = await client.get("/v1/recommendations/me", params={"tag": name}, headers=headers)
    assert set(reasons(cold).values()) == {"trending"}
    assert ids(cold)[0] == str(popular)
    await bus.emit(BlogRead(blog_id=read, user_id=me, day=datetime.now(UTC).date()))
    await bus.settled(client)
    after = await client.get("/v1/recommendations/me", params={"tag": name}, headers=headers)
    assert str(read) not in ids(after)
    assert str(mine) not in ids(after)
    excluded = await client.get(
        "/v1/recommendations/me", params={"tag": name, "exclude": [str(popular)]}, headers=headers
    )
    assert ids(excluded) == [str(quiet)]
    assert (
        await client.get(
            "/v1/recommendations/me", params={"tag": name, "limit": 1}, headers=headers
        )
    ).json()["items"].__len__() == 1


async def _listed(
    client: httpx.AsyncClient, headers: dict[str, str], params: dict[str, Any], count: int
) -> httpx.Response | None:
    answer = await client.get("/v1/recommendations/me", params=params, headers=headers)
    return answer if len(ids(answer)) == count else None


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/v1/recommendations/me", {}, 401, "auth.token_missing"),
        ("/v1/recommendations/trending", {"limit": "0"}, 422, "validation_failed"),
        ("/v1/recommendations/trending", {"limit": "51"}, 422, "validation_failed"),
        ("/v1/recommendations/trending", {"window": "2d"}, 422, "validation_failed"),
        ("/v1/recommendations/trending", {"tag": "x" * 51}, 422, "validation_failed"),
        ("/v1/recommendations/trending", {"tag": " "}, 422, "validation_failed"),
        ("/v1/recommendations/blogs/not-a-uuid", {}, 422, "validation_failed"),
        # A fixed unknown id: test ids must be the same in every test process (pytest-xdist).
        (f"/v1/recommendations/blogs/{uuid.UUID(int=404)}", {}, 404, "reco.blog_not_found"),
    ],
)
async def test_bad_requests_are_problems(
    client: httpx.AsyncClient, path: str, params: dict[str, str], status: int, code: str
) -> None:
    answer = await client.get(path, params=params)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    assert answer.json()["code"] == code


async def test_bad_requests_of_a_reader_are_problems(
    client: httpx.AsyncClient, token_issuer: TokenIssuer
) -> None:
    headers = bearer(token_issuer.token())
    for params, code in (
        ({"exclude": "not-a-uuid"}, "validation_failed"),
        ({"limit": "-1"}, "validation_failed"),
        ({"exclude": [str(uuid.uuid4()) for _ in range(101)]}, "validation_failed"),
    ):
        answer = await client.get("/v1/recommendations/me", params=params, headers=headers)
        assert answer.status_code == 422, answer.text
        assert answer.json()["code"] == code
    tampered = bearer(token_issuer.token() + "x")
    answer = await client.get("/v1/recommendations/me", headers=tampered)
    assert (answer.status_code, answer.json()["code"]) == (401, "auth.token_invalid")


async def test_it_answers_with_the_blog_and_auth_services_gone(
    settings: RecoSettings, bus: Bus, nats_url: str
) -> None:
    """Nothing but its database and NATS: with the token keys' publisher stopped after the
    start (auth down), and no blog service at all, readers still get answers."""
    issuer = TokenIssuer()
    nc = await connect(nats_url, "reco-test-auth")
    await issuer.serve(nc)
    app = RECO.app(settings.model_copy(update={"reco_jwks_subject": issuer.jwks_subject}))
    name = tag()
    reader = uuid.uuid4()
    async with app.router.lifespan_context(app):
        await issuer.stop()
        await nc.close()
        blog = await bus.blog("Still here", [name])
        await bus.like(uuid.uuid4(), blog)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://reco") as client:
            headers = bearer(issuer.token(reader))
            answer = await eventually(lambda: _listed(client, headers, {"tag": name}, 1))
            assert ids(answer) == [str(blog)]


async def test_other_services_ask_over_nats(
    client: httpx.AsyncClient, bus: Bus, nats_url: str
) -> None:
    name = tag()
    blog = await bus.blog("Over NATS", [name])
    await bus.like(uuid.uuid4(), blog)
    await eventually(lambda: _has(client, name, 1))
    from mosaic_kit.nats.rpc import request

    nc = await connect(nats_url, "reco-test-caller")
    try:
        reply = await request(
            nc, "reco.recommendations.get", {"userId": str(uuid.uuid4()), "limit": 50}, timeout=5
        )
        assert any(
            item["blogId"] == str(blog) and item["reason"] == "trending" for item in reply["items"]
        )
    finally:
        await nc.close()


async def test_a_reader_counts_towards_the_pairs_of_their_recent_likes_only(
    client: httpx.AsyncClient, bus: Bus, app: Any
) -> None:
    """Co-likes pair a reader's `CO_LIKE_WINDOW` most recent likes: bounded work per like,
    and an unlike takes back exactly what its like changed."""
    from mosaic_reco.service import CO_LIKE_WINDOW

    name = tag()
    blogs = [await bus.blog(f"Window {n}", [name]) for n in range(CO_LIKE_WINDOW + 1)]
    reader = uuid.uuid4()
    start = datetime.now(UTC) - timedelta(hours=1)
    for n, blog in enumerate(blogs):  # oldest first
        await bus.emit(
            BlogLiked(blog_id=blog, user_id=reader, likes=1), at=start + timedelta(seconds=n)
        )
    await bus.settled(client)

    async def pairs() -> dict[tuple[uuid.UUID, uuid.UUID], int]:
        async with DATABASE.of(app).connect() as conn:
            rows = await conn.execute(select(co_likes).where(co_likes.c.blog_id.in_(blogs)))
            return {(row.blog_id, row.other_id): row.readers for row in rows}

    oldest, newest = blogs[0], blogs[-1]
    counted = await pairs()
    window = set(blogs[1:])
    assert set(counted) == {(a, b) for a in window for b in window if a != b}
    assert set(counted.values()) == {1}
    # The newest like taken back: the oldest is among the reader's recent likes again.
    await bus.emit(
        BlogUnliked(blog_id=newest, user_id=reader, likes=0), at=start + timedelta(minutes=5)
    )
    await bus.settled(client)
    window = set(blogs[:-1])
    assert set(await pairs()) == {(a, b) for a in window for b in window if a != b}
    assert oldest in {a for a, _ in await pairs()}
