"""The blog service's rules: authoring, the editorial workflow, and what the public sees.

Writes commit the change and its event together (outbox); after a commit that changes what the
public sees, the cache generation of what it changed is bumped so every replica's next read
misses: `PUBLIC` (lists, similar blogs) and `VIEWS` (single blogs) for a blog's own changes,
`VIEWS` alone for a like (only single-blog views show like counts). The bump runs in the
background (`Invalidator`): a slow or frozen cache backend never holds a response.

Readers' signals (likes, bookmarks, reads) are rows keyed by (blog, reader[, day]): recording one
twice changes nothing and publishes nothing, so every signal route is idempotent.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from mosaic_blog import store
from mosaic_blog.models import Blog
from mosaic_blog.workflow import Action, State, next_state
from mosaic_kit.cache import Cache, Invalidator, cached
from mosaic_kit.contracts.auth import (
    USERS_GET,
    UserCreated,
    UserProfile,
    Users,
    UsersQuery,
    UserUpdated,
)
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
    BlogView,
)
from mosaic_kit.events import Event
from mosaic_kit.logging import get_logger
from mosaic_kit.nats.rpc import RpcError, request
from mosaic_kit.pagination import decode_time_uuid_cursor, next_cursor_for
from mosaic_kit.problem import Problem, conflict, not_found
from mosaic_kit.sql import outbox
from mosaic_kit.sql.db import Connection, ConstraintError, Database

log = get_logger("mosaic_blog.service")

V = TypeVar("V", bound=BlogView)
_USER_EVENTS: dict[str, type[UserProfile]] = {
    UserCreated.TYPE: UserCreated,
    UserUpdated.TYPE: UserUpdated,
}
PUBLIC = "public"  # the cache generation group of the public lists and similar blogs
VIEWS = "views"  # ... of the public views of single blogs (by id, by slug)
SIMILAR_LIMIT = 6
_SLUG_SEPARATORS = re.compile(r"[\s_]+")
_SLUG_DASHES = re.compile(r"-{2,}")
_SLUG_VALID = re.compile(r"^[a-z0-9-]{3,200}$")


def normalise_slug(raw: str) -> str:
    """Lower-case, whitespace and underscores to dashes, runs of dashes folded, ends trimmed."""
    slug = _SLUG_SEPARATORS.sub("-", raw.strip().lower())
    return _SLUG_DASHES.sub("-", slug).strip("-")


def valid_slug(slug: str) -> bool:
    return bool(_SLUG_VALID.fullmatch(slug))


def normalise_tags(raw: Sequence[str]) -> list[str]:
    """Upper-cased, trimmed, duplicates dropped, first-seen order kept."""
    seen: dict[str, None] = {}
    for tag in raw:
        seen.setdefault(tag.strip().upper(), None)
    return [t for t in seen if t]


def _blog_not_found() -> Problem:
    return not_found("blog.not_found", "No such blog")


@dataclass(frozen=True)
class Page:
    items: list[Blog]
    next_cursor: str | None


class BlogService:
    def __init__(
        self, db: Database, cache: Cache, nc: Any, *, cache_ttl: float, auth_timeout: float
    ) -> None:
        self.db = db
        self.cache = cache
        self.invalidator = Invalidator(cache)
        self.nc = nc
        self.cache_ttl = cache_ttl
        self.auth_timeout = auth_timeout
        # Ids of events whose profile change awaits its after-commit cache invalidation.
        self._profiles_changed: set[str] = set()

    # --- authoring ----------------------------------------------------------------------------

    async def create(self, author_id: uuid.UUID, fields: dict[str, Any]) -> Blog:
        await self.ensure_author(author_id)
        blog_id = uuid.uuid4()
        values = {**fields, "id": blog_id, "author_id": author_id, "state": State.DRAFT.value}
        try:
            async with self.db.transaction() as conn:
                await store.insert_blog(conn, values)
                blog = await store.get_blog(conn, blog_id)
        except ConstraintError as exc:
            raise _slug_taken(fields["slug"]) from exc
        assert blog is not None
        log.info("blog_created", blog_id=str(blog_id))
        return blog

    async def own(self, author_id: uuid.UUID, blog_id: uuid.UUID) -> Blog:
        blog = await store.read_blog(self.db, blog_id, author_id=author_id)
        if blog is None:
            raise _blog_not_found()  # another author's blog is not even admitted to exist
        return blog

    async def list_own(
        self, author_id: uuid.UUID, state: State | None, limit: int, cursor: str | None
    ) -> Page:
        async with self.db.connect() as conn:
            rows = await store.list_by_creation(
                conn,
                limit,
                decode_time_uuid_cursor(cursor),
                author_id=author_id,
                states=[state] if state else (),
            )
        return Page(rows[:limit], next_cursor_for(rows, limit, lambda b: (b.created_at, b.id)))

    async def edit(self, author_id: uuid.UUID, blog_id: uuid.UUID, changes: dict[str, Any]) -> Blog:
        try:
            async with self.db.transaction() as conn:
                blog = await store.get_blog(conn, blog_id, author_id=author_id, for_update=True)
                if blog is None:
                    raise _blog_not_found()
                if not changes:
                    return blog
                await store.update_blog(conn, blog_id, changes)
                updated = await store.get_blog(conn, blog_id)
                assert updated is not None
                public_change = updated.is_public and _public_fields_differ(blog, updated)
                if public_change:
                    await outbox.add(conn, _view(BlogUpdated, updated).event())
        except ConstraintError as exc:
            raise _slug_taken(changes.get("slug", "")) from exc
        if public_change:
            await self._invalidate()
        return updated

    async def delete(self, author_id: uuid.UUID, blog_id: uuid.UUID) -> None:
        async with self.db.transaction() as conn:
            blog = await store.get_blog(conn, blog_id, author_id=author_id, for_update=True)
            if blog is None:
                raise _blog_not_found()
            await store.update_blog(conn, blog_id, {"deleted_at": datetime.now(UTC)})
            await outbox.add(
                conn,
                BlogDeleted(id=blog_id, was_public=blog.is_public).event(),
            )
        if blog.is_public:
            await self._invalidate()

    # --- workflow -----------------------------------------------------------------------------

    async def transition(
        self, blog_id: uuid.UUID, action: Action, *, author_id: uuid.UUID | None = None
    ) -> Blog:
        """Apply `action`; authors act on their own blogs only (author_id), editors on any."""
        async with self.db.transaction() as conn:
            blog = await store.get_blog(conn, blog_id, author_id=author_id, for_update=True)
            if blog is None:
                raise _blog_not_found()
            target = next_state(blog.state, action)
            values: dict[str, Any] = {"state": target.value}
            if action is Action.PUBLISH:
                values["text"] = blog.draft_text
                if blog.published_at is None:
                    values["published_at"] = datetime.now(UTC)
            await store.update_blog(conn, blog_id, values)
            updated = await store.get_blog(conn, blog_id)
            assert updated is not None
            if action is Action.PUBLISH:
                await outbox.add(conn, _view(BlogPublished, updated).event())
            elif action is Action.UNPUBLISH:
                await outbox.add(conn, BlogUnpublished(id=blog_id).event())
        if action in (Action.PUBLISH, Action.UNPUBLISH):
            await self._invalidate()
        log.info("blog_transition", blog_id=str(blog_id), action=action.value, state=target.value)
        return updated

    # --- editors ------------------------------------------------------------------------------

    async def any_blog(self, blog_id: uuid.UUID) -> Blog:
        blog = await store.read_blog(self.db, blog_id)
        if blog is None:
            raise _blog_not_found()
        return blog

    async def list_for_editors(
        self, states: Sequence[State], limit: int, cursor: str | None
    ) -> Page:
        async with self.db.connect() as conn:
            rows = await store.list_by_creation(
                conn, limit, decode_time_uuid_cursor(cursor), states=states
            )
        return Page(rows[:limit], next_cursor_for(rows, limit, lambda b: (b.created_at, b.id)))

    # --- public reads (cached) ----------------------------------------------------------------

    async def public_by_id(self, blog_id: uuid.UUID) -> tuple[bytes, bool]:
        async def load() -> Blog | None:
            return await store.read_blog(self.db, blog_id, public=True)

        return await self._cached_one(f"id:{blog_id}", load)

    async def public_by_slug(self, slug: str) -> tuple[bytes, bool]:
        async def load() -> Blog | None:
            async with self.db.connect() as conn:
                return await store.get_public_by_slug(conn, slug)

        return await self._cached_one(f"slug:{slug}", load)

    async def similar(self, blog_id: uuid.UUID) -> tuple[bytes, bool]:
        async def load() -> bytes | None:
            async with self.db.connect() as conn:
                if await store.get_blog(conn, blog_id, public=True) is None:
                    return None
                rows = await store.similar(conn, blog_id, SIMILAR_LIMIT)
            return _encode({"items": [b.public_view() for b in rows]})

        return await self._read(f"similar:{blog_id}", load)

    async def public_list(
        self, tag: str | None, limit: int, cursor: str | None
    ) -> tuple[bytes, bool]:
        tag = tag.strip().upper() if tag is not None else None
        after = decode_time_uuid_cursor(cursor)

        async def load() -> bytes:
            async with self.db.connect() as conn:
                rows = await store.list_public(conn, limit, after, tag)
            next_cursor = next_cursor_for(rows, limit, lambda b: (b.published_at, b.id))
            return _encode(
                {"items": [b.public_view() for b in rows[:limit]], "nextCursor": next_cursor}
            )

        if cursor is not None:  # only first pages are cached: later ones are rarely re-read
            return await load(), False
        return await self._read(f"list:{tag or ''}:{limit}", load)

    async def _cached_one(
        self, key: str, load: Callable[[], Awaitable[Blog | None]]
    ) -> tuple[bytes, bool]:
        async def load_view() -> bytes | None:
            blog = await load()
            if blog is None:
                return None
            if blog.author.name is None and await self.ensure_author(blog.author.id):
                blog = await load()
                assert blog is not None
            return _encode(blog.detail_view())

        return await self._read(key, load_view, VIEWS)

    async def _read(
        self, key: str, load: Callable[[], Awaitable[bytes | None]], group: str = PUBLIC
    ) -> tuple[bytes, bool]:
        generation = await self.invalidator.generation(group)
        body, hit = await cached(self.cache, f"{generation}:{key}", self.cache_ttl, load)
        if body is None:
            raise _blog_not_found()
        return body, hit

    async def _invalidate(self, *groups: str) -> None:
        # After the commit: the bump is retried in the background until it lands. Both groups
        # are marked before either waits, so they land in one round.
        await asyncio.gather(*(self.invalidator.invalidate(g) for g in groups or (PUBLIC, VIEWS)))

    # --- readers' signals ---------------------------------------------------------------------

    async def like(self, user_id: uuid.UUID, blog_id: uuid.UUID, liked: bool) -> int:
        """Like (or unlike) a published blog; its like count after. Idempotent."""
        async with self.db.transaction() as conn:
            count = await store.public_like_count(conn, blog_id)
            if count is None:
                raise _blog_not_found()
            if liked:
                changed = await store.add_signal(conn, "like", blog_id, user_id)
            else:
                changed = await store.remove_signal(conn, "like", blog_id, user_id)
            if changed:
                count = await store.add_to_like_count(conn, blog_id, 1 if liked else -1)
                kind = BlogLiked if liked else BlogUnliked
                await outbox.add(conn, kind(blog_id=blog_id, user_id=user_id, likes=count).event())
        if changed:
            await self._invalidate(VIEWS)
        return count

    async def bookmark(self, user_id: uuid.UUID, blog_id: uuid.UUID, kept: bool) -> None:
        """Bookmark (or un-bookmark) a published blog. Idempotent; private: no cache changes."""
        async with self.db.transaction() as conn:
            if await store.public_like_count(conn, blog_id) is None:
                raise _blog_not_found()
            if kept:
                changed = await store.add_signal(conn, "bookmark", blog_id, user_id)
            else:
                changed = await store.remove_signal(conn, "bookmark", blog_id, user_id)
            if changed:
                kind = BlogBookmarked if kept else BlogUnbookmarked
                await outbox.add(conn, kind(blog_id=blog_id, user_id=user_id).event())

    async def read(self, user_id: uuid.UUID, blog_id: uuid.UUID) -> bool:
        """Record that the reader read a published blog; False when they already did today (UTC):
        repeated reads within a day count once."""
        day = datetime.now(UTC).date()
        async with self.db.transaction() as conn:
            if await store.public_like_count(conn, blog_id) is None:
                raise _blog_not_found()
            counted = await store.add_read(conn, blog_id, user_id, day)
            if counted:
                await outbox.add(conn, BlogRead(blog_id=blog_id, user_id=user_id, day=day).event())
        return counted

    # --- authors (read model) -----------------------------------------------------------------

    async def ensure_author(self, author_id: uuid.UUID) -> bool:
        """Make sure the author's profile is known locally; True if it was fetched now.

        Profiles normally arrive by events; this asks auth only for one that never did (e.g. a
        user who signed up before the blog service first ran). If auth does not answer, the
        blog is still served, without the author's name.
        """
        async with self.db.connect() as conn:
            if await store.author_exists(conn, author_id):
                return False
        query = UsersQuery(ids=[author_id]).model_dump(mode="json")
        try:
            data = await request(self.nc, USERS_GET, query, timeout=self.auth_timeout)
            profiles = Users.model_validate(data).users
        except RpcError as exc:
            log.warning("author_profile_unavailable", author_id=str(author_id), error=exc.code)
            return False
        except ValueError as exc:  # an answer outside the contract: auth's bug, not ours
            log.error("author_profile_malformed", author_id=str(author_id), error=str(exc))
            return False
        for profile in profiles:
            async with self.db.transaction() as conn:
                await store.upsert_author(
                    conn,
                    uuid.UUID(profile.id),
                    profile.name,
                    profile.profile_pic_url,
                    datetime.now(UTC),
                )
        return bool(profiles)

    async def apply_user_event(self, conn: Connection, event: Event) -> None:
        """Consumer of auth.user.created / auth.user.updated (runs in the consumer's transaction).

        A payload outside the contract is dead-lettered at once (`RejectEventError`)."""
        profile = _USER_EVENTS.get(event.type, UserUpdated).of(event)
        changed = await store.upsert_author(
            conn, profile.id, profile.name, profile.profile_pic_url, event.occurred_at
        )
        if changed:
            self._profiles_changed.add(event.id)

    async def after_user_event(self, event: Event) -> None:
        """Once the profile is committed: public views embed the author's name, so drop them.

        Only when the name or picture really changed: a replayed or late event that merely
        confirms the stored profile must not empty the cache of every replica.
        """
        if event.id not in self._profiles_changed:
            return
        self._profiles_changed.discard(event.id)
        async with self.db.connect() as conn:
            visible = await store.has_published(conn, uuid.UUID(str(event.data["id"])))
        if visible:
            await self._invalidate()


def _public_fields_differ(before: Blog, after: Blog) -> bool:
    """Whether an edit changes what readers see (a draft-only edit does not)."""
    seen_before, seen_after = before.public_view(), after.public_view()
    seen_before.pop("updatedAt")
    seen_after.pop("updatedAt")
    return seen_before != seen_after


def _view(kind: type[V], blog: Blog) -> V:
    """The blog's public fields as event `kind` (`mosaic_kit.contracts.blog`)."""
    return kind(
        id=blog.id,
        slug=blog.slug,
        title=blog.title,
        description=blog.description,
        tags=blog.tags,
        author_id=blog.author.id,
        published_at=blog.published_at,
    )


def _encode(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


def _slug_taken(slug: str) -> Problem:
    return conflict("blog.slug_taken", f"The slug {slug!r} is taken")
