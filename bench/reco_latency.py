"""`GET /v1/recommendations/me` under load, through the gateway, with a large read model.

10,000 readers, 20,000 blogs and 1,000,000 signals (60 % reads, 35 % likes, 5 % bookmarks;
readers prefer a few of 60 hidden clusters, blogs are chosen with a popularity skew) are
published as the blog's real events to its JetStream stream, read back from it and loaded with
the service's set-based path (`mosaic_reco.bulk.bulk_load`, the consumers' rules at once); the
stream is then purged (its events are in the model) so the service's live consumer starts idle.
Then one `mosaic-reco serve` behind one gateway worker (JWT verified at the gateway, from the
keys a test issuer serves as auth does), loaded by wrk with the tokens of 2,000 readers in turn;
the same load straight at the service for comparison.

Starts its own embedded PostgreSQL and NATS. Writes bench/results/reco_latency.json.
Run: .venv/bin/python bench/reco_latency.py [--readers 10000] [--blogs 20000] [--signals 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from loadgen import LoadResult, print_table, run_wrk, wait_ready, write_results
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from mosaic_devstack.embedded import EmbeddedNats, EmbeddedPostgres, free_port, stop_process
from mosaic_devstack.issuer import TokenIssuer
from mosaic_kit.contracts.blog import BlogBookmarked, BlogLiked, BlogPublished, BlogRead
from mosaic_kit.events import Event, EventPayload, stream_name
from mosaic_kit.nats import jetstream
from mosaic_kit.nats.connection import connect
from mosaic_kit.sql.db import Database
from mosaic_kit.sql.migrations import upgrade_async

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "reco_latency.json"
PATH = "/v1/recommendations/me?limit=10"
CLUSTERS = 60
TAGS = [f"TOPIC{n}" for n in range(20)]

ROTATE_TOKENS = """
local tokens = {}
for line in io.lines("%s") do tokens[#tokens + 1] = line end
local i = math.random(#tokens)
request = function()
  i = i %% #tokens + 1
  return wrk.format("GET", "%s", {["Authorization"] = "Bearer " .. tokens[i]})
end
"""


def generate(args: argparse.Namespace, rng: random.Random) -> tuple[list[Event], list[uuid.UUID]]:
    now = datetime.now(UTC)
    blogs = [uuid.uuid4() for _ in range(args.blogs)]
    cluster_of = [rng.randrange(CLUSTERS) for _ in blogs]
    by_cluster: dict[int, list[int]] = {}
    for index, cluster in enumerate(cluster_of):
        by_cluster.setdefault(cluster, []).append(index)
    events = [
        BlogPublished(
            id=blog,
            slug=f"b-{blog.hex[:12]}",
            title=f"Post {n}",
            description="generated",
            tags=[TAGS[cluster_of[n] % len(TAGS)], rng.choice(TAGS)],
            author_id=uuid.uuid4(),
            published_at=now - timedelta(days=rng.uniform(0, 60)),
        ).event(now - timedelta(days=60))
        for n, blog in enumerate(blogs)
    ]
    readers = [uuid.uuid4() for _ in range(args.readers)]
    per_reader = args.signals // args.readers
    for reader in readers:
        favourites = rng.sample(range(CLUSTERS), 3)
        for _ in range(per_reader):
            if rng.random() < 0.75:
                pool = by_cluster[rng.choice(favourites)]
                index = pool[min(int(rng.paretovariate(1.2)) - 1, len(pool) - 1)]
            else:
                index = rng.randrange(len(blogs))
            blog, when = blogs[index], now - timedelta(hours=rng.uniform(0, 24 * 30))
            roll = rng.random()
            if roll < 0.6:
                payload: EventPayload = BlogRead(blog_id=blog, user_id=reader, day=when.date())
            elif roll < 0.95:
                payload = BlogLiked(blog_id=blog, user_id=reader, likes=1)
            else:
                payload = BlogBookmarked(blog_id=blog, user_id=reader)
            events.append(payload.event(when))
    return events, readers


async def load(
    args: argparse.Namespace, pg: EmbeddedPostgres, nats_url: str
) -> tuple[dict[str, float], list[uuid.UUID]]:
    from mosaic_reco.bulk import Feed, bulk_load
    from mosaic_reco.settings import RecoSettings

    rng = random.Random(args.seed)
    began = time.monotonic()
    events, readers = generate(args, rng)
    generated = time.monotonic()
    nc = await connect(nats_url, "reco-latency-loader")
    js = nc.jetstream()
    await jetstream.ensure_stream(js, "blog")
    await jetstream.ensure_stream(js, "auth")
    for start in range(0, len(events), 2000):
        chunk = events[start : start + 2000]
        await asyncio.gather(*(js.publish(e.subject, e.to_json()) for e in chunk))
    published = time.monotonic()
    stream = stream_name("blog")
    last = (await js.stream_info(stream)).state.last_seq
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL)
    sub = await js.pull_subscribe("events.blog.>", stream=stream, config=config)
    replayed: list[Event] = []
    position = 0
    while position < last:
        for msg in await sub.fetch(5000, timeout=1.0):
            replayed.append(Event.from_json(msg.data))
            position = msg.metadata.sequence.stream
    await sub.unsubscribe()
    read_back = time.monotonic()
    settings = RecoSettings(database_url=pg.url, nats_url=nats_url, db_schema="reco")
    await upgrade_async(settings, "mosaic_reco")
    db = Database.from_settings(settings)
    await bulk_load(db, [Feed(settings.reco_blog_consumer, replayed)])
    async with db.transaction() as conn:
        from sqlalchemy import text

        await conn.execute(text("ANALYZE"))
        counts = {
            table: int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)  # noqa: S608
            for table in ("cards", "signals", "co_likes")
        }
    await db.dispose()
    loaded = time.monotonic()
    # The model holds them: the live consumer starts on an empty stream, not a million claims.
    await js.purge_stream(stream)
    await nc.close()
    return {
        "events": len(replayed),
        "generate_s": round(generated - began, 1),
        "publish_s": round(published - generated, 1),
        "read_back_s": round(read_back - published, 1),
        "bulk_load_s": round(loaded - read_back, 1),
        **{f"rows_{name}": value for name, value in counts.items()},
    }, readers


def gateway_config(port: int, reco_url: str, nats_url: str) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1", "port": port, "workers": 1},
        "nats": {"url": nats_url},
        "defaults": {"auth": {"api_key": "off", "jwt": "off"}},
        "backends": {"reco": {"instances": [reco_url]}},
        "routes": [
            {
                "path": "/v1/recommendations/me",
                "methods": ["GET"],
                "backend": "reco",
                "auth": {"api_key": "off", "jwt": "required"},
                "headers": {"allow": ["authorization", "accept"]},
                "query": {"allow": ["limit"]},
            }
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readers", type=int, default=10_000)
    parser.add_argument("--blogs", type=int, default=20_000)
    parser.add_argument("--signals", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--connections", default="1,32", help="wrk connection counts, comma-separated"
    )
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mosaic-reco-latency-"))
    pg = EmbeddedPostgres(root / "pg", free_port(), durable=False)
    nats = EmbeddedNats(root / "nats", free_port())
    pg.start()
    nats.start()
    procs: list[subprocess.Popen[bytes]] = []
    results: list[LoadResult] = []
    try:
        loading, readers = asyncio.run(load(args, pg, nats.url))
        print(f"loaded: {loading}", flush=True)
        issuer = TokenIssuer()
        issuer.jwks_subject = "auth.jwks.get"  # where the gateway and the service ask auth

        async def serve_keys() -> Any:
            nc = await connect(nats.url, "reco-latency-issuer")
            await issuer.serve(nc)
            return nc

        loop = asyncio.new_event_loop()
        keys_nc = loop.run_until_complete(serve_keys())
        keys_thread_stop = start_loop_thread(loop)
        env = {
            **os.environ,
            "DATABASE_URL": pg.url,
            "NATS_URL": nats.url,
            "DB_SCHEMA": "reco",
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "json",
        }
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        reco_port = free_port()
        bin_ = Path(sys.executable).parent
        procs.append(
            subprocess.Popen(
                [
                    str(bin_ / "mosaic-reco"),
                    "serve",
                    "--port",
                    str(reco_port),
                    "--instance-id",
                    "reco-bench",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        reco_url = f"http://127.0.0.1:{reco_port}"
        wait_ready(reco_url, timeout=60)
        gateway_port = free_port()
        config = root / "gateway.yaml"
        config.write_text(yaml.safe_dump(gateway_config(gateway_port, reco_url, nats.url)))
        procs.append(
            subprocess.Popen(
                [str(bin_ / "mosaic-gateway"), "serve", "--config", str(config), "--workers", "1"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        tokens = root / "tokens.txt"
        tokens.write_text("\n".join(issuer.token(r, ttl=3600) for r in readers[:2000]) + "\n")
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        wait_answer(gateway_url + PATH, issuer.token(readers[0]))
        sample = httpx.get(
            reco_url + PATH, headers={"Authorization": f"Bearer {issuer.token(readers[0])}"}
        ).json()
        for connections in [int(n) for n in args.connections.split(",")]:
            for name, base in (
                ("through the gateway", gateway_url),
                ("straight at the service", reco_url),
            ):
                script = root / f"rotate-{base.rsplit(':', 1)[1]}.lua"
                script.write_text(ROTATE_TOKENS % (tokens, PATH))
                threads = min(2, connections)
                run_wrk(
                    "warmup",
                    base + PATH,
                    seconds=2,
                    connections=connections,
                    threads=threads,
                    script=str(script),
                )
                results.append(
                    run_wrk(
                        f"/me  {name}  c={connections}",
                        base + PATH,
                        seconds=args.seconds,
                        connections=connections,
                        threads=threads,
                        script=str(script),
                    )
                )

        async def stop_keys() -> None:
            await issuer.stop()
            await keys_nc.close()

        asyncio.run_coroutine_threadsafe(stop_keys(), loop).result(timeout=10)
        keys_thread_stop()
    finally:
        for proc in procs:
            stop_process(proc.pid)
        nats.stop()
        pg.stop()
    print_table(
        f"recommendations for a reader: {args.readers} readers, {args.blogs} blogs, "
        f"{loading['events']} events (1 reco process, 1 gateway worker)",
        results,
    )
    reasons = sorted({item["reason"] for item in sample["items"]})
    print(f"a sample answer: {len(sample['items'])} items, reasons {reasons}")
    write_results(
        RESULTS,
        "reco_latency",
        {
            "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0]},
            "dataset": {"readers": args.readers, "blogs": args.blogs, "signals": args.signals},
            "loading": loading,
            "load": {"tool": "wrk", "connections": args.connections, "seconds": args.seconds},
            "results": [r.to_json() for r in results],
        },
    )


def start_loop_thread(loop: asyncio.AbstractEventLoop) -> Any:
    import threading

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def stop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)

    return stop


def wait_answer(url: str, token: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (
                httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code
                == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer 200 in {timeout:.0f} s")


if __name__ == "__main__":
    main()
