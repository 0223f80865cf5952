"""The editorial workflow through the API: every legal step, every illegal one, who may act."""

from __future__ import annotations

from typing import Any

import pytest
from blog_support import Platform


async def _act(platform: Platform, who: dict[str, Any], blog_id: str, path: str) -> Any:
    return await platform.blog_a.post(
        f"/v1/{path}".replace("{id}", blog_id), headers=who["headers"]
    )


SUBMIT = "author/blogs/{id}/submit"
WITHDRAW = "author/blogs/{id}/withdraw"
PUBLISH = "editor/blogs/{id}/publish"
UNPUBLISH = "editor/blogs/{id}/unpublish"


async def test_the_full_cycle_and_published_at_is_set_once(
    platform: Platform, author: dict[str, Any], editor: dict[str, Any]
) -> None:
    blog = await platform.draft(author, draftText="First version")
    bid = blog["id"]
    submitted = await _act(platform, author, bid, SUBMIT)
    assert submitted.json()["state"] == "submitted"
    withdrawn = await _act(platform, author, bid, WITHDRAW)
    assert withdrawn.json()["state"] == "draft"
    await _act(platform, author, bid, SUBMIT)
    published = (await _act(platform, editor, bid, PUBLISH)).json()
    assert published["state"] == "published"
    assert published["text"] == "First version"
    first_published_at = published["publishedAt"]
    assert first_published_at is not None

    unpublished = (await _act(platform, editor, bid, UNPUBLISH)).json()
    assert unpublished["state"] == "draft"
    await platform.blog_a.patch(
        f"/v1/author/blogs/{bid}", json={"draftText": "Second version"}, headers=author["headers"]
    )
    await _act(platform, author, bid, SUBMIT)
    again = (await _act(platform, editor, bid, PUBLISH)).json()
    assert again["text"] == "Second version"
    assert again["publishedAt"] == first_published_at


@pytest.mark.parametrize(
    ("setup", "illegal"),
    [
        ([], WITHDRAW),
        ([], PUBLISH),
        ([], UNPUBLISH),
        ([SUBMIT], SUBMIT),
        ([SUBMIT], UNPUBLISH),
        ([SUBMIT, PUBLISH], SUBMIT),
        ([SUBMIT, PUBLISH], WITHDRAW),
        ([SUBMIT, PUBLISH], PUBLISH),
    ],
)
async def test_illegal_steps_are_409_and_change_nothing(
    platform: Platform,
    author: dict[str, Any],
    editor: dict[str, Any],
    setup: list[str],
    illegal: str,
) -> None:
    blog = await platform.draft(author)
    for step in setup:
        who = editor if step.startswith("editor") else author
        assert (await _act(platform, who, blog["id"], step)).status_code == 200
    before = (
        await platform.blog_a.get(f"/v1/editor/blogs/{blog['id']}", headers=editor["headers"])
    ).json()
    who = editor if illegal.startswith("editor") else author
    response = await _act(platform, who, blog["id"], illegal)
    assert response.status_code == 409
    assert response.json()["code"] == "blog.bad_state"
    after = (
        await platform.blog_a.get(f"/v1/editor/blogs/{blog['id']}", headers=editor["headers"])
    ).json()
    assert after == before


async def test_only_editors_publish_and_only_authors_submit(
    platform: Platform, author: dict[str, Any], editor: dict[str, Any]
) -> None:
    blog = await platform.draft(author)
    assert (await _act(platform, editor, blog["id"], SUBMIT)).status_code == 403
    await _act(platform, author, blog["id"], SUBMIT)
    denied = await _act(platform, author, blog["id"], PUBLISH)
    assert denied.status_code == 403
    anonymous = await platform.blog_a.post(f"/v1/editor/blogs/{blog['id']}/publish")
    assert anonymous.status_code == 401
    admin = await platform.user("ADMIN")
    admin_only = await platform.blog_a.post(
        f"/v1/editor/blogs/{blog['id']}/publish", headers=admin["headers"]
    )
    assert admin_only.status_code == 403  # ADMIN is not implicitly EDITOR


async def test_editors_see_every_authors_submissions_but_not_drafts(
    platform: Platform, editor: dict[str, Any]
) -> None:
    writer = await platform.user("AUTHOR")
    draft = await platform.draft(writer)
    submitted = await platform.draft(writer)
    await _act(platform, writer, submitted["id"], SUBMIT)
    queue = await platform.blog_a.get(
        "/v1/editor/blogs", params={"state": "submitted", "limit": 100}, headers=editor["headers"]
    )
    ids = {b["id"] for b in queue.json()["items"]}
    assert submitted["id"] in ids
    assert draft["id"] not in ids
    drafts = await platform.blog_a.get(
        "/v1/editor/blogs", params={"state": "draft"}, headers=editor["headers"]
    )
    assert drafts.status_code == 422
    one = await platform.blog_a.get(f"/v1/editor/blogs/{draft['id']}", headers=editor["headers"])
    assert one.status_code == 200
    assert one.json()["draftText"] == draft["draftText"]
