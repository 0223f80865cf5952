"""Offline evaluation of the reco service: does the blend beat trending?

A simulated reader population with tastes hidden from the recommender: blogs belong to hidden
clusters (three per topic; only the topic shows, as the blog's first tag, plus a random second
tag), each reader prefers a few clusters. Over 30 simulated days readers read blogs, chosen by
taste and by popularity, and like those that match their taste. The first 80 % of the
interactions (by time) feed the service through the real event path (the blog's event types,
published to its JetStream stream, applied by the service's durable consumer); the last 20 % are
held out: a reader's held-out likes are what a good recommender should have put in their top 10.

For every reader with a held-out like, in one run: the blend (`GET /v1/recommendations/me`),
trending only (`GET /v1/recommendations/trending?window=30d`, minus what the reader already
engaged with) and random (unseen published blogs). Prints precision@10, recall@10, NDCG@10 and
catalogue coverage; the goal is the blend's NDCG@10 at least 1.2x trending's.

Starts its own embedded PostgreSQL and NATS; the service runs in-process (ASGI). Writes
bench/results/reco_eval.json. Run: .venv/bin/python bench/reco_eval.py [--readers 400] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from loadgen import write_results

from mosaic_devstack.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from mosaic_devstack.issuer import TokenIssuer
from mosaic_kit.contracts.blog import BlogLiked, BlogPublished, BlogRead
from mosaic_kit.events import Event
from mosaic_kit.nats import jetstream
from mosaic_kit.nats.connection import connect
from mosaic_kit.sql.migrations import upgrade_async

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "reco_eval.json"
GOAL = 1.2  # the blend's NDCG@10 over trending's
K = 10
TOPICS = [
    "PYTHON", "GO", "RUST", "DATA", "ML", "DEVOPS", "SECURITY", "WEB",
    "MOBILE", "CLOUD", "DATABASES", "TESTING", "DESIGN", "CAREERS", "OSS", "HARDWARE",
]  # fmt: skip
CLUSTERS_PER_TOPIC = 3
DAYS = 30


@dataclass
class Blog:
    id: uuid.UUID
    cluster: int
    tags: list[str]
    published: float  # simulated day
    appeal: float  # how likely a reader of its cluster likes it


@dataclass
class Reader:
    id: uuid.UUID
    taste: dict[int, float]  # cluster -> weight (hidden)
    likes_held_out: set[uuid.UUID] = field(default_factory=set)
    seen_in_training: set[uuid.UUID] = field(default_factory=set)


@dataclass(frozen=True)
class Interaction:
    day: float
    reader: Reader
    blog: Blog
    liked: bool


def simulate(
    readers: int, blogs: int, per_reader: int, rng: random.Random
) -> tuple[list[Blog], list[Reader], list[Interaction]]:
    clusters = len(TOPICS) * CLUSTERS_PER_TOPIC
    catalogue = []
    for _ in range(blogs):
        cluster = rng.randrange(clusters)
        topic = TOPICS[cluster // CLUSTERS_PER_TOPIC]
        extra = rng.choice(TOPICS)
        tags = [topic] if extra == topic else [topic, extra]
        catalogue.append(
            Blog(uuid.uuid4(), cluster, tags, rng.uniform(-DAYS, DAYS * 0.9), rng.betavariate(2, 3))
        )
    population = []
    for _ in range(readers):
        favourites = rng.sample(range(clusters), 3)
        taste = dict(zip(favourites, (0.6, 0.3, 0.1), strict=True))
        population.append(Reader(uuid.uuid4(), taste))
    by_cluster: dict[int, list[Blog]] = {}
    for blog in catalogue:
        by_cluster.setdefault(blog.cluster, []).append(blog)
    interactions = []
    for reader in population:
        clusters_of = list(reader.taste)
        weights = [reader.taste[c] for c in clusters_of]
        for _ in range(per_reader):
            day = rng.uniform(0, DAYS)
            if rng.random() < 0.25:  # curiosity: anything published so far
                pool = catalogue
            else:
                pool = by_cluster.get(rng.choices(clusters_of, weights)[0], catalogue)
            available = [b for b in pool if b.published <= day]
            if not available:
                continue
            blog = rng.choices(available, [b.appeal + 0.05 for b in available])[0]
            match = reader.taste.get(blog.cluster, 0.0)
            liked = rng.random() < min(0.9, 0.1 + 1.2 * match * blog.appeal + 0.05)
            interactions.append(Interaction(day, reader, blog, liked))
    interactions.sort(key=lambda i: i.day)
    return catalogue, population, interactions


def ndcg(ranked: list[uuid.UUID], relevant: set[uuid.UUID]) -> float:
    gain = sum(1 / math.log2(rank + 2) for rank, b in enumerate(ranked[:K]) if b in relevant)
    ideal = sum(1 / math.log2(rank + 2) for rank in range(min(len(relevant), K)))
    return gain / ideal if ideal else 0.0


@dataclass
class Scores:
    name: str
    precision: float = 0.0
    recall: float = 0.0
    ndcg: float = 0.0
    covered: set[uuid.UUID] = field(default_factory=set)
    users: int = 0

    def add(self, ranked: list[uuid.UUID], relevant: set[uuid.UUID]) -> None:
        hits = len(set(ranked[:K]) & relevant)
        self.precision += hits / K
        self.recall += hits / len(relevant)
        self.ndcg += ndcg(ranked, relevant)
        self.covered |= set(ranked[:K])
        self.users += 1

    def row(self, catalogue: int) -> dict[str, Any]:
        n = max(self.users, 1)
        return {
            "method": self.name,
            "precision@10": self.precision / n,
            "recall@10": self.recall / n,
            "ndcg@10": self.ndcg / n,
            "coverage": len(self.covered) / catalogue,
            "readers": self.users,
        }


async def feed(js: Any, events: list[Event]) -> None:
    for start in range(0, len(events), 200):
        acks = [
            js.publish(e.subject, e.to_json(), headers={"Nats-Msg-Id": e.id})
            for e in events[start : start + 200]
        ]
        await asyncio.gather(*acks)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    catalogue, population, interactions = simulate(args.readers, args.blogs, args.per_reader, rng)
    cut = int(len(interactions) * 0.8)
    training, held_out = interactions[:cut], interactions[cut:]
    for i in training:
        i.reader.seen_in_training.add(i.blog.id)
    # The simulated timeline ends at the cut: the service is asked "now", after the training.
    end = training[-1].day
    for i in held_out:
        # What a recommender could have known: blogs published by the cut, not seen before.
        if i.liked and i.blog.published <= end and i.blog.id not in i.reader.seen_in_training:
            i.reader.likes_held_out.add(i.blog.id)
    now = datetime.now(UTC)

    def when(day: float) -> datetime:
        return now - timedelta(days=end - day)

    events = [
        BlogPublished(
            id=b.id,
            slug=f"b-{b.id.hex[:12]}",
            title=f"Post {b.id.hex[:6]}",
            description="A simulated post",
            tags=b.tags,
            author_id=uuid.uuid4(),
            published_at=when(b.published),
        ).event(when(b.published))
        for b in sorted(catalogue, key=lambda b: b.published)
        if b.published <= end
    ]
    for i in training:
        moment = when(i.day)
        events.append(
            BlogRead(blog_id=i.blog.id, user_id=i.reader.id, day=moment.date()).event(moment)
        )
        if i.liked:
            events.append(BlogLiked(blog_id=i.blog.id, user_id=i.reader.id, likes=1).event(moment))

    root = Path(tempfile.mkdtemp(prefix="mosaic-reco-eval-"))
    pg = EmbeddedPostgres(root / "pg", free_port(), durable=False)
    nats = EmbeddedNats(root / "nats", free_port())
    pg.start()
    nats.start()
    try:
        from mosaic_reco.app import RECO
        from mosaic_reco.settings import RecoSettings

        issuer = TokenIssuer()
        nc = await connect(nats.url, "reco-eval")
        await issuer.serve(nc)
        js = nc.jetstream()
        await jetstream.ensure_stream(js, "blog")
        await jetstream.ensure_stream(js, "auth")
        settings = RecoSettings(
            database_url=pg.url,
            nats_url=nats.url,
            db_schema="reco",
            log_level="WARNING",
            log_format="json",
            reco_jwks_subject=issuer.jwks_subject,
        )
        await upgrade_async(settings, "mosaic_reco")
        began = time.monotonic()
        await feed(js, events)
        published_in = time.monotonic() - began
        app = RECO.app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://reco") as client:
                await settle(client, js)
                applied_in = time.monotonic() - began
                published = [b for b in catalogue if b.published <= end]
                scores = await evaluate(client, issuer, population, published, rng)
        await issuer.stop()
        await nc.close()
    finally:
        nats.stop()
        pg.stop()
    rows = [s.row(len(published)) for s in scores]
    return {
        "simulation": {
            "readers": args.readers,
            "blogs": args.blogs,
            "interactions": len(interactions),
            "training_events": len(events),
            "evaluated_readers": scores[0].users,
            "seed": args.seed,
        },
        "feeding": {
            "events": len(events),
            "published_s": round(published_in, 2),
            "applied_s": round(applied_in, 2),
            "events_per_s": round(len(events) / applied_in),
        },
        "results": rows,
    }


async def settle(client: httpx.AsyncClient, js: Any) -> None:
    """Wait until the consumer applied everything: a marker blog liked last shows in trending."""
    marker = uuid.uuid4()
    stamp = datetime.now(UTC)
    await feed(
        js,
        [
            BlogPublished(
                id=marker,
                slug="marker",
                title="Marker",
                description="m",
                tags=["MARKER"],
                author_id=uuid.uuid4(),
                published_at=stamp,
            ).event(stamp),
            BlogLiked(blog_id=marker, user_id=uuid.uuid4(), likes=1).event(stamp),
        ],
    )
    for _ in range(6000):
        answer = await client.get("/v1/recommendations/trending", params={"tag": "MARKER"})
        if answer.status_code == 200 and answer.json()["items"]:
            return
        await asyncio.sleep(0.05)
    raise SystemExit("the consumer did not catch up in 5 minutes")


async def evaluate(
    client: httpx.AsyncClient,
    issuer: TokenIssuer,
    population: list[Reader],
    catalogue: list[Blog],
    rng: random.Random,
) -> list[Scores]:
    blend, trend, chance = Scores("blend"), Scores("trending only"), Scores("random")
    answer = await client.get("/v1/recommendations/trending", params={"window": "30d", "limit": 50})
    ranked_trending = [uuid.UUID(i["blog"]["id"]) for i in answer.json()["items"]]
    live = [b.id for b in catalogue]
    for reader in population:
        relevant = reader.likes_held_out
        if not relevant:
            continue
        headers = {"authorization": f"Bearer {issuer.token(reader.id)}"}
        answer = await client.get("/v1/recommendations/me", params={"limit": K}, headers=headers)
        assert answer.status_code == 200, answer.text
        blend.add([uuid.UUID(i["blog"]["id"]) for i in answer.json()["items"]], relevant)
        unseen = [b for b in ranked_trending if b not in reader.seen_in_training]
        trend.add(unseen[:K], relevant)
        candidates = [b for b in live if b not in reader.seen_in_training]
        chance.add(rng.sample(candidates, min(K, len(candidates))), relevant)
    return [blend, trend, chance]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readers", type=int, default=400)
    parser.add_argument("--blogs", type=int, default=600)
    parser.add_argument("--per-reader", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    rows = report["results"]
    print("\nreco evaluation: held-out likes of simulated readers (the last 20 % by time)")
    print(f"{'method':<16} {'precision@10':>13} {'recall@10':>10} {'NDCG@10':>9} {'coverage':>9}")
    for row in rows:
        print(
            f"{row['method']:<16} {row['precision@10']:>13.4f} {row['recall@10']:>10.4f}"
            f" {row['ndcg@10']:>9.4f} {row['coverage']:>9.3f}"
        )
    ratio = rows[0]["ndcg@10"] / rows[1]["ndcg@10"] if rows[1]["ndcg@10"] else math.inf
    verdict = "meets" if ratio >= GOAL else "MISSES"
    print(f"blend / trending on NDCG@10: {ratio:.2f}x ({verdict} the goal of {GOAL}x)")
    sim, fed = report["simulation"], report["feeding"]
    print(
        f"{sim['readers']} readers, {sim['blogs']} blogs, {fed['events']} events fed through "
        f"JetStream and applied in {fed['applied_s']} s ({fed['events_per_s']}/s); "
        f"{sim['evaluated_readers']} readers evaluated"
    )
    report["ratio_ndcg_blend_over_trending"] = ratio
    report["goal"] = GOAL
    report["machine"] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}
    write_results(RESULTS, "reco_eval", report)


if __name__ == "__main__":
    main()
