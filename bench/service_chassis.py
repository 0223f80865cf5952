"""What the service chassis costs per request: each case beside a bare Starlette twin.

One run, one ASGI server for every app (uvicorn, uvloop, httptools, one process, no access log
of uvicorn's own), loaded in turn with wrk:

- `GET /ping` on `mosaic_kit.fastapi.app.create_app` (request id, access log at INFO, RED metrics,
  problem handlers; tracing off) vs the same route on bare Starlette (and, for reference, on
  FastAPI without the chassis);
- `GET /v1/users/me` on the real auth service (`mosaic-auth serve`) vs a bare Starlette +
  asyncpg handler that verifies the bearer token with the kit's `TokenVerifier` (its cached path
  after the first request: the same work the service does per request) and runs the service's
  own users ⋈ sessions query, compiled from `mosaic_auth.store`, on an asyncpg pool;
- `GET /v1/author/blogs/{id}` (an author reading one of their blogs: never cached) on the real
  blog service (`mosaic-blog serve`, its keys from auth over NATS) vs the same kind of twin
  running the blog's own blogs ⋈ authors statement, compiled from `mosaic_blog.store`.

Then the server choice: the chassis route and its bare twin again on granian and hypercorn (same
loop, one worker), each beside uvicorn's figure from the same run.

Logs are JSON at INFO written to /dev/null (the service's real cost of its access line).
Starts its own embedded PostgreSQL and NATS. Writes bench/results/service_chassis.json.
Run: .venv/bin/python bench/service_chassis.py [--seconds 8] [--connections 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
from loadgen import LoadResult, auth_with_user, print_table, run_wrk, wait_ready, write_results

from mosaic_devstack.embedded import EmbeddedNats, EmbeddedPostgres, free_port, stop_process

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "service_chassis.json"
GOALS = {"trivial": 0.85, "users_me": 0.7, "blog_by_id": 0.7}


# --- the apps under test (built by uvicorn through `--factory`) ------------------------------


def kit_trivial() -> Any:
    """`GET /ping` on the full chassis, logging configured as a service configures it."""
    from fastapi import APIRouter

    from mosaic_kit.fastapi.app import create_app
    from mosaic_kit.logging import configure_logging
    from mosaic_kit.metrics import new_registry
    from mosaic_kit.settings import ServiceSettings

    settings = ServiceSettings.load(service_name="bench", instance_id="bench-kit")
    configure_logging("bench", "bench-kit", settings.log_level, settings.log_format)
    router = APIRouter()

    @router.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "ok"}

    return create_app(
        settings,
        title="bench",
        description="chassis cost",
        version="0",
        routers=[router],
        commit="bench",
        registry=new_registry(),
    )


def fastapi_trivial() -> Any:
    """The same route on FastAPI without the chassis: what the framework alone costs."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "ok"}

    return app


def bare_trivial() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ping(_request: Request) -> JSONResponse:
        return JSONResponse({"pong": "ok"})

    return Starlette(routes=[Route("/ping", ping)])


def bare_users_me() -> Any:
    """The users/me twin: kit token verification + the service's query on an asyncpg pool."""
    import asyncpg
    import orjson
    from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from mosaic_auth.store import _active_session_user as statement
    from mosaic_kit.jwks import JwksCache, StaticKeySource
    from mosaic_kit.problem import Problem
    from mosaic_kit.revocation import RevocationSet
    from mosaic_kit.tokens import TokenVerifier

    if callable(statement):  # before the statement was built once (to bench the old code)
        statement = statement(uuid.uuid4(), 0)
    sql = str(statement.compile(dialect=asyncpg_dialect.dialect()))  # type: ignore[no-untyped-call]
    jwks = json.loads(os.environ["BENCH_JWKS"])
    verifier = TokenVerifier(
        JwksCache(StaticKeySource(jwks)),
        revocations=RevocationSet(),
        issuer=os.environ.get("AUTH_ISSUER", "mosaic-auth"),
        audience=os.environ.get("AUTH_AUDIENCE", "mosaic"),
    )
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(
            os.environ["BENCH_DSN"],
            min_size=10,
            max_size=10,
            server_settings={"search_path": "auth"},
        )
        yield
        await state["pool"].close()

    async def me(request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            principal = await verifier.verify(token.strip() if scheme.lower() == "bearer" else None)
        except Problem:
            return Response(status_code=401)
        row = await state["pool"].fetchrow(
            sql, [], uuid.UUID(principal.session_id), principal.issued_at
        )
        if row is None or str(row["id"]) != principal.user_id:
            return Response(status_code=401)
        body = {
            "id": str(row["id"]),
            "email": row["email"],
            "name": row["name"],
            "profilePicUrl": row["profile_pic_url"],
            "roles": sorted(row["roles"]),
            "createdAt": row["created_at"].isoformat(),
        }
        return Response(orjson.dumps(body), media_type="application/json")

    return Starlette(routes=[Route("/v1/users/me", me)], lifespan=lifespan)


def bare_blog_by_id() -> Any:
    """The author's blog-by-id twin: kit token verification + the blog's statement on asyncpg."""
    import asyncpg
    import orjson
    from sqlalchemy import bindparam
    from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from mosaic_blog import store
    from mosaic_blog.tables import blogs
    from mosaic_kit.jwks import JwksCache, StaticKeySource
    from mosaic_kit.problem import Problem
    from mosaic_kit.revocation import RevocationSet
    from mosaic_kit.tokens import TokenVerifier

    # What store.get_blog(conn, id, author_id=...) runs, with the two values as parameters.
    statement = store._select().where(
        blogs.c.id == bindparam("id"), store._live, blogs.c.author_id == bindparam("author")
    )
    sql = str(statement.compile(dialect=asyncpg_dialect.dialect()))  # type: ignore[no-untyped-call]
    verifier = TokenVerifier(
        JwksCache(StaticKeySource(json.loads(os.environ["BENCH_JWKS"]))),
        revocations=RevocationSet(),
        issuer=os.environ.get("AUTH_ISSUER", "mosaic-auth"),
        audience=os.environ.get("AUTH_AUDIENCE", "mosaic"),
    )
    state: dict[str, Any] = {}

    class _Row:  # the row shape store._blog reads (SQLAlchemy's `_mapping`)
        def __init__(self, record: Any) -> None:
            self._mapping = record

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(
            os.environ["BENCH_DSN"],
            min_size=10,
            max_size=10,
            server_settings={"search_path": "blog"},
        )
        yield
        await state["pool"].close()

    async def blog(request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            principal = await verifier.verify(token.strip() if scheme.lower() == "bearer" else None)
        except Problem:
            return Response(status_code=401)
        if "AUTHOR" not in principal.roles:
            return Response(status_code=403)
        try:
            blog_id = uuid.UUID(request.path_params["blog_id"])
        except ValueError:
            return Response(status_code=422)
        row = await state["pool"].fetchrow(sql, blog_id, uuid.UUID(principal.user_id))
        if row is None:
            return Response(status_code=404)
        body = store._blog(_Row(row)).full_view()  # type: ignore[arg-type]
        return Response(orjson.dumps(body), media_type="application/json")

    return Starlette(routes=[Route("/v1/author/blogs/{blog_id}", blog)], lifespan=lifespan)


def _pause_for_profiler(service: str, pid: int) -> None:
    """With BENCH_PAUSE=SECONDS: time to attach a profiler (py-spy record --pid ...) first."""
    if os.environ.get("BENCH_PAUSE"):
        print(f"{service} pid {pid}; loading in {os.environ['BENCH_PAUSE']} s", flush=True)
        time.sleep(float(os.environ["BENCH_PAUSE"]))


@contextmanager
def blog_with_draft(env: dict[str, str], auth_url: str) -> Iterator[tuple[str, str, str]]:
    """`mosaic-blog` migrated and serving beside the running auth, one draft written by auth's
    seeded admin (who has the AUTHOR role): the blog's URL, the draft's path, the admin's token."""
    bin_ = Path(sys.executable).parent
    seeded = subprocess.run(
        [str(bin_ / "mosaic-auth"), "seed"], env=env, check=True, capture_output=True
    )
    admin = json.loads(seeded.stdout)["admin"]
    signin = httpx.post(auth_url + "/v1/auth/signin", json=admin, timeout=10)
    signin.raise_for_status()
    token = signin.json()["tokens"]["accessToken"]
    blog_env = {**env, "DB_SCHEMA": "blog"}
    subprocess.run(
        [str(bin_ / "mosaic-blog"), "migrate"], env=blog_env, check=True, capture_output=True
    )
    port = free_port()
    server = subprocess.Popen(
        [str(bin_ / "mosaic-blog"), "serve", "--port", str(port), "--instance-id", "blog-bench"],
        env=blog_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        draft = {
            "title": "Bench",
            "description": "A draft read by its author",
            "draftText": "Some words. " * 40,
            "slug": f"bench-{uuid.uuid4().hex[:8]}",
            "imgUrl": "https://example.com/bench.png",
            "tags": ["bench", "python"],
        }
        made = httpx.post(
            url + "/v1/author/blogs",
            json=draft,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        made.raise_for_status()
        _pause_for_profiler("blog", server.pid)
        yield url, f"/v1/author/blogs/{made.json()['id']}", token
    finally:
        stop_process(server.pid)


# --- the driver ------------------------------------------------------------------------------


SERVERS = ("uvicorn", "granian", "hypercorn")


def _server_argv(server: str, factory: str, port: int) -> list[str]:
    """One worker, uvloop, no access log of the server's own; uvicorn as `serve` runs it."""
    target = f"service_chassis:{factory}"
    if server == "uvicorn":
        args = [sys.executable, "-m", "uvicorn", target, "--factory", "--app-dir", str(HERE)]
        args += ["--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop"]
        args += ["--http", "httptools", "--no-access-log", "--no-server-header"]
        return [*args, "--log-level", "warning"]
    if server == "granian":
        args = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory"]
        args += ["--working-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port)]
        args += ["--loop", "uvloop", "--workers", "1", "--http", "1", "--no-ws"]
        return [*args, "--log-level", "warning", target]
    if server == "hypercorn":
        args = [sys.executable, "-m", "hypercorn", f"{target}()", "--worker-class", "uvloop"]
        args += ["--bind", f"127.0.0.1:{port}", "--workers", "1", "--log-level", "warning"]
        return args
    raise ValueError(server)


def _uvicorn(
    factory: str, port: int, env: dict[str, str], server: str = "uvicorn"
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        _server_argv(server, factory, port),
        # HERE for the factories, before whatever the caller put first (an older build, to
        # compare against: PYTHONPATH=<worktree>/libs/kit/src:...).
        env={
            **env,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")])),
        },
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {timeout:.0f} s")


def _load(
    name: str, url: str, args: argparse.Namespace, headers: dict[str, str] | None = None
) -> LoadResult:
    run_wrk("warmup", url, headers=headers, seconds=args.warmup, connections=args.connections)
    return run_wrk(name, url, headers=headers, seconds=args.seconds, connections=args.connections)


def _serve_and_load(
    factory: str,
    path: str,
    name: str,
    env: dict[str, str],
    args: argparse.Namespace,
    server: str = "uvicorn",
    **kw: Any,
) -> LoadResult:
    port = free_port()
    proc = _uvicorn(factory, port, env, server)
    try:
        _wait_http(f"http://127.0.0.1:{port}{path}")
        return _load(name, f"http://127.0.0.1:{port}{path}", args, **kw)
    finally:
        stop_process(proc.pid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()

    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="mosaic-bench-"))
    pg, nats = EmbeddedPostgres(root / "pg", durable=False), EmbeddedNats(root / "nats")
    pg.start()
    nats.start()
    env = {
        **os.environ,
        "DATABASE_URL": pg.url,
        "NATS_URL": nats.url,
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        # auth refuses to keep its signing keys in plaintext
        "AUTH_SIGNING_KEY_SECRET": os.urandom(32).hex(),
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # tracing off
    results: list[LoadResult] = []
    try:
        results.append(_serve_and_load("kit_trivial", "/ping", "GET /ping  kit chassis", env, args))
        results.append(
            _serve_and_load("bare_trivial", "/ping", "GET /ping  bare Starlette", env, args)
        )
        # Not part of the goal; it splits the chassis' cost into FastAPI's and the kit's.
        framework = _serve_and_load(
            "fastapi_trivial", "/ping", "GET /ping  FastAPI, no chassis", env, args
        )

        with auth_with_user(env) as (server, url, token):
            bearer = {"Authorization": f"Bearer {token}"}
            jwks = httpx.get(url + "/v1/auth/jwks.json", timeout=10).text
            _pause_for_profiler("auth", server.pid)
            results.append(
                _load("GET /v1/users/me  auth service", url + "/v1/users/me", args, bearer)
            )
            with blog_with_draft(env, url) as (blog_url, blog_path, author_token):
                author = {"Authorization": f"Bearer {author_token}"}
                results.append(
                    _load(
                        "GET /v1/author/blogs/{id}  blog service",
                        blog_url + blog_path,
                        args,
                        author,
                    )
                )
        twin_env = {**env, "BENCH_DSN": pg.url.replace("+asyncpg", ""), "BENCH_JWKS": jwks}
        results.append(
            _serve_and_load(
                "bare_users_me",
                "/v1/users/me",
                "GET /v1/users/me  bare Starlette+asyncpg",
                twin_env,
                args,
                headers=bearer,
            )
        )
        results.append(
            _serve_and_load(
                "bare_blog_by_id",
                blog_path,
                "GET /v1/author/blogs/{id}  bare Starlette+asyncpg",
                {**twin_env, "BENCH_DSN": pg.url.replace("+asyncpg", "")},
                args,
                headers=author,
            )
        )
        servers: list[LoadResult] = []
        for server in SERVERS[1:]:
            for factory, label in (
                ("kit_trivial", "kit chassis"),
                ("bare_trivial", "bare Starlette"),
            ):
                servers.append(
                    _serve_and_load(
                        factory, "/ping", f"GET /ping  {label}  [{server}]", env, args, server
                    )
                )
    finally:
        nats.stop()
        pg.stop()

    ratios = {
        "trivial": results[0].requests_per_second / results[1].requests_per_second,
        "users_me": results[2].requests_per_second / results[4].requests_per_second,
        "blog_by_id": results[3].requests_per_second / results[5].requests_per_second,
    }
    results.append(framework)
    load_after = os.getloadavg()
    print_table("service chassis vs bare Starlette (uvicorn + httptools, 1 process)", results)
    print_table("the same /ping on other ASGI servers (1 worker, uvloop)", servers)
    uvicorn_kit = results[0].requests_per_second
    for result in servers:
        print(
            f"{result.name:<45} {result.requests_per_second / uvicorn_kit:5.2f}x uvicorn's chassis row"
        )
    for case, ratio in ratios.items():
        verdict = "meets" if ratio >= GOALS[case] else "MISSES"
        print(f"{case:<10} {ratio:5.2f}x bare  ({verdict} the goal of {GOALS[case]}x)")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    write_results(
        RESULTS,
        "service_chassis",
        {
            "machine": {"cpus": os.cpu_count(), "load_average_before": load_before[0]},
            "load": {
                "tool": "wrk",
                "threads": 2,
                "connections": args.connections,
                "seconds": args.seconds,
                "warmup_seconds": args.warmup,
            },
            "results": [r.to_json() for r in results],
            "servers": [r.to_json() for r in servers],
            "ratios": ratios,
            "goals": GOALS,
        },
    )


if __name__ == "__main__":
    main()
