"""Public reads: what is visible, the cache, freshness across replicas, similar, paging."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from blog_support import Platform

PUBLIC_FIELDS = {
    "id",
    "slug",
    "title",
    "description",
    "text",
    "tags",
    "imgUrl",
    "author",
    "score",
    "publishedAt",
    "createdAt",
    "updatedAt",
}


async def test_only_published_blogs_are_public(
    platform: Platform, author: dict[str, Any], editor: dict[str, Any]
) -> None:
    draft = await platform.draft(author)
    for path in (f"/v1/blogs/{draft['id']}", f"/v1/blogs/by-slug/{draft['slug']}"):
        missing = await platform.blog_a.get(path)
        assert missing.status_code == 404
        assert missing.json()["code"] == "blog.not_found"
    blog = await platform.published(author, editor)
    by_id = await platform.blog_b.get(f"/v1/blogs/{blog['id']}")
    assert by_id.status_code == 200
    # No draftText, no state; a single blog shows its like count (lists do not).
    assert set(by_id.json()) == PUBLIC_FIELDS | {"likes"}
    assert by_id.json()["likes"] == 0
    assert by_id.json()["author"]["name"] == "Ada Author"
    by_slug = await platform.blog_b.get(f"/v1/blogs/by-slug/{blog['slug'].upper()}")
    assert by_slug.json()["id"] == blog["id"]
    assert (await platform.blog_a.get("/v1/blogs/not-a-uuid")).status_code == 422
    assert (await platform.blog_a.get(f"/v1/blogs/{uuid.uuid4()}")).status_code == 404


async def test_second_read_is_a_cache_hit_on_any_replica(
    platform: Platform, author: dict[str, Any], editor: dict[str, Any]
) -> None:
    blog = await platform.published(author, editor)
    first = await platform.blog_a.get(f"/v1/blogs/{blog['id']}")
    second = await platform.blog_b.get(f"/v1/blogs/{blog['id']}")
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"  # the cache is shared by the replicas
    assert second.json() == first.json()


async def _public(client: httpx.AsyncClient, blog_id: str) -> httpx.Response:
    return await client.get(f"/v1/blogs/{blog_id}")


async def test_writes_through_one_replica_show_at_once_on_the_other(
    platform: Platform, author: dict[str, Any], editor: dict[str, Any]
) -> None:
    a, b = platform.blog_a, platform.blog_b
    blog = await platform.published(author, editor, title="Original title here")
    bid = blog["id"]
    assert (await _public(b, bid)).json()["title"] == "Original title here"  # now cached
    listing = await b.get("/v1/blogs", params={"limit": 100})
    assert bid in {x["id"] for x in listing.json()["items"]}

    await a.patch(
        f"/v1/author/blogs/{bid}", json={"title": "Edited title here"}, headers=author["headers"]
    )
    assert (await _public(b, bid)).json()["title"] == "Edited title here"

    await a.post(f"/v1/editor/blogs/{bid}/unpublish", headers=editor["headers"])
    assert (await _public(b, bid)).status_code == 404
    listing = await b.get("/v1/blogs", params={"limit": 100})
    assert bid not in {x["id"] for x in listing.json()["items"]}

    await a.post(f"/v1/author/blogs/{bid}/submit", headers=author["headers"])
    await a.post(f"/v1/editor/blogs/{bid}/publish", headers=editor["headers"])
    assert (await _public(b, bid)).status_code == 200

    await a.delete(f"/v1/author/blogs/{bid}", headers=author["headers"])
    assert (await _public(b, bid)).status_code == 404
    assert (await b.get(f"/v1/blogs/by-slug/{blog['slug']}")).status_code == 404


async def test_tag_filter(
    platform: Platform, author: dict[str, Any], editor: dict[str, Any]
) -> None:
    tag = f"T{uuid.uuid4().hex[:8]}"
    tagged = await platform.published(author, editor, tags=[tag.lower(), "other"])
    await platform.published(author, editor, tags=["unrelated"])
    page = await platform.blog_a.get("/v1/blogs", params={"tag": tag.lower()})
    assert [b["id"] for b in page.json()["items"]] == [tagged["id"]]
    assert page.json()["items"][0]["tags"] == [tag.upper(), "OTHER"]


async def test_similar_ranks_title_matches_first_and_excludes_itself(
    platform: Platform, author: dict[str, Any], editor: dict[str, Any]
) -> None:
    word = f"zebra{uuid.uuid4().hex[:6]}"
    base = await platform.published(
        author, editor, title=f"Training a {word} to code", description="Notes from the savannah"
    )
    in_title = await platform.published(
        author, editor, title=f"The {word} handbook", description="Everything about stripes"
    )
    in_description = await platform.published(
        author, editor, title="Unrelated heading", description=f"Mentions a {word} once"
    )
    unrelated = await platform.published(
        author, editor, title="Gardening in spring", description="Tomatoes and basil"
    )
    draft = await platform.draft(author, title=f"Draft {word} post")
    response = await platform.blog_a.get(f"/v1/blogs/{base['id']}/similar")
    ids = [b["id"] for b in response.json()["items"]]
    assert base["id"] not in ids
    assert draft["id"] not in ids
    assert unrelated["id"] not in ids
    assert ids.index(in_title["id"]) < ids.index(in_description["id"])
    assert len(ids) <= 6
    missing = await platform.blog_a.get(f"/v1/blogs/{draft['id']}/similar")
    assert missing.status_code == 404


async def test_pages_never_repeat_or_skip_while_blogs_are_published(
    platform: Platform, author: dict[str, Any], editor: dict[str, Any]
) -> None:
    tag = f"PAGE{uuid.uuid4().hex[:6]}"
    before = [await platform.published(author, editor, tags=[tag]) for _ in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"tag": tag, "limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await platform.blog_b.get("/v1/blogs", params=params)).json()
        seen += [b["id"] for b in page["items"]]
        # A newer blog appears between page requests: it belongs before page one.
        await platform.published(author, editor, tags=[tag])
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == [b["id"] for b in reversed(before)]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"cursor": "%%%"}, {"tag": ""}])
async def test_bad_listing_parameters(platform: Platform, params: dict[str, Any]) -> None:
    response = await platform.blog_a.get("/v1/blogs", params=params)
    assert response.status_code in (400, 422)
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_a_blank_tag_cannot_poison_the_unfiltered_first_page(
    platform: Platform, author: dict[str, Any], editor: dict[str, Any]
) -> None:
    await platform.published(author, editor)
    assert (await platform.blog_a.get("/v1/blogs", params={"tag": " "})).status_code == 422
    page = await platform.blog_b.get("/v1/blogs")
    assert page.json()["items"], "the unfiltered first page must list the published blogs"


async def test_a_draft_only_edit_of_a_published_blog_changes_nothing_public(
    platform: Platform, author: dict[str, Any], editor: dict[str, Any]
) -> None:
    blog = await platform.published(author, editor)
    path = f"/v1/blogs/{blog['id']}"
    await platform.blog_a.get(path)
    await platform.blog_a.patch(
        f"/v1/author/blogs/{blog['id']}",
        json={"draftText": "next version, unpublished"},
        headers=author["headers"],
    )
    after = await platform.blog_b.get(path)
    assert after.headers["x-cache"] == "HIT"  # nothing public changed, nothing was dropped
    assert after.json()["text"] == blog["text"]
