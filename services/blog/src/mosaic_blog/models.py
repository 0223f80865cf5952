"""What the blog service's layers hand each other (no framework types)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mosaic_blog.workflow import State


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass(frozen=True)
class Author:
    id: uuid.UUID
    name: str | None
    profile_pic_url: str | None

    def view(self) -> dict[str, Any]:
        return {"id": str(self.id), "name": self.name, "profilePicUrl": self.profile_pic_url}


@dataclass(frozen=True)
class Blog:
    id: uuid.UUID
    slug: str
    title: str
    description: str
    text: str | None
    draft_text: str
    tags: list[str]
    img_url: str
    author: Author
    state: State
    score: int
    published_at: datetime | None
    created_at: datetime
    updated_at: datetime
    likes: int = 0

    @property
    def is_public(self) -> bool:
        return self.state is State.PUBLISHED

    def public_view(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "slug": self.slug,
            "title": self.title,
            "description": self.description,
            "text": self.text,
            "tags": self.tags,
            "imgUrl": self.img_url,
            "author": self.author.view(),
            "score": self.score,
            "publishedAt": _iso(self.published_at),
            "createdAt": _iso(self.created_at),
            "updatedAt": _iso(self.updated_at),
        }

    def detail_view(self) -> dict[str, Any]:
        """The public view of this one blog: with its like count (lists leave it out, so a like
        changes only the cached views of single blogs)."""
        return {**self.public_view(), "likes": self.likes}

    def full_view(self) -> dict[str, Any]:
        return {**self.detail_view(), "draftText": self.draft_text, "state": self.state.value}
