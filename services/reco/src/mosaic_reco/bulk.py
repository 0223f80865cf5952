"""The read model from a whole history of events at once, set-based (for rebuilds at scale).

`bulk_load` takes the events of the blog's and auth's streams in stream order, copies them into
a staging table (`COPY`) and computes in SQL the state the live consumers reach applying them
one by one (`RecoService.apply_*`), so the two are interchangeable (a test compares them):

- an event id seen twice counts once (the first, as `processed_events` makes it);
- a card or an author takes an event only if it is not older than what it holds (`<=`): the
  last such event in stream order wins; a reader's like or bookmark only if it is newer (`<`);
- `engaged_at` is the latest read, or like or bookmark that was taken and set the flag;
- a blog has a `like_counts` row once a like of it flipped; co-likes are the pairs among each
  reader's 20 most recent likes;
- every event is recorded in `processed_events` under its live consumer's name, so that live
  consumer skips it.

For an empty read model (a fresh schema): it inserts, it does not merge.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from mosaic_kit.contracts import auth as auth_contracts
from mosaic_kit.contracts import blog as blog_contracts
from mosaic_kit.events import Event
from mosaic_kit.sql.db import Database
from mosaic_reco.service import CO_LIKE_WINDOW

_COLUMNS = (
    "seq", "consumer", "id", "type", "at", "blog_id", "user_id", "slug", "title",
    "description", "tags", "author_id", "published_at", "name",
)  # fmt: skip


@dataclass(frozen=True)
class Feed:
    """The events of one stream, in stream order, and the live consumer that applies them."""

    consumer: str
    events: Iterable[Event]


def _row(seq: int, consumer: str, event: Event) -> tuple[Any, ...] | None:
    data, kind = event.data, event.type
    try:
        if kind in (blog_contracts.BlogPublished.TYPE, blog_contracts.BlogUpdated.TYPE):
            card = blog_contracts.BlogPublished.model_validate(data)
            return (
                seq, consumer, event.id, kind, event.occurred_at, card.id, None, card.slug,
                card.title, card.description, card.tags, card.author_id, card.published_at, None,
            )  # fmt: skip
        if kind in (blog_contracts.BlogUnpublished.TYPE, blog_contracts.BlogDeleted.TYPE):
            blog_id = uuid.UUID(str(data["id"]))
            return (seq, consumer, event.id, kind, event.occurred_at, blog_id, *([None] * 8))
        if kind.startswith("blog.blog."):
            signal = blog_contracts.BlogSignal.model_validate(data)
            return (
                seq, consumer, event.id, kind, event.occurred_at, signal.blog_id,
                signal.user_id, *([None] * 7),
            )  # fmt: skip
        if kind in (auth_contracts.UserCreated.TYPE, auth_contracts.UserUpdated.TYPE):
            user = auth_contracts.UserProfile.model_validate(data)
            return (
                seq,
                consumer,
                event.id,
                kind,
                event.occurred_at,
                None,
                user.id,
                *([None] * 6),
                user.name,
            )
    except (ValueError, KeyError):
        pass  # outside its contract: the live consumer dead-letters it, nothing changes
    return (seq, consumer, event.id, "ignored", event.occurred_at, *([None] * 9))


_STAGE = """
CREATE TEMPORARY TABLE stage (
    seq bigint, consumer text, id text, type text, at timestamptz, blog_id uuid, user_id uuid,
    slug text, title text, description text, tags text[], author_id uuid,
    published_at timestamptz, name text
) ON COMMIT DROP
"""

_STATEMENTS = [
    # One row per event id (the first delivery), numbered in stream order.
    """CREATE TEMPORARY TABLE ev ON COMMIT DROP AS
       SELECT DISTINCT ON (consumer, id) * FROM stage ORDER BY consumer, id, seq""",
    """INSERT INTO processed_events (consumer, event_id) SELECT consumer, id FROM ev""",
    # Authors: the last event in stream order among those not older than what came before.
    """INSERT INTO authors (id, name, as_of)
       SELECT DISTINCT ON (user_id) user_id, name, at FROM (
           SELECT *, max(at) OVER w AS before FROM ev WHERE type IN (:user_created, :user_updated)
           WINDOW w AS (PARTITION BY user_id ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
       ) taken WHERE before IS NULL OR at >= before ORDER BY user_id, seq DESC""",
    # Cards: the same rule; fields from the last taken publish or update, `live` from the last
    # taken event of any kind.
    """CREATE TEMPORARY TABLE card_events ON COMMIT DROP AS
       SELECT * FROM (
           SELECT *, max(at) OVER w AS before FROM ev
           WHERE type IN (:published, :updated, :unpublished, :deleted)
           WINDOW w AS (PARTITION BY blog_id ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
       ) taken WHERE before IS NULL OR at >= before""",
    """INSERT INTO cards (blog_id, slug, title, description, tags, author_id, published_at, live, as_of)
       SELECT last.blog_id, coalesce(f.slug, ''), coalesce(f.title, ''),
              coalesce(f.description, ''), coalesce(f.tags, '{}'), f.author_id, f.published_at,
              last.type IN (:published, :updated), last.at
       FROM (SELECT DISTINCT ON (blog_id) * FROM card_events ORDER BY blog_id, seq DESC) last
       LEFT JOIN (
           SELECT DISTINCT ON (blog_id) * FROM card_events WHERE type IN (:published, :updated)
           ORDER BY blog_id, seq DESC
       ) f ON f.blog_id = last.blog_id""",
    # Flags: an event is taken when newer than every earlier one of its flag (stream order).
    """CREATE TEMPORARY TABLE flags ON COMMIT DROP AS
       SELECT *, lag(value, 1, false) OVER (PARTITION BY user_id, blog_id, flag ORDER BY seq) AS was
       FROM (
           SELECT user_id, blog_id, seq, at, flag, value, max(at) OVER w AS before FROM (
               SELECT *, CASE WHEN type IN (:liked, :unliked) THEN 'liked' ELSE 'bookmarked' END AS flag,
                      type IN (:liked, :bookmarked) AS value
               FROM ev WHERE type IN (:liked, :unliked, :bookmarked, :unbookmarked)
           ) f
           WINDOW w AS (PARTITION BY user_id, blog_id, flag ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
       ) candidates WHERE before IS NULL OR at > before""",
    """INSERT INTO signals (user_id, blog_id, liked, liked_as_of, bookmarked, bookmarked_as_of,
                            reads, read_as_of, engaged_at)
       SELECT pairs.user_id, pairs.blog_id,
              coalesce(l.value, false), l.at, coalesce(b.value, false), b.at,
              coalesce(r.reads, 0), r.last_read,
              (SELECT max(moment) FROM (VALUES (r.last_read), (t.engaged)) AS m(moment))
       FROM (SELECT DISTINCT user_id, blog_id FROM ev
             WHERE type IN (:liked, :unliked, :bookmarked, :unbookmarked, :read)) pairs
       LEFT JOIN (SELECT DISTINCT ON (user_id, blog_id) * FROM flags WHERE flag = 'liked'
                  ORDER BY user_id, blog_id, seq DESC) l USING (user_id, blog_id)
       LEFT JOIN (SELECT DISTINCT ON (user_id, blog_id) * FROM flags WHERE flag = 'bookmarked'
                  ORDER BY user_id, blog_id, seq DESC) b USING (user_id, blog_id)
       LEFT JOIN (SELECT user_id, blog_id, count(*) AS reads, max(at) AS last_read FROM ev
                  WHERE type = :read GROUP BY user_id, blog_id) r USING (user_id, blog_id)
       LEFT JOIN (SELECT user_id, blog_id, max(at) AS engaged FROM flags WHERE value
                  GROUP BY user_id, blog_id) t USING (user_id, blog_id)""",
    # A count row for every blog a like of which flipped; the count: readers liking it now.
    """INSERT INTO like_counts (blog_id, readers)
       SELECT f.blog_id, (SELECT count(*) FROM signals s WHERE s.blog_id = f.blog_id AND s.liked)
       FROM (SELECT DISTINCT blog_id FROM flags WHERE flag = 'liked' AND value <> was) f""",
    # Co-likes: the pairs among each reader's most recent likes.
    """INSERT INTO co_likes (blog_id, other_id, readers)
       SELECT a.blog_id, b.blog_id, count(*)
       FROM (SELECT user_id, blog_id, row_number() OVER (
                 PARTITION BY user_id ORDER BY liked_as_of DESC, blog_id) AS n
             FROM signals WHERE liked) a
       JOIN (SELECT user_id, blog_id, row_number() OVER (
                 PARTITION BY user_id ORDER BY liked_as_of DESC, blog_id) AS n
             FROM signals WHERE liked) b
         ON a.user_id = b.user_id AND a.blog_id <> b.blog_id
       WHERE a.n <= :window AND b.n <= :window
       GROUP BY a.blog_id, b.blog_id""",
]
_PARAMS = {
    "user_created": auth_contracts.UserCreated.TYPE,
    "user_updated": auth_contracts.UserUpdated.TYPE,
    "published": blog_contracts.BlogPublished.TYPE,
    "updated": blog_contracts.BlogUpdated.TYPE,
    "unpublished": blog_contracts.BlogUnpublished.TYPE,
    "deleted": blog_contracts.BlogDeleted.TYPE,
    "liked": blog_contracts.BlogLiked.TYPE,
    "unliked": blog_contracts.BlogUnliked.TYPE,
    "bookmarked": blog_contracts.BlogBookmarked.TYPE,
    "unbookmarked": blog_contracts.BlogUnbookmarked.TYPE,
    "read": blog_contracts.BlogRead.TYPE,
    "window": CO_LIKE_WINDOW,
}


async def bulk_load(db: Database, feeds: Iterable[Feed]) -> int:
    """Load the events of `feeds` into the (empty) read model of `db`; how many were staged."""
    rows = [
        row
        for feed in feeds
        for seq, event in enumerate(feed.events)
        if (row := _row(seq, feed.consumer, event)) is not None
    ]
    async with db.transaction() as conn:
        await conn.execute(text(_STAGE))
        raw: Any = (await conn.get_raw_connection()).driver_connection
        await raw.copy_records_to_table("stage", records=rows, columns=_COLUMNS)
        for statement in _STATEMENTS:
            clause = text(statement)
            used = {name: value for name, value in _PARAMS.items() if f":{name}" in statement}
            await conn.execute(clause, used)
    return len(rows)
