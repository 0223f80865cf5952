"""While PostgreSQL is down the services answer 503 with Retry-After, and recover on their own.

Auth and blog run on a PostgreSQL of their own, which the test stops and starts again for real
(the session's server, shared by every other test, is left alone).
"""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
from blog_support import PASSWORD, Platform, auth_settings, blog_body, blog_settings

from mosaic_auth.api import SERVICE as AUTH_SERVICE
from mosaic_auth.app import create_auth_app
from mosaic_blog.app import create_blog_app
from mosaic_devstack.embedded import EmbeddedPostgres
from mosaic_kit.fastapi.auth import TOKEN_VERIFIER
from mosaic_kit.sql.migrations import upgrade_async


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["code"] == "service.unavailable"


async def test_postgres_restart_is_503_with_retry_after_then_writes_succeed_again(
    nats_url: str, embedded_root: Path
) -> None:
    server = EmbeddedPostgres(embedded_root / f"pg-down-{uuid.uuid4().hex[:8]}", durable=False)
    server.start()
    try:
        auth_cfg = auth_settings(server.url, nats_url)
        blog_cfg = blog_settings(server.url, nats_url)
        await upgrade_async(auth_cfg, "mosaic_auth")
        await upgrade_async(blog_cfg, "mosaic_blog")
        async with AsyncExitStack() as stack:
            auth_app, blog_app = create_auth_app(auth_cfg), create_blog_app(blog_cfg)
            for app in (auth_app, blog_app):
                await stack.enter_async_context(app.router.lifespan_context(app))
            auth, blog = [
                await stack.enter_async_context(
                    httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)
                )
                for app, base in ((auth_app, "http://auth"), (blog_app, "http://blog"))
            ]
            await TOKEN_VERIFIER.of(blog_app).jwks.refresh()
            platform = Platform(auth, blog, blog)
            await platform.sign_in_admin(AUTH_SERVICE.of(auth_app))
            writer = await platform.user("AUTHOR", name="Restart Writer")
            first = await platform.draft(writer)

            server.stop()
            write = await blog.post("/v1/author/blogs", json=blog_body(), headers=writer["headers"])
            _assert_unavailable(write)
            _assert_unavailable(await blog.get("/v1/author/blogs", headers=writer["headers"]))
            _assert_unavailable(
                await blog.get(f"/v1/author/blogs/{first['id']}", headers=writer["headers"])
            )
            signin = {"email": writer["user"]["email"], "password": PASSWORD}
            _assert_unavailable(await auth.post("/v1/auth/signin", json=signin))
            _assert_unavailable(await auth.get("/v1/users/me", headers=writer["headers"]))

            server.start()
            # The same process, not restarted: its pool replaces the dead connections.
            again = await blog.post("/v1/author/blogs", json=blog_body(), headers=writer["headers"])
            assert again.status_code == 201, again.text
            mine = await blog.get("/v1/author/blogs", headers=writer["headers"])
            assert mine.status_code == 200
            assert {b["id"] for b in mine.json()["items"]} == {first["id"], again.json()["id"]}
            assert (await auth.post("/v1/auth/signin", json=signin)).status_code == 200
    finally:
        server.stop()
