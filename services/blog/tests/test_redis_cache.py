"""The blog service on the Redis cache backend (REDIS_URL set): same freshness guarantees."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest_asyncio
from blog_support import Platform, auth_settings, blog_settings

from mosaic_auth.api import SERVICE as AUTH_SERVICE
from mosaic_auth.app import create_auth_app
from mosaic_blog.api import SERVICE as BLOG_SERVICE
from mosaic_blog.app import create_blog_app
from mosaic_kit.redis.cache import RedisCache
from mosaic_kit.sql.migrations import upgrade_async


@pytest_asyncio.fixture
async def redis_platform(pg_url: str, nats_url: str, redis_url: str) -> AsyncIterator[Platform]:
    auth_cfg = auth_settings(pg_url, nats_url)
    # A schema of its own, and with it a cache namespace nobody else uses.
    blog_cfg = blog_settings(pg_url, nats_url, redis_url=redis_url)
    await upgrade_async(auth_cfg, "mosaic_auth")
    await upgrade_async(blog_cfg, "mosaic_blog")
    async with AsyncExitStack() as stack:
        auth_app = create_auth_app(auth_cfg)
        await stack.enter_async_context(auth_app.router.lifespan_context(auth_app))
        apps = []
        for instance in ("blog-r1", "blog-r2"):
            app = create_blog_app(blog_cfg.model_copy(update={"instance_id": instance}))
            await stack.enter_async_context(app.router.lifespan_context(app))
            apps.append(app)
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url=f"http://{h}")
            )
            for a, h in ((auth_app, "auth"), (apps[0], "r1"), (apps[1], "r2"))
        ]
        platform = Platform(*clients)
        platform.blog_apps = apps  # type: ignore[attr-defined]
        await platform.sign_in_admin(AUTH_SERVICE.of(auth_app))
        yield platform


async def test_redis_backed_reads_are_shared_and_invalidated_at_once(
    redis_platform: Platform,
) -> None:
    p = redis_platform
    assert isinstance(BLOG_SERVICE.of(p.blog_apps[0]).cache, RedisCache)  # type: ignore[attr-defined]
    author: dict[str, Any] = await p.user("AUTHOR")
    editor: dict[str, Any] = await p.user("EDITOR")
    blog = await p.published(author, editor, title=f"Redis {uuid.uuid4().hex[:6]} post")
    path = f"/v1/blogs/{blog['id']}"
    assert (await p.blog_a.get(path)).headers["x-cache"] == "MISS"
    assert (await p.blog_b.get(path)).headers["x-cache"] == "HIT"
    await p.blog_a.patch(
        f"/v1/author/blogs/{blog['id']}",
        json={"title": "Changed on r1"},
        headers=author["headers"],
    )
    after = await p.blog_b.get(path)
    assert after.json()["title"] == "Changed on r1"
    await p.blog_b.post(f"/v1/editor/blogs/{blog['id']}/unpublish", headers=editor["headers"])
    assert (await p.blog_a.get(path)).status_code == 404
