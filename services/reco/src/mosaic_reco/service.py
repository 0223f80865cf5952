"""The reco service's rules: the read model its consumers keep, and the recommendations.

No FastAPI and no SQL here (an import contract checks it). Everything it knows arrives by events
(blog's and auth's), applied once each by durable consumers, in any order (each row keeps the time
of the event it reflects): it never calls another service while answering, so it answers while
they are down, and its read model can be rebuilt from the streams.

For a reader, `for_user` blends three signals over candidates the reader has not engaged with
and did not write:

- **co-engagement** ("readers who liked what you liked"): for each blog the reader liked or
  bookmarked, the blogs most often liked by the same readers, tempered by their popularity
  (`both / sqrt(likes)`), so a blog everybody likes does not crowd out the specific ones;
- **tag affinity**: the share of the reader's tag weight (likes and bookmarks 1, reads 0.3) that a
  candidate's tags carry;
- **recency**: halves every 30 days since publication.

A cold start (no usable signal) falls back to trending in the reader's tags, then overall.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from mosaic_kit.contracts import blog as blog_contracts
from mosaic_kit.contracts.auth import UserCreated, UserProfile, UserUpdated
from mosaic_kit.contracts.blog import (
    BlogBookmarked,
    BlogDeleted,
    BlogLiked,
    BlogPublished,
    BlogRead,
    BlogUnbookmarked,
    BlogUnliked,
    BlogUnpublished,
    BlogUpdated,
)
from mosaic_kit.events import Event
from mosaic_kit.logging import get_logger
from mosaic_kit.problem import Problem, not_found
from mosaic_kit.sql.db import Connection, Database
from mosaic_reco import store
from mosaic_reco.models import Card, Pick, Reason

log = get_logger("mosaic_reco.service")

MAX_LIMIT = 50
MAX_EXCLUDE = 100
WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
BLOG_EVENTS = blog_contracts.BLOG_EVENTS  # all of them: blogs and readers' signals
USER_EVENTS: tuple[type[UserProfile], ...] = (UserCreated, UserUpdated)

# The blend (see the module's docstring).
W_CO, W_TAG, W_RECENT = 0.6, 0.3, 0.1
RECENCY_HALF_LIFE_DAYS = 30.0
SEEDS = 50  # the reader's most recent signals that seed co-engagement
CO_LIKE_WINDOW = 20  # a reader's most recent likes that count towards co-likes
PER_SEED = 20  # neighbours read per seed
TAG_POOL = 100  # newest live cards with the reader's top tags read per request
_TYPES = {model.TYPE: model for model in (*BLOG_EVENTS, *USER_EVENTS)}


def blog_not_found() -> Problem:
    return not_found("reco.blog_not_found", "No such published blog")


def _recency(card: Card, now: datetime) -> float:
    if card.published_at is None:
        return 0.0
    age_days = max((now - card.published_at).total_seconds(), 0.0) / 86400
    return float(0.5 ** (age_days / RECENCY_HALF_LIFE_DAYS))


def _fallback_tags(tag: str | None, top_tags: list[str]) -> list[list[str]]:
    """Where trending fills from, in turn: the asked tag only; else the reader's tags, then all."""
    if tag is not None:
        return [[tag]]
    return [top_tags, []] if top_tags else [[]]


class RecoService:
    def __init__(self, db: Database, *, trending_half_life_hours: float = 72.0) -> None:
        self.db = db
        self.half_life = trending_half_life_hours

    # --- the read model (the consumers' handlers, in the consumer's transaction) ---------------

    async def apply_blog_event(self, conn: Connection, event: Event) -> None:
        """Consumer of the blog's events; a payload outside its contract is dead-lettered."""
        model = _TYPES.get(event.type)
        if model is None:
            return  # an event this service does not use
        data = model.of(event)
        at = event.occurred_at
        if isinstance(data, BlogPublished | BlogUpdated):
            fields = {
                "slug": data.slug,
                "title": data.title,
                "description": data.description,
                "tags": data.tags,
                "author_id": data.author_id,
                "published_at": data.published_at,
            }
            await store.upsert_card(conn, data.id, fields, at)
        elif isinstance(data, BlogUnpublished | BlogDeleted):
            await store.hide_card(conn, data.id, at)
        elif isinstance(data, BlogLiked | BlogUnliked):
            await self._apply_like(conn, data, at)
        elif isinstance(data, BlogBookmarked | BlogUnbookmarked):
            kept = isinstance(data, BlogBookmarked)
            await store.set_flag(conn, data.user_id, data.blog_id, "bookmarked", kept, at)
        elif isinstance(data, BlogRead):
            await store.add_read(conn, data.user_id, data.blog_id, at)

    async def _apply_like(
        self, conn: Connection, data: BlogLiked | BlogUnliked, at: datetime
    ) -> None:
        """A like appears or goes, and with it the reader's pairs of co-liked blogs.

        A reader counts towards the pairs among their `CO_LIKE_WINDOW` most recent likes only:
        each event then costs at most that many pair changes, whatever the reader's history,
        and the pairs follow from the current likes alone (so an unlike takes back exactly
        what its like added, whatever came between)."""
        liked = isinstance(data, BlogLiked)
        user, blog = data.user_id, data.blog_id
        await store.lock_reader(conn, user)
        before = await store.liked_window(conn, user, CO_LIKE_WINDOW)
        flagged = await store.set_flag(conn, user, blog, "liked", liked, at)
        if not flagged.taken:
            return
        if flagged.flipped:
            await store.change_like_count(conn, blog, 1 if liked else -1)
        # Even a repeated like moves the blog up the reader's recent likes.
        after = await store.liked_window(conn, user, CO_LIKE_WINDOW)
        gone, came = set(before) - set(after), set(after) - set(before)
        await store.change_pairs(conn, [(g, o) for g in gone for o in before if o != g], -1)
        await store.change_pairs(conn, [(c, o) for c in came for o in after if o != c], 1)

    async def apply_user_event(self, conn: Connection, event: Event) -> None:
        """Consumer of auth.user.created / updated: author names for the cards."""
        profile = _TYPES.get(event.type, UserUpdated).of(event)
        assert isinstance(profile, UserProfile)
        await store.upsert_author(conn, profile.id, profile.name, event.occurred_at)

    # --- recommendations ------------------------------------------------------------------------

    async def for_user(
        self,
        user_id: uuid.UUID,
        limit: int,
        exclude: Sequence[uuid.UUID] = (),
        tag: str | None = None,
    ) -> list[Pick]:
        now = datetime.now(UTC)
        async with self.db.connect() as conn:
            engaged = await store.engagements(conn, user_id, 1000)
            skip = (
                {e.blog_id for e in engaged} | set(exclude) | await store.authored_by(conn, user_id)
            )
            positive = {
                e.blog_id: (1.0 if e.liked else 0.7) for e in engaged if e.liked or e.bookmarked
            }
            seeds = [e.blog_id for e in engaged if e.blog_id in positive][:SEEDS]
            # Co-engagement: blogs liked by the readers of the reader's blogs.
            co: dict[uuid.UUID, float] = defaultdict(float)
            for seed, other, both, likes in await store.neighbours(conn, seeds, PER_SEED):
                if other not in skip:
                    co[other] += positive[seed] * both / math.sqrt(max(likes, 1))
            # Tag affinity, from the cards the reader engaged with.
            seen = await store.live_cards(conn, [e.blog_id for e in engaged])
            weights: dict[str, float] = defaultdict(float)
            for e in engaged:
                card = seen.get(e.blog_id)
                if card is not None:
                    weight = positive.get(e.blog_id, 0.3 if e.reads else 0.0)
                    for name in card.tags:
                        weights[name] += weight
            top_tags = sorted(weights, key=lambda name: (-weights[name], name))[:10]
            pool = (
                {
                    c.blog_id: c
                    for c in await store.cards_with_tags(conn, top_tags, TAG_POOL, user_id)
                }
                if top_tags
                else {}
            )
            pool.update(await store.live_cards(conn, [b for b in co if b not in pool]))
            total = sum(weights.values()) or 1.0
            top_co = max(co.values(), default=0.0) or 1.0
            picks: list[Pick] = []
            for blog_id, card in pool.items():
                if blog_id in skip or (tag is not None and tag not in card.tags):
                    continue
                co_part = W_CO * co.get(blog_id, 0.0) / top_co
                tag_part = W_TAG * sum(weights.get(name, 0.0) for name in card.tags) / total
                if co_part == 0 and tag_part == 0:
                    continue
                reason: Reason = "co_engagement" if co_part >= tag_part else "tag"
                score = co_part + tag_part + W_RECENT * _recency(card, now)
                picks.append(Pick(card, score, reason))
            picks.sort(key=lambda p: (-p.score, str(p.card.blog_id)))
            picks = picks[:limit]
            if len(picks) < limit:
                # Cold start, or too few candidates: trending fills the rest.
                since = now - WINDOWS["30d"]
                taken = skip | {p.card.blog_id for p in picks}
                for tags in _fallback_tags(tag, top_tags):
                    for pick in await self._trending(conn, since, limit + len(taken), tags):
                        if len(picks) >= limit:
                            break
                        if pick.card.blog_id not in taken and pick.card.author_id != user_id:
                            picks.append(pick)
                            taken.add(pick.card.blog_id)
        return picks

    async def also_liked(self, blog_id: uuid.UUID, limit: int) -> list[Pick]:
        """ "Readers also liked": the blogs most liked by this one's readers (tempered by their
        popularity), then, for a blog too new to have any, the most similar by their text."""
        async with self.db.connect() as conn:
            if not await store.is_live(conn, blog_id):
                raise blog_not_found()
            scored: dict[uuid.UUID, tuple[float, Reason]] = {}
            for _, other, both, likes in await store.neighbours(conn, [blog_id], limit):
                scored[other] = (both / math.sqrt(max(likes, 1)), "co_engagement")
            if len(scored) < limit:
                for other, rank in await store.similar_text(conn, blog_id, limit):
                    scored.setdefault(other, (rank, "similar"))
            found = await store.live_cards(conn, list(scored))
        picks = [Pick(found[b], s, r) for b, (s, r) in scored.items() if b in found]
        # Co-engagement first, then similar, each by score.
        picks.sort(key=lambda p: (p.reason != "co_engagement", -p.score, str(p.card.blog_id)))
        return picks[:limit]

    async def trending(self, window: str, limit: int, tag: str | None = None) -> list[Pick]:
        since = datetime.now(UTC) - WINDOWS[window]
        async with self.db.connect() as conn:
            return await self._trending(conn, since, limit, [tag] if tag else [])

    async def _trending(
        self, conn: Connection, since: datetime, limit: int, tags: Sequence[str]
    ) -> list[Pick]:
        ranked = await store.trending(conn, since, self.half_life, limit, tags)
        found = await store.live_cards(conn, [blog_id for blog_id, _ in ranked])
        return [Pick(found[b], score, "trending") for b, score in ranked if b in found]
