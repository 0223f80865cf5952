"""HTTP routes of the blog service (transport only: parse, call the service, shape the answer)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import AnyHttpUrl, Field, StringConstraints, field_validator

from mosaic_blog.service import BlogService, Page, normalise_slug, normalise_tags, valid_slug
from mosaic_blog.workflow import Action, State
from mosaic_kit.fastapi.auth import current_principal, require_roles
from mosaic_kit.fastapi.gateway import through_gateway
from mosaic_kit.fastapi.idempotency import IdempotencyGuard
from mosaic_kit.fastapi.parts import Part
from mosaic_kit.openapi import (
    CURSOR_PROBLEMS,
    IDEMPOTENCY_PROBLEMS,
    ROLE_PROBLEMS,
    TOKEN_PROBLEMS,
    route_responses,
)
from mosaic_kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from mosaic_kit.tokens import Principal
from mosaic_kit.types import RequestBody, ResponseBody, Text

Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=500)]
Description = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=3, max_length=2000)
]
DraftText = Annotated[str, StringConstraints(max_length=50_000)]
ImgUrl = Annotated[AnyHttpUrl, Field(max_length=2000)]
MAX_TAG_LENGTH = 50
Tag = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TAG_LENGTH)
]
Tags = Annotated[list[Tag], Field(min_length=1, max_length=10)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[Text | None, Query(max_length=500)]
JSON = "application/json"

# A draft's text is up to 50,000 characters, which JSON may escape to six bytes each.
BLOG_JSON = "512KiB"
# Public reads are cached at the gateway and dropped by the events that change what they show:
# the blog's own (publish, update, unpublish, delete) at once, and for the views of single blogs,
# which show like counts, likes too (a reader's other signals change no public view). An
# author's new name reaches the blog's read model by an event the gateway sees too, possibly
# before this service has applied it, so such a change may show up to one TTL late; hence a short
# TTL. A new event type that changes what the public sees must be added here.
_BLOG_CHANGES = [
    "blog.blog.published",
    "blog.blog.updated",
    "blog.blog.unpublished",
    "blog.blog.deleted",
    "auth.user.updated",
]
PUBLIC_READ_CACHE: dict[str, Any] = {
    "ttl": "10s",
    "vary_headers": ["accept"],
    "invalidate_on": _BLOG_CHANGES,
}
BLOG_VIEW_CACHE: dict[str, Any] = {
    **PUBLIC_READ_CACHE,
    "invalidate_on": [*_BLOG_CHANGES, "blog.blog.liked", "blog.blog.unliked"],
}


def _slug(value: str) -> str:
    slug = normalise_slug(value)
    if not valid_slug(slug):
        raise ValueError("a slug is 3-200 characters of a-z, 0-9 and '-'")
    return slug


def _tags(value: list[str]) -> list[str]:
    tags = normalise_tags(value)
    # Upper-casing can lengthen a tag ("ß" -> "SS"): the limit applies to what is stored.
    if any(len(t) > MAX_TAG_LENGTH for t in tags):
        raise ValueError(f"a tag is at most {MAX_TAG_LENGTH} characters")
    return tags


class BlogCreate(RequestBody):
    title: Title
    description: Description
    draft_text: DraftText = ""
    slug: Annotated[str, StringConstraints(max_length=400)]
    img_url: ImgUrl
    tags: Tags

    _check_slug = field_validator("slug")(_slug)
    _check_tags = field_validator("tags")(_tags)


class BlogPatch(RequestBody):
    title: Title | None = None
    description: Description | None = None
    draft_text: DraftText | None = None
    slug: Annotated[str, StringConstraints(max_length=400)] | None = None
    img_url: ImgUrl | None = None
    tags: Tags | None = None

    @field_validator("slug")
    @classmethod
    def _check_slug(cls, value: str | None) -> str | None:
        return None if value is None else _slug(value)

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _tags(value)


# --- answers: documentation only (the handlers build the views in models.py; the contract
# fuzzing in tests/contract checks the real answers against these) ---------------------------


class AuthorView(ResponseBody):
    id: uuid.UUID
    name: str | None = Field(description="null until the blog service has the profile.")
    profile_pic_url: str | None


class PublicBlog(ResponseBody):
    id: uuid.UUID
    slug: str
    title: str
    description: str
    text: str | None = Field(description="The published text; null before the first publish.")
    tags: list[str]
    img_url: str
    author: AuthorView
    score: int
    published_at: datetime | None
    created_at: datetime
    updated_at: datetime


class BlogDetail(PublicBlog):
    likes: int = Field(ge=0, description="How many readers like it.")


class FullBlog(BlogDetail):
    draft_text: str
    state: State


class Liked(ResponseBody):
    liked: bool
    likes: int = Field(ge=0, description="Its like count after this request.")


class PublicPage(ResponseBody):
    items: list[PublicBlog]
    next_cursor: str | None


class Similar(ResponseBody):
    items: list[PublicBlog] = Field(max_length=6)


class FullPage(ResponseBody):
    items: list[FullBlog]
    next_cursor: str | None


SERVICE: Part[BlogService] = Part("the blog service")

Service = Annotated[BlogService, Depends(SERVICE)]
Reader = Annotated[Principal, Depends(current_principal)]
Author = Annotated[Principal, Depends(require_roles("AUTHOR"))]
Editor = Annotated[Principal, Depends(require_roles("EDITOR"))]


def _uid(principal: Principal) -> uuid.UUID:
    return uuid.UUID(principal.user_id)


def _page(page: Page) -> dict[str, Any]:
    return {"items": [b.full_view() for b in page.items], "nextCursor": page.next_cursor}


def _cached(body: bytes, hit: bool) -> Response:
    return Response(body, media_type=JSON, headers={"X-Cache": "HIT" if hit else "MISS"})


def _columns(fields: dict[str, Any]) -> dict[str, Any]:
    names = {"draftText": "draft_text", "imgUrl": "img_url"}
    out = {}
    for key, value in fields.items():
        out[names.get(key, key)] = str(value) if key == "imgUrl" else value
    return out


router = APIRouter(prefix="/v1")


# An author's or editor's blog by id (another author's is not found).
MINE = route_responses(ROLE_PROBLEMS, {404: "blog.not_found"}, answer=FullBlog)
TRANSITION = route_responses(
    ROLE_PROBLEMS, {404: "blog.not_found", 409: "blog.bad_state"}, answer=FullBlog
)

# --- public -------------------------------------------------------------------------------------

# Published blogs are open to third-party applications too: a client-credentials token with this
# scope stands in for the API key at the gateway (docs/gateway.md, "Security per route").
READ_SCOPES = ("blogs:read",)


@router.get(
    "/blogs",
    openapi_extra=through_gateway(scopes=READ_SCOPES, cache=PUBLIC_READ_CACHE),
    tags=["public"],
    summary="Published blogs, newest first",
    responses=route_responses(CURSOR_PROBLEMS, answer=PublicPage),
)
async def list_blogs(
    svc: Service,
    tag: Annotated[Text | None, Query(min_length=1, max_length=50, pattern=r"\S")] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> Response:
    return _cached(*await svc.public_list(tag, limit, cursor))


@router.get(
    "/blogs/by-slug/{slug}",
    openapi_extra=through_gateway(scopes=READ_SCOPES, cache=BLOG_VIEW_CACHE),
    tags=["public"],
    summary="A published blog by its slug",
    responses=route_responses({404: "blog.not_found"}, answer=BlogDetail),
)
async def blog_by_slug(
    slug: Annotated[Text, StringConstraints(max_length=200)], svc: Service
) -> Response:
    return _cached(*await svc.public_by_slug(slug.lower()))


@router.get(
    "/blogs/{blog_id}",
    openapi_extra=through_gateway(scopes=READ_SCOPES, cache=BLOG_VIEW_CACHE),
    tags=["public"],
    summary="A published blog",
    responses=route_responses({404: "blog.not_found"}, answer=BlogDetail),
)
async def blog_by_id(blog_id: uuid.UUID, svc: Service) -> Response:
    return _cached(*await svc.public_by_id(blog_id))


@router.get(
    "/blogs/{blog_id}/similar",
    openapi_extra=through_gateway(scopes=READ_SCOPES, cache=PUBLIC_READ_CACHE),
    tags=["public"],
    summary="Up to 6 published blogs most like it",
    responses=route_responses({404: "blog.not_found"}, answer=Similar),
)
async def similar_blogs(blog_id: uuid.UUID, svc: Service) -> Response:
    return _cached(*await svc.similar(blog_id))


# --- readers' signals ---------------------------------------------------------------------------

SIGNAL = route_responses(TOKEN_PROBLEMS, {404: "blog.not_found"})


@router.put(
    "/blogs/{blog_id}/like",
    openapi_extra=through_gateway(),
    tags=["readers"],
    summary="Like a published blog (again: no change)",
    responses=route_responses(TOKEN_PROBLEMS, {404: "blog.not_found"}, answer=Liked),
)
async def like_blog(blog_id: uuid.UUID, svc: Service, reader: Reader) -> dict[str, Any]:
    return {"liked": True, "likes": await svc.like(_uid(reader), blog_id, True)}


@router.delete(
    "/blogs/{blog_id}/like",
    openapi_extra=through_gateway(),
    tags=["readers"],
    summary="Take back a like (none: no change)",
    responses=route_responses(TOKEN_PROBLEMS, {404: "blog.not_found"}, answer=Liked),
)
async def unlike_blog(blog_id: uuid.UUID, svc: Service, reader: Reader) -> dict[str, Any]:
    return {"liked": False, "likes": await svc.like(_uid(reader), blog_id, False)}


@router.put(
    "/blogs/{blog_id}/bookmark",
    openapi_extra=through_gateway(),
    status_code=204,
    tags=["readers"],
    summary="Bookmark a published blog (again: no change)",
    responses=SIGNAL,
)
async def bookmark_blog(blog_id: uuid.UUID, svc: Service, reader: Reader) -> Response:
    await svc.bookmark(_uid(reader), blog_id, True)
    return Response(status_code=204)


@router.delete(
    "/blogs/{blog_id}/bookmark",
    openapi_extra=through_gateway(),
    status_code=204,
    tags=["readers"],
    summary="Remove a bookmark (none: no change)",
    responses=SIGNAL,
)
async def unbookmark_blog(blog_id: uuid.UUID, svc: Service, reader: Reader) -> Response:
    await svc.bookmark(_uid(reader), blog_id, False)
    return Response(status_code=204)


@router.post(
    "/blogs/{blog_id}/reads",
    openapi_extra=through_gateway(),
    status_code=204,
    tags=["readers"],
    summary="Record that I read a published blog (once a day counts)",
    responses=SIGNAL,
)
async def read_blog(blog_id: uuid.UUID, svc: Service, reader: Reader) -> Response:
    await svc.read(_uid(reader), blog_id)
    return Response(status_code=204)


# --- authors ------------------------------------------------------------------------------------


@router.post(
    "/author/blogs",
    openapi_extra=through_gateway(body=BLOG_JSON),
    status_code=201,
    tags=["author"],
    summary="Write a new draft",
    responses=route_responses(
        ROLE_PROBLEMS,
        IDEMPOTENCY_PROBLEMS,
        {409: "blog.slug_taken"},
        answer=FullBlog,
        status=201,
    ),
)
async def create_blog(
    body: BlogCreate, svc: Service, author: Author, idem: IdempotencyGuard
) -> Response:
    async def create() -> dict[str, Any]:
        fields = _columns(body.model_dump(by_alias=True))
        return (await svc.create(_uid(author), fields)).full_view()

    return await idem.run(body.model_dump(mode="json"), create)


@router.get(
    "/author/blogs",
    openapi_extra=through_gateway(),
    tags=["author"],
    summary="My blogs",
    responses=route_responses(ROLE_PROBLEMS, CURSOR_PROBLEMS, answer=FullPage),
)
async def my_blogs(
    svc: Service,
    author: Author,
    state: State | None = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    return _page(await svc.list_own(_uid(author), state, limit, cursor))


@router.get(
    "/author/blogs/{blog_id}",
    openapi_extra=through_gateway(),
    tags=["author"],
    summary="One of my blogs, any state",
    responses=MINE,
)
async def my_blog(blog_id: uuid.UUID, svc: Service, author: Author) -> dict[str, Any]:
    return (await svc.own(_uid(author), blog_id)).full_view()


@router.patch(
    "/author/blogs/{blog_id}",
    openapi_extra=through_gateway(body=BLOG_JSON),
    tags=["author"],
    summary="Change my blog's fields",
    responses=route_responses(
        ROLE_PROBLEMS, {404: "blog.not_found", 409: "blog.slug_taken"}, answer=FullBlog
    ),
)
async def edit_blog(
    blog_id: uuid.UUID, body: BlogPatch, svc: Service, author: Author
) -> dict[str, Any]:
    changes = _columns({k: v for k, v in body.model_dump(by_alias=True).items() if v is not None})
    return (await svc.edit(_uid(author), blog_id, changes)).full_view()


@router.delete(
    "/author/blogs/{blog_id}",
    openapi_extra=through_gateway(),
    status_code=204,
    tags=["author"],
    summary="Delete my blog",
    responses=route_responses(ROLE_PROBLEMS, {404: "blog.not_found"}),
)
async def delete_blog(blog_id: uuid.UUID, svc: Service, author: Author) -> Response:
    await svc.delete(_uid(author), blog_id)
    return Response(status_code=204)


@router.post(
    "/author/blogs/{blog_id}/submit",
    openapi_extra=through_gateway(),
    tags=["author"],
    summary="Submit for review",
    responses=TRANSITION,
)
async def submit_blog(blog_id: uuid.UUID, svc: Service, author: Author) -> dict[str, Any]:
    return (await svc.transition(blog_id, Action.SUBMIT, author_id=_uid(author))).full_view()


@router.post(
    "/author/blogs/{blog_id}/withdraw",
    openapi_extra=through_gateway(),
    tags=["author"],
    summary="Take back a submission",
    responses=TRANSITION,
)
async def withdraw_blog(blog_id: uuid.UUID, svc: Service, author: Author) -> dict[str, Any]:
    return (await svc.transition(blog_id, Action.WITHDRAW, author_id=_uid(author))).full_view()


# --- editors ------------------------------------------------------------------------------------


@router.get(
    "/editor/blogs",
    openapi_extra=through_gateway(),
    tags=["editor"],
    summary="Every author's blogs awaiting or published",
    responses=route_responses(ROLE_PROBLEMS, CURSOR_PROBLEMS, answer=FullPage),
)
async def editor_blogs(
    svc: Service,
    _editor: Editor,
    state: Literal["submitted", "published"] | None = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    # Drafts are their authors' business until submitted.
    states = [State(state)] if state else [State.SUBMITTED, State.PUBLISHED]
    return _page(await svc.list_for_editors(states, limit, cursor))


@router.get(
    "/editor/blogs/{blog_id}",
    openapi_extra=through_gateway(),
    tags=["editor"],
    summary="Any blog",
    responses=MINE,
)
async def editor_blog(blog_id: uuid.UUID, svc: Service, _editor: Editor) -> dict[str, Any]:
    return (await svc.any_blog(blog_id)).full_view()


@router.post(
    "/editor/blogs/{blog_id}/publish",
    openapi_extra=through_gateway(),
    tags=["editor"],
    summary="Publish a submission",
    responses=TRANSITION,
)
async def publish_blog(blog_id: uuid.UUID, svc: Service, _editor: Editor) -> dict[str, Any]:
    return (await svc.transition(blog_id, Action.PUBLISH)).full_view()


@router.post(
    "/editor/blogs/{blog_id}/unpublish",
    openapi_extra=through_gateway(),
    tags=["editor"],
    summary="Take a blog back to draft",
    responses=TRANSITION,
)
async def unpublish_blog(blog_id: uuid.UUID, svc: Service, _editor: Editor) -> dict[str, Any]:
    return (await svc.transition(blog_id, Action.UNPUBLISH)).full_view()
