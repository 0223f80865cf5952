"""Public blog reads against one blog instance, measured with wrk, 100,000 published blogs.

Cases: `GET /v1/blogs/{id}` on a cache hit (one id over and over) and on a miss (every request
a different id, so none is cached); `GET /v1/blogs?limit=20` (the first page, cached) and deep
pages through keyset cursors (never cached: each is a database query).
Writes bench/results/blog_reads.json. Run: .venv/bin/python bench/blog_reads.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import httpx
from loadgen import print_table, run_wrk, wait_ready, write_results

from mosaic_devstack.embedded import EmbeddedNats, EmbeddedPostgres, free_port, stop_process

RESULTS = Path(__file__).resolve().parent / "results" / "blog_reads.json"
BLOGS = 100_000

# Rotates through the paths listed in a file, one per request (wrk runs this per thread).
ROTATE_LUA = """
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
local i = math.random(#paths)
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def fill(dsn: str, schema: str) -> list[str]:
    """Insert BLOGS published blogs (and their authors) in one statement each; return ids."""

    async def run() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'SET search_path TO "{schema}"')
            await conn.execute(
                """
                INSERT INTO authors (id, name, profile_pic_url, as_of)
                SELECT md5('author' || g)::uuid, 'Author ' || g, NULL, now()
                FROM generate_series(1, 500) g
                """
            )
            await conn.execute(
                """
                INSERT INTO blogs (id, slug, title, description, text, draft_text, tags, img_url,
                                   author_id, state, published_at, created_at, updated_at)
                SELECT md5('blog' || g)::uuid, 'bench-post-' || g,
                       'Post number ' || g || ' about services and data',
                       'A description of post ' || g || ' for the benchmark',
                       repeat('Body text. ', 200), '', ARRAY['TAG' || (g % 50)],
                       'https://img.example.com/' || g || '.png',
                       md5('author' || (g % 500 + 1))::uuid, 'published',
                       now() - (g || ' seconds')::interval, now(), now()
                FROM generate_series(1, $1::int) g
                """,
                BLOGS,
            )
            await conn.execute("ANALYZE blogs")
            rows = await conn.fetch("SELECT id FROM blogs ORDER BY random()")
            return [str(r["id"]) for r in rows]
        finally:
            await conn.close()

    import asyncio

    return asyncio.run(run())


def deep_cursors(url: str, pages: int) -> list[str]:
    """Cursors spread over the whole listing, gathered by walking it with limit=100."""
    cursors: list[str] = []
    cursor = None
    with httpx.Client(timeout=30) as http:
        for _ in range(pages):
            params: dict[str, str | int] = {"limit": 100} | ({"cursor": cursor} if cursor else {})
            body = http.get(url + "/v1/blogs", params=params).json()
            cursor = body["nextCursor"]
            if cursor is None:
                break
            cursors.append(cursor)
    return cursors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mosaic-bench-"))
    root.chmod(0o755)
    pg, nats = EmbeddedPostgres(root / "pg", durable=False), EmbeddedNats(root / "nats")
    pg.start()
    nats.start()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": pg.url,
        "NATS_URL": nats.url,
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
    }
    env.pop("REDIS_URL", None)
    bin_ = str(Path(sys.executable).parent / "mosaic-blog")
    subprocess.run([bin_, "migrate"], env=env, check=True, capture_output=True)
    print(f"inserting {BLOGS} published blogs ...", flush=True)
    ids = fill(pg.url.replace("+asyncpg", ""), "blog")
    server = subprocess.Popen(
        [bin_, "serve", "--port", str(port), "--instance-id", "blog-bench"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = []
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        lua_dir = root / "lua"
        lua_dir.mkdir()

        def rotate(name: str, paths: list[str]) -> str:
            listing = lua_dir / f"{name}.txt"
            listing.write_text("\n".join(paths) + "\n")
            script = lua_dir / f"{name}.lua"
            script.write_text(ROTATE_LUA % listing)
            return str(script)

        hot = ids[0]
        httpx.get(f"{url}/v1/blogs/{hot}")  # warm the entry
        results.append(
            run_wrk(
                "GET /v1/blogs/{id} cache hit",
                f"{url}/v1/blogs/{hot}",
                seconds=args.seconds,
                connections=args.connections,
            )
        )
        results.append(
            run_wrk(
                "GET /v1/blogs/{id} cache miss (distinct ids)",
                url,
                script=rotate("ids", [f"/v1/blogs/{i}" for i in ids[1:]]),
                seconds=args.seconds,
                connections=args.connections,
            )
        )
        results.append(
            run_wrk(
                "GET /v1/blogs?limit=20 (first page, cached)",
                f"{url}/v1/blogs?limit=20",
                seconds=args.seconds,
                connections=args.connections,
            )
        )
        cursors = deep_cursors(url, 1000)
        results.append(
            run_wrk(
                "GET /v1/blogs?limit=20&cursor (deep pages)",
                url,
                script=rotate("pages", [f"/v1/blogs?limit=20&cursor={c}" for c in cursors]),
                seconds=args.seconds,
                connections=args.connections,
            )
        )
    finally:
        stop_process(server.pid)
        nats.stop()
        pg.stop()
    print_table(f"blog service, one instance, {BLOGS} published blogs", results)
    write_results(
        RESULTS,
        "blog_reads",
        {
            "machine": {"cpus": os.cpu_count()},
            "published_blogs": BLOGS,
            "load": {"tool": "wrk", "connections": args.connections, "seconds": args.seconds},
            "results": [r.to_json() for r in results],
        },
    )


if __name__ == "__main__":
    main()
