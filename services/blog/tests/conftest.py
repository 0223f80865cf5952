"""Fixtures: a real auth app (tokens, JWKS, user events) and two blog replicas on one schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest_asyncio
from blog_support import PASSWORD, Platform, auth_settings, blog_settings

from mosaic_auth.api import SERVICE as AUTH_SERVICE
from mosaic_auth.app import create_auth_app
from mosaic_blog.app import create_blog_app
from mosaic_kit.sql.migrations import upgrade_async


def _client(app: Any, host: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


@pytest_asyncio.fixture(scope="module")
async def platform(pg_url: str, nats_url: str) -> AsyncIterator[Platform]:
    auth_cfg = auth_settings(pg_url, nats_url)
    blog_cfg = blog_settings(pg_url, nats_url)
    await upgrade_async(auth_cfg, "mosaic_auth")
    await upgrade_async(blog_cfg, "mosaic_blog")
    async with AsyncExitStack() as stack:
        auth_app = create_auth_app(auth_cfg)
        await stack.enter_async_context(auth_app.router.lifespan_context(auth_app))
        apps = []
        for instance in ("blog-a", "blog-b"):
            app = create_blog_app(blog_cfg.model_copy(update={"instance_id": instance}))
            await stack.enter_async_context(app.router.lifespan_context(app))
            apps.append(app)
        clients = [
            await stack.enter_async_context(_client(app, host))
            for app, host in ((auth_app, "auth"), (apps[0], "blog-a"), (apps[1], "blog-b"))
        ]
        result = Platform(*clients)
        result.blog_apps = apps  # type: ignore[attr-defined]
        result.auth_app = auth_app  # type: ignore[attr-defined]
        await result.sign_in_admin(AUTH_SERVICE.of(auth_app))
        assert PASSWORD
        yield result


@pytest_asyncio.fixture(scope="module")
async def author(platform: Platform) -> dict[str, Any]:
    return await platform.user("AUTHOR", name="Ada Author")


@pytest_asyncio.fixture(scope="module")
async def editor(platform: Platform) -> dict[str, Any]:
    return await platform.user("EDITOR", name="Ed Editor")
