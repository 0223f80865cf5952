"""A NUL character (U+0000) in any text input is a 422 naming the field, and changes nothing.

PostgreSQL cannot store or compare text holding NUL; before the rule in `mosaic_kit.types` each of
these requests was a 500 from the database driver.
"""

from __future__ import annotations

from typing import Any

import httpx
from blog_support import Platform, blog_body
from kit_support import row_counts

from mosaic_kit.fastapi.parts import DATABASE

NUL = "\x00"
NUL_MESSAGE = "Value error, must not contain the NUL character (U+0000)"


# Written only by the consumer of auth's events, which keeps applying the fixtures' sign-ups while
# the test runs: no request writes them, so their counts say nothing about the requests.
_EVENT_TABLES = frozenset({"authors", "processed_events"})


async def _row_counts(platform: Platform) -> dict[str, int]:
    """Rows of every table a request can write."""
    return await row_counts(DATABASE.of(platform.blog_apps[0]), _EVENT_TABLES)  # type: ignore[attr-defined]


def _assert_names(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "validation_failed"
    assert {"field": field, "message": NUL_MESSAGE} in body["errors"]


async def test_nul_in_any_text_input_is_422_naming_the_field_and_writes_nothing(
    platform: Platform, author: dict[str, Any], editor: dict[str, Any]
) -> None:
    blog = await platform.draft(author)
    headers = author["headers"]
    cases: list[tuple[str, str, dict[str, Any], str]] = []
    for field in ("title", "description", "draftText", "slug", "imgUrl", "tags"):
        good = blog_body()
        bad: Any = [good[field][0], "PY" + NUL + "THON"] if field == "tags" else good[field]
        if field != "tags":
            bad = bad[:4] + NUL + bad[4:]
        create = {"json": {**good, field: bad}, "headers": headers}
        cases.append(("POST", "/v1/author/blogs", create, field))
        edit = {"json": {field: bad}, "headers": headers}
        cases.append(("PATCH", f"/v1/author/blogs/{blog['id']}", edit, field))
    for param in ("tag", "cursor"):
        cases.append(("GET", "/v1/blogs", {"params": {param: "ab" + NUL}}, f"query.{param}"))
    cases.append(("GET", "/v1/blogs/by-slug/ab%00cd", {}, "path.slug"))
    mine = {"params": {"cursor": NUL}, "headers": headers}
    cases.append(("GET", "/v1/author/blogs", mine, "query.cursor"))
    theirs = {"params": {"cursor": NUL}, "headers": editor["headers"]}
    cases.append(("GET", "/v1/editor/blogs", theirs, "query.cursor"))

    before = await _row_counts(platform)
    for method, path, kwargs, field in cases:
        _assert_names(await platform.blog_a.request(method, path, **kwargs), field)
    assert await _row_counts(platform) == before
    unchanged = await platform.blog_a.get(f"/v1/author/blogs/{blog['id']}", headers=headers)
    assert unchanged.json() == blog
