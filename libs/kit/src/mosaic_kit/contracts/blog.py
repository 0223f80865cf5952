"""The blog service's events, which other services consume (the gateway's cache, recommenders)."""

from __future__ import annotations

import uuid
from typing import ClassVar

from mosaic_kit.events import EventPayload, Timestamp

__all__ = [
    "BLOG_EVENTS",
    "BlogDeleted",
    "BlogPublished",
    "BlogUnpublished",
    "BlogUpdated",
    "BlogView",
]


class BlogView(EventPayload):
    """What the public sees of a published blog (not its text)."""

    id: uuid.UUID
    slug: str
    title: str
    description: str
    tags: list[str]
    author_id: uuid.UUID
    published_at: Timestamp | None


class BlogPublished(BlogView):
    """`blog.blog.published`: an editor published it; the public can read it now."""

    TYPE: ClassVar[str] = "blog.blog.published"


class BlogUpdated(BlogView):
    """`blog.blog.updated`: a published blog's public fields changed."""

    TYPE: ClassVar[str] = "blog.blog.updated"


class BlogUnpublished(EventPayload):
    """`blog.blog.unpublished`: it went back to draft; the public cannot read it any more."""

    TYPE: ClassVar[str] = "blog.blog.unpublished"
    id: uuid.UUID


class BlogDeleted(EventPayload):
    """`blog.blog.deleted`: its author deleted it."""

    TYPE: ClassVar[str] = "blog.blog.deleted"
    id: uuid.UUID
    was_public: bool


BLOG_EVENTS: tuple[type[EventPayload], ...] = (
    BlogPublished,
    BlogUpdated,
    BlogUnpublished,
    BlogDeleted,
)
"""Every event blog publishes."""
