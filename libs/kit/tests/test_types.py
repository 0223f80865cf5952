"""The shared input types: no NUL in any text, reported like every other field error."""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import APIRouter, Query
from kit_support import build_app, client
from pydantic import Field

from mosaic_kit.types import NUL_MESSAGE, RequestBody, Text


class Inner(RequestBody):
    label_text: str


class Outer(RequestBody):
    title: str = Field(min_length=3)
    tags: list[str] = []
    inner: Inner | None = None
    extra: dict[str, Text] = {}


def _router() -> APIRouter:
    router = APIRouter()

    @router.post("/things")
    async def create(body: Outer) -> dict[str, str]:
        return {"title": body.title}

    @router.get("/things/{name}")
    async def find(
        name: Text, tag: Annotated[Text | None, Query(max_length=5)] = None
    ) -> dict[str, str | None]:
        return {"name": name, "tag": tag}

    return router


def _errors(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_failed"
    errors: list[dict[str, str]] = response.json()["errors"]
    return errors


async def test_nul_anywhere_in_a_body_names_the_field() -> None:
    async with client(build_app([_router()])) as c:
        for body, field in (
            ({"title": "\x00"}, "title"),  # before the length rule, which it also breaks
            ({"title": "abc", "tags": ["ok", "b\x00d"]}, "tags"),
            ({"title": "abc", "inner": {"labelText": "x\x00"}}, "inner.labelText"),
            ({"title": "abc", "extra": {"k": "v\x00"}}, "extra.k"),
        ):
            assert _errors(await c.post("/things", json=body)) == [
                {"field": field, "message": f"Value error, {NUL_MESSAGE}"}
            ]
        ok = await c.post("/things", json={"title": "abc", "inner": {"labelText": "fine"}})
    assert ok.status_code == 200


async def test_nul_in_a_text_parameter_names_it() -> None:
    async with client(build_app([_router()])) as c:
        path = await c.get("/things/a%00b")
        query = await c.get("/things/ab", params={"tag": "\x00"})
        ok = await c.get("/things/ab", params={"tag": "x"})
    assert _errors(path) == [{"field": "path.name", "message": f"Value error, {NUL_MESSAGE}"}]
    assert _errors(query) == [{"field": "query.tag", "message": f"Value error, {NUL_MESSAGE}"}]
    assert ok.json() == {"name": "ab", "tag": "x"}
