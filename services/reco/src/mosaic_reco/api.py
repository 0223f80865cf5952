"""HTTP routes of the reco service (transport only: parse, call the service, shape the answer).

Each route says beside itself how the gateway exposes it (`through_gateway`); `mosaic up`
generates the gateway's routes from this service's OpenAPI. None is cached at the gateway: an
event that hides a blog reaches the gateway and this service's consumer separately, and a
cached list could outlive it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import Field

from mosaic_kit.fastapi.auth import current_principal
from mosaic_kit.fastapi.gateway import through_gateway
from mosaic_kit.fastapi.parts import Part
from mosaic_kit.openapi import TOKEN_PROBLEMS, route_responses
from mosaic_kit.tokens import Principal
from mosaic_kit.types import ResponseBody, Text
from mosaic_reco.models import Pick
from mosaic_reco.service import MAX_EXCLUDE, MAX_LIMIT, RecoService

SERVICE: Part[RecoService] = Part("the reco service")

Service = Annotated[RecoService, Depends(SERVICE)]
Caller = Annotated[Principal, Depends(current_principal)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="How many, at most.")]
Tag = Annotated[
    Text | None,
    Query(min_length=1, max_length=50, pattern=r"\S", description="Only blogs with this tag."),
]


class AuthorView(ResponseBody):
    id: uuid.UUID | None
    name: str | None


class CardView(ResponseBody):
    id: uuid.UUID
    slug: str
    title: str
    tags: list[str]
    author: AuthorView
    published_at: datetime | None


class PickView(ResponseBody):
    blog: CardView
    score: float
    reason: Literal["tag", "co_engagement", "trending", "similar"] = Field(
        description="Why it was picked."
    )


class Picks(ResponseBody):
    items: list[PickView]


def _picks(picks: list[Pick]) -> dict[str, Any]:
    return {"items": [pick.view() for pick in picks]}


router = APIRouter(prefix="/v1/recommendations", tags=["recommendations"])

# What needs no reader is open to third-party applications too: a client-credentials token with
# this scope stands in for the API key at the gateway (docs/gateway.md, "Security per route").
READ_SCOPES = ("recommendations:read",)


@router.get(
    "/me",
    openapi_extra=through_gateway(),
    summary="Blogs for the caller: co-engagement, tag affinity and recency, else trending",
    responses=route_responses(TOKEN_PROBLEMS, answer=Picks),
)
async def for_me(
    svc: Service,
    caller: Caller,
    limit: Limit = 10,
    exclude: Annotated[
        list[uuid.UUID] | None,
        Query(max_length=MAX_EXCLUDE, description="Blogs to leave out (repeatable)."),
    ] = None,
    tag: Tag = None,
) -> dict[str, Any]:
    user = uuid.UUID(caller.user_id)
    return _picks(await svc.for_user(user, limit, exclude or (), _tag(tag)))


@router.get(
    "/blogs/{blog_id}",
    openapi_extra=through_gateway(scopes=READ_SCOPES),
    summary="Readers also liked: co-engagement, else similar text",
    responses=route_responses({404: "reco.blog_not_found"}, answer=Picks),
)
async def also_liked(blog_id: uuid.UUID, svc: Service, limit: Limit = 10) -> dict[str, Any]:
    return _picks(await svc.also_liked(blog_id, limit))


@router.get(
    "/trending",
    openapi_extra=through_gateway(scopes=READ_SCOPES),
    summary="Blogs by their readers' recent signals, each decayed by its age",
    responses=route_responses(answer=Picks),
)
async def trending(
    svc: Service,
    tag: Tag = None,
    window: Annotated[
        Literal["24h", "7d", "30d"], Query(description="How far back signals count.")
    ] = "7d",
    limit: Limit = 10,
) -> dict[str, Any]:
    return _picks(await svc.trending(window, limit, _tag(tag)))


def _tag(tag: str | None) -> str | None:
    """Tags are stored upper-cased (as the blog service stores them)."""
    return None if tag is None else tag.strip().upper()
