"""The blog service's events, which other services consume (the gateway's cache, recommenders):
what happens to blogs, and what readers do with them (likes, bookmarks, reads)."""

from __future__ import annotations

import uuid
from datetime import date
from typing import ClassVar

from mosaic_kit.events import EventPayload, Timestamp

__all__ = [
    "BLOG_EVENTS",
    "BlogBookmarked",
    "BlogDeleted",
    "BlogLiked",
    "BlogPublished",
    "BlogRead",
    "BlogSignal",
    "BlogUnbookmarked",
    "BlogUnliked",
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


class BlogSignal(EventPayload):
    """A reader's signal on a published blog. Published only when it changes something: liking
    a blog twice is one `liked` event, unliking a blog not liked is none."""

    blog_id: uuid.UUID
    user_id: uuid.UUID


class BlogLiked(BlogSignal):
    """`blog.blog.liked`: a reader likes it; `likes` is its count after this like."""

    TYPE: ClassVar[str] = "blog.blog.liked"
    likes: int


class BlogUnliked(BlogSignal):
    """`blog.blog.unliked`: a reader took their like back; `likes` is its count after."""

    TYPE: ClassVar[str] = "blog.blog.unliked"
    likes: int


class BlogBookmarked(BlogSignal):
    """`blog.blog.bookmarked`: a reader kept it for later (private to them)."""

    TYPE: ClassVar[str] = "blog.blog.bookmarked"


class BlogUnbookmarked(BlogSignal):
    """`blog.blog.unbookmarked`: a reader removed their bookmark."""

    TYPE: ClassVar[str] = "blog.blog.unbookmarked"


class BlogRead(BlogSignal):
    """`blog.blog.read`: a reader read it; at most one per reader, blog and UTC `day`."""

    TYPE: ClassVar[str] = "blog.blog.read"
    day: date


BLOG_EVENTS: tuple[type[EventPayload], ...] = (
    BlogPublished,
    BlogUpdated,
    BlogUnpublished,
    BlogDeleted,
    BlogLiked,
    BlogUnliked,
    BlogBookmarked,
    BlogUnbookmarked,
    BlogRead,
)
"""Every event blog publishes."""
