"""Pytest fixtures that give every test suite real PostgreSQL and NATS servers.

By default the session starts its own embedded servers on free ports (so the suite passes whether
or not the machine runs PostgreSQL on 5432 or NATS on 4222, and never touches their data).
`MOSAIC_TEST_DATABASE_URL` / `MOSAIC_TEST_NATS_URL` point the suite at existing servers instead.
Tests isolate themselves by schema (`fresh_schema`) and by subject/stream names, not by server.

The suite runs in two processes (pytest-xdist, `-n 2` in pyproject.toml): each has its own
embedded servers, each test file runs whole in one of them (its module fixtures start once), and
every test of the shared running system (`system`: one `mosaic up`) runs in the same one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from mosaic_devstack.embedded import EmbeddedNats, EmbeddedPostgres
from mosaic_devstack.issuer import TokenIssuer
from mosaic_kit.nats.connection import connect


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Before xdist's own hook, which turns the marks into the groups `--dist loadgroup` deals.
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        group = "system" if "system" in fixtures else item.nodeid.partition("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def embedded_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        yield tmp_path_factory.mktemp("mosaic-servers")
        return
    # Under root PostgreSQL runs as another user, who must traverse every parent of its data
    # folder; any pytest session starting meanwhile resets /tmp/pytest-of-root to 0700, which
    # makes initdb or start-up fail with "Permission denied". So keep the servers elsewhere.
    root = Path(tempfile.mkdtemp(prefix="mosaic-servers-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(embedded_root: Path) -> Iterator[str]:
    """SQLAlchemy (asyncpg) URL of a PostgreSQL server for the whole test session."""
    external = os.environ.get("MOSAIC_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(embedded_root / "pg", durable=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(embedded_root: Path) -> Iterator[str]:
    """URL of a NATS server (JetStream on) for the whole test session."""
    external = os.environ.get("MOSAIC_TEST_NATS_URL")
    if external:
        yield external
        return
    server = EmbeddedNats(embedded_root / "nats")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A reachable Redis (`MOSAIC_TEST_REDIS_URL`, else db 15 on the usual port), or a skip.

    No Redis server ships as a wheel for Linux, so Redis-backed tests run where one is
    reachable (CI's machine has one) and say why they are skipped elsewhere; the NATS-backed
    cache, which every test can run, is the default backend. Tests must namespace their keys.
    """
    import redis

    explicit = os.environ.get("MOSAIC_TEST_REDIS_URL")
    url = explicit or DEFAULT_TEST_REDIS_URL
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        if explicit:
            pytest.fail(f"MOSAIC_TEST_REDIS_URL is set but does not answer: {exc}")
        pytest.skip(f"no Redis at {url} and MOSAIC_TEST_REDIS_URL unset ({exc})")
    finally:
        client.close()
    return url


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A NATS server private to one test, which the test may stop and restart."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_schema() -> str:
    """A schema name no other test uses."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest_asyncio.fixture(scope="session")
async def token_issuer(nats_url: str) -> AsyncIterator[TokenIssuer]:
    """Signs access tokens as auth does and serves their JWKS on `token_issuer.jwks_subject`."""
    issuer = TokenIssuer()
    nc = await connect(nats_url, "test-token-issuer")
    await issuer.serve(nc)
    try:
        yield issuer
    finally:
        await issuer.stop()
        await nc.close()
