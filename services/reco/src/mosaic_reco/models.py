"""What the layers of the reco service hand each other (no framework types)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Reason = Literal["tag", "co_engagement", "trending", "similar"]


@dataclass(frozen=True)
class Card:
    """A live blog as recommendations show it."""

    blog_id: uuid.UUID
    slug: str
    title: str
    tags: list[str]
    author_id: uuid.UUID | None
    author_name: str | None
    published_at: datetime | None

    def view(self) -> dict[str, Any]:
        return {
            "id": str(self.blog_id),
            "slug": self.slug,
            "title": self.title,
            "tags": self.tags,
            "author": {
                "id": None if self.author_id is None else str(self.author_id),
                "name": self.author_name,
            },
            "publishedAt": None if self.published_at is None else self.published_at.isoformat(),
        }


@dataclass(frozen=True)
class Pick:
    """One recommended blog, its score and why it was picked."""

    card: Card
    score: float
    reason: Reason

    def view(self) -> dict[str, Any]:
        return {"blog": self.card.view(), "score": round(self.score, 6), "reason": self.reason}


@dataclass(frozen=True)
class Engagement:
    """What one reader did with one blog."""

    blog_id: uuid.UUID
    liked: bool
    bookmarked: bool
    reads: int
