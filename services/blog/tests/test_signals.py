"""Readers' signals: likes, bookmarks and reads on published blogs.

Each is a row keyed by (blog, reader[, day]), so every route is idempotent and a repeat publishes
nothing; the like count is kept in the same transaction and shown on the public view of the
blog, whose cache a like invalidates (and only that one: lists show no counts).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from blog_support import Platform, bearer
from sqlalchemy import text

from mosaic_kit.fastapi.parts import DATABASE


@pytest.fixture
async def blog(
    platform: Platform, author: dict[str, Any], editor: dict[str, Any]
) -> dict[str, Any]:
    return await platform.published(author, editor, tags=["signals"])


async def reader(platform: Platform) -> dict[str, Any]:
    return await platform.user(name="Rita Reader")


async def events(platform: Platform, blog_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The signal events the blog's outbox holds for `blog_id`, oldest first."""
    async with DATABASE.of(platform.blog_apps[0]).connect() as conn:  # type: ignore[attr-defined]
        rows = await conn.execute(
            text(
                "SELECT type, payload->'data' AS data FROM outbox WHERE payload->'data'->>'blogId' = :id ORDER BY seq"
            ),
            {"id": blog_id},
        )
        return [(row.type, row.data) for row in rows]


async def signal_rows(platform: Platform, table: str, blog_id: str) -> int:
    async with DATABASE.of(platform.blog_apps[0]).connect() as conn:  # type: ignore[attr-defined]
        count = await conn.scalar(
            text(f"SELECT count(*) FROM {table} WHERE blog_id = :id"),
            {"id": blog_id},
        )
        return int(count or 0)


SIGNAL_ROUTES = [
    ("PUT", "like"),
    ("DELETE", "like"),
    ("PUT", "bookmark"),
    ("DELETE", "bookmark"),
    ("POST", "reads"),
]
"""Every signal route: method and what follows /v1/blogs/{id}/."""


def uid(user: dict[str, Any]) -> str:
    return str(user["user"]["id"])


async def test_a_like_counts_once_and_its_taking_back_too(
    platform: Platform, author: dict[str, Any], blog: dict[str, Any]
) -> None:
    rita, sam = await reader(platform), await reader(platform)
    path = f"/v1/blogs/{blog['id']}/like"
    first = await platform.blog_a.put(path, headers=rita["headers"])
    assert first.status_code == 200, first.text
    assert first.json() == {"liked": True, "likes": 1}
    again = await platform.blog_b.put(path, headers=rita["headers"])
    assert again.json() == {"liked": True, "likes": 1}
    assert (await platform.blog_a.put(path, headers=sam["headers"])).json()["likes"] == 2
    view = await platform.blog_b.get(f"/v1/blogs/{blog['id']}")
    assert view.json()["likes"] == 2

    taken = await platform.blog_a.delete(path, headers=rita["headers"])
    assert taken.json() == {"liked": False, "likes": 1}
    assert (await platform.blog_b.delete(path, headers=rita["headers"])).json() == {
        "liked": False,
        "likes": 1,
    }
    assert await signal_rows(platform, "likes", blog["id"]) == 1
    # One event per change, none for the repeats; each says the count after it.
    assert [
        (kind, data["userId"], data["likes"]) for kind, data in await events(platform, blog["id"])
    ] == [
        ("blog.blog.liked", uid(rita), 1),
        ("blog.blog.liked", uid(sam), 2),
        ("blog.blog.unliked", uid(rita), 1),
    ]
    # The author's own view shows the count too.
    own = await platform.blog_a.get(f"/v1/author/blogs/{blog['id']}", headers=author["headers"])
    assert own.json()["likes"] == 1


async def test_concurrent_likes_are_counted_exactly(
    platform: Platform, blog: dict[str, Any]
) -> None:
    path = f"/v1/blogs/{blog['id']}/like"
    rita = await reader(platform)
    others = [await reader(platform) for _ in range(4)]
    # The same reader ten times at once, and four others at the same time.
    answers = await asyncio.gather(
        *(platform.blog_a.put(path, headers=rita["headers"]) for _ in range(10)),
        *(platform.blog_b.put(path, headers=other["headers"]) for other in others),
    )
    assert {answer.status_code for answer in answers} == {200}
    assert (await platform.blog_a.get(f"/v1/blogs/{blog['id']}")).json()["likes"] == 5
    assert await signal_rows(platform, "likes", blog["id"]) == 5
    liked = [data["userId"] for kind, data in await events(platform, blog["id"])]
    assert sorted(liked) == sorted([uid(rita), *(uid(o) for o in others)])


async def test_a_like_drops_the_cached_view_of_that_blog_but_not_the_lists(
    platform: Platform, blog: dict[str, Any]
) -> None:
    rita = await reader(platform)
    view = f"/v1/blogs/{blog['id']}"
    listing = "/v1/blogs?tag=signals&limit=50"
    for path in (view, listing):
        await platform.blog_a.get(path)
        assert (await platform.blog_b.get(path)).headers["x-cache"] == "HIT"
    await platform.blog_a.put(f"{view}/like", headers=rita["headers"])
    after = await platform.blog_b.get(view)
    assert after.headers["x-cache"] == "MISS"
    assert after.json()["likes"] == 1
    assert (await platform.blog_b.get(listing)).headers["x-cache"] == "HIT"
    assert "likes" not in (await platform.blog_b.get(listing)).json()["items"][0]


async def test_bookmarks_are_idempotent_and_change_no_public_view(
    platform: Platform, blog: dict[str, Any]
) -> None:
    rita = await reader(platform)
    view = f"/v1/blogs/{blog['id']}"
    await platform.blog_a.get(view)
    path = f"{view}/bookmark"
    for client in (platform.blog_a, platform.blog_b):
        answer = await client.put(path, headers=rita["headers"])
        assert answer.status_code == 204
        assert answer.content == b""
    assert await signal_rows(platform, "bookmarks", blog["id"]) == 1
    assert (await platform.blog_b.get(view)).headers["x-cache"] == "HIT"
    for client in (platform.blog_a, platform.blog_b):
        assert (await client.delete(path, headers=rita["headers"])).status_code == 204
    assert await signal_rows(platform, "bookmarks", blog["id"]) == 0
    assert [(kind, data["userId"]) for kind, data in await events(platform, blog["id"])] == [
        ("blog.blog.bookmarked", uid(rita)),
        ("blog.blog.unbookmarked", uid(rita)),
    ]


async def test_reading_again_the_same_day_counts_once(
    platform: Platform, blog: dict[str, Any]
) -> None:
    rita, sam = await reader(platform), await reader(platform)
    path = f"/v1/blogs/{blog['id']}/reads"
    answers = await asyncio.gather(
        *(platform.blog_a.post(path, headers=rita["headers"]) for _ in range(3)),
        platform.blog_b.post(path, headers=sam["headers"]),
    )
    assert [answer.status_code for answer in answers] == [204] * 4
    assert await signal_rows(platform, "reads", blog["id"]) == 2
    today = datetime.now(UTC).date().isoformat()
    read = await events(platform, blog["id"])
    assert sorted((kind, data["userId"], data["day"]) for kind, data in read) == sorted(
        [("blog.blog.read", uid(rita), today), ("blog.blog.read", uid(sam), today)]
    )


@pytest.mark.parametrize(("method", "suffix"), SIGNAL_ROUTES)
async def test_a_blog_the_public_cannot_read_is_not_found_and_nothing_is_recorded(
    platform: Platform,
    author: dict[str, Any],
    editor: dict[str, Any],
    method: str,
    suffix: str,
) -> None:
    rita = await reader(platform)
    draft = await platform.draft(author)
    unpublished = await platform.published(author, editor)
    await platform.blog_a.post(
        f"/v1/editor/blogs/{unpublished['id']}/unpublish", headers=editor["headers"]
    )
    for blog_id in (draft["id"], unpublished["id"], str(uuid.uuid4())):
        answer = await platform.blog_a.request(
            method, f"/v1/blogs/{blog_id}/{suffix}", headers=rita["headers"]
        )
        assert answer.status_code == 404, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "blog.not_found"
        assert await events(platform, blog_id) == []  # no signal event (they carry blogId)
    for table in ("likes", "bookmarks", "reads"):
        for blog_id in (draft["id"], unpublished["id"]):
            assert await signal_rows(platform, table, blog_id) == 0


@pytest.mark.parametrize(("method", "suffix"), SIGNAL_ROUTES)
async def test_bad_requests_are_problems_and_record_nothing(
    platform: Platform, blog: dict[str, Any], method: str, suffix: str
) -> None:
    path = f"/v1/blogs/{blog['id']}/{suffix}"
    cases = [
        (await platform.blog_a.request(method, path), 401, "auth.token_missing"),
        (
            await platform.blog_a.request(method, path, headers=bearer("not-a-token")),
            401,
            "auth.token_invalid",
        ),
        (
            await platform.blog_a.request(
                method,
                f"/v1/blogs/not-a-uuid/{suffix}",
                headers=(await reader(platform))["headers"],
            ),
            422,
            None,
        ),
    ]
    for answer, status, code in cases:
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        if code is not None:
            assert answer.json()["code"] == code
    for table in ("likes", "bookmarks", "reads"):
        assert await signal_rows(platform, table, blog["id"]) == 0
    assert await events(platform, blog["id"]) == []
