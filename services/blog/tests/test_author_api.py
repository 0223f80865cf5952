"""Authoring routes: create, read, list, edit, delete — with good and bad input."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from blog_support import Platform, blog_body

PROBLEM = "application/problem+json"


async def test_create_makes_a_normalised_draft(platform: Platform, author: dict[str, Any]) -> None:
    slug = f"My New Post {uuid.uuid4().hex[:6]}"
    created = await platform.draft(author, slug=slug, tags=["python", " Cloud ", "PYTHON"])
    assert created["state"] == "draft"
    assert created["slug"] == slug.lower().replace(" ", "-")
    assert created["tags"] == ["PYTHON", "CLOUD"]
    assert created["text"] is None
    assert created["publishedAt"] is None
    assert created["author"] == {
        "id": author["user"]["id"],
        "name": "Ada Author",
        "profilePicUrl": None,
    }
    again = await platform.blog_b.get(
        f"/v1/author/blogs/{created['id']}", headers=author["headers"]
    )
    assert again.status_code == 200
    assert again.json() == created


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"title": "ab"}, "title"),
        ({"title": "x" * 501}, "title"),
        ({"description": "no"}, "description"),
        ({"description": "d" * 2001}, "description"),
        ({"draftText": "t" * 50_001}, "draftText"),
        ({"slug": "ab"}, "slug"),
        ({"slug": "not/valid"}, "slug"),
        ({"imgUrl": "ftp://files.example.com/a.png"}, "imgUrl"),
        ({"imgUrl": "not a url"}, "imgUrl"),
        ({"tags": []}, "tags"),
        ({"tags": [f"t{i}" for i in range(11)]}, "tags"),
        ({"tags": ["x" * 51]}, "tags.0"),
        ({"tags": ["ß" * 30]}, "tags"),
        ({"title": None}, "title"),
    ],
)
async def test_create_rejects_each_invalid_field(
    platform: Platform, author: dict[str, Any], override: dict[str, Any], field: str
) -> None:
    body = blog_body(**override)
    if override.get("title", "") is None:
        del body["title"]
    response = await platform.blog_a.post("/v1/author/blogs", json=body, headers=author["headers"])
    assert response.status_code == 422
    assert response.headers["content-type"].startswith(PROBLEM)
    assert field in {e["field"] for e in response.json()["errors"]}
    mine = await platform.blog_a.get(
        "/v1/author/blogs", params={"limit": 100}, headers=author["headers"]
    )
    assert body["slug"] not in {b["slug"] for b in mine.json()["items"]}


async def test_authoring_needs_a_token_and_the_author_role(platform: Platform) -> None:
    learner = await platform.user()
    editor_only = await platform.user("EDITOR")
    body = blog_body()
    assert (await platform.blog_a.post("/v1/author/blogs", json=body)).status_code == 401
    for who in (learner, editor_only):
        denied = await platform.blog_a.post("/v1/author/blogs", json=body, headers=who["headers"])
        assert denied.status_code == 403
        assert denied.json()["code"] == "auth.forbidden"
    forged = await platform.blog_a.post(
        "/v1/author/blogs", json=body, headers={"Authorization": "Bearer not.a.token"}
    )
    assert forged.status_code == 401


async def test_another_authors_blog_does_not_exist_for_me(
    platform: Platform, author: dict[str, Any]
) -> None:
    other = await platform.user("AUTHOR")
    theirs = await platform.draft(other)
    path = f"/v1/author/blogs/{theirs['id']}"
    hdr = author["headers"]
    assert (await platform.blog_a.get(path, headers=hdr)).status_code == 404
    assert (
        await platform.blog_a.patch(path, json={"title": "Hijack"}, headers=hdr)
    ).status_code == 404
    assert (await platform.blog_a.delete(path, headers=hdr)).status_code == 404
    assert (await platform.blog_a.post(f"{path}/submit", headers=hdr)).status_code == 404
    untouched = await platform.blog_a.get(path, headers=other["headers"])
    assert untouched.json()["title"] == theirs["title"]
    assert untouched.json()["state"] == "draft"


async def test_duplicate_slug_is_409(platform: Platform, author: dict[str, Any]) -> None:
    slug = f"taken-{uuid.uuid4().hex[:8]}"
    await platform.draft(author, slug=slug)
    again = await platform.blog_a.post(
        "/v1/author/blogs", json=blog_body(slug=slug.upper()), headers=author["headers"]
    )
    assert again.status_code == 409
    assert again.json()["code"] == "blog.slug_taken"
    other = await platform.draft(author)
    clash = await platform.blog_a.patch(
        f"/v1/author/blogs/{other['id']}", json={"slug": slug}, headers=author["headers"]
    )
    assert clash.status_code == 409


async def test_idempotency_key_makes_one_blog(platform: Platform, author: dict[str, Any]) -> None:
    body = blog_body()
    hdr = {**author["headers"], "Idempotency-Key": uuid.uuid4().hex}
    first = await platform.blog_a.post("/v1/author/blogs", json=body, headers=hdr)
    second = await platform.blog_b.post("/v1/author/blogs", json=body, headers=hdr)
    assert first.status_code == second.status_code == 201
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    mine = await platform.blog_a.get(
        "/v1/author/blogs", params={"limit": 100}, headers=author["headers"]
    )
    assert [b["slug"] for b in mine.json()["items"]].count(body["slug"]) == 1


async def test_edit_changes_only_what_is_sent(platform: Platform, author: dict[str, Any]) -> None:
    blog = await platform.draft(author)
    path = f"/v1/author/blogs/{blog['id']}"
    edited = await platform.blog_a.patch(
        path, json={"title": "A better title", "tags": ["new"]}, headers=author["headers"]
    )
    assert edited.status_code == 200
    body = edited.json()
    assert body["title"] == "A better title"
    assert body["tags"] == ["NEW"]
    assert body["description"] == blog["description"]
    assert body["updatedAt"] > blog["updatedAt"]
    bad = await platform.blog_a.patch(path, json={"title": "x"}, headers=author["headers"])
    assert bad.status_code == 422
    assert (await platform.blog_a.get(path, headers=author["headers"])).json()[
        "title"
    ] == "A better title"


async def test_delete_is_soft_and_frees_the_slug(
    platform: Platform, author: dict[str, Any]
) -> None:
    blog = await platform.draft(author)
    path = f"/v1/author/blogs/{blog['id']}"
    assert (await platform.blog_a.delete(path, headers=author["headers"])).status_code == 204
    assert (await platform.blog_a.get(path, headers=author["headers"])).status_code == 404
    assert (await platform.blog_a.delete(path, headers=author["headers"])).status_code == 404
    reused = await platform.blog_a.post(
        "/v1/author/blogs", json=blog_body(slug=blog["slug"]), headers=author["headers"]
    )
    assert reused.status_code == 201


async def test_own_list_filters_by_state_and_pages(platform: Platform) -> None:
    writer = await platform.user("AUTHOR")
    made = [await platform.draft(writer) for _ in range(5)]
    await platform.blog_a.post(
        f"/v1/author/blogs/{made[0]['id']}/submit", headers=writer["headers"]
    )
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (
            await platform.blog_a.get("/v1/author/blogs", params=params, headers=writer["headers"])
        ).json()
        seen += [b["id"] for b in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == [b["id"] for b in reversed(made)]
    submitted = await platform.blog_a.get(
        "/v1/author/blogs", params={"state": "submitted"}, headers=writer["headers"]
    )
    assert [b["id"] for b in submitted.json()["items"]] == [made[0]["id"]]
    bad = await platform.blog_a.get(
        "/v1/author/blogs", params={"state": "lost"}, headers=writer["headers"]
    )
    assert bad.status_code == 422
