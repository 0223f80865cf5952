"""Public reads keep answering, with author names, while the auth service is stopped.

In a module of its own: it runs its own auth service, and no other may answer on the same NATS.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import httpx
from blog_support import Platform, auth_settings, blog_settings

from mosaic_auth.api import SERVICE as AUTH_SERVICE
from mosaic_auth.app import create_auth_app
from mosaic_blog.api import SERVICE as BLOG_SERVICE
from mosaic_blog.app import create_blog_app
from mosaic_kit.fastapi.auth import TOKEN_VERIFIER
from mosaic_kit.sql.migrations import upgrade_async


async def test_public_reads_keep_working_with_author_names_while_auth_is_down(
    pg_url: str, nats_url: str
) -> None:
    auth_cfg, blog_cfg = auth_settings(pg_url, nats_url), blog_settings(pg_url, nats_url)
    await upgrade_async(auth_cfg, "mosaic_auth")
    await upgrade_async(blog_cfg, "mosaic_blog")
    blog_app = create_blog_app(blog_cfg)
    async with AsyncExitStack() as outer:
        await outer.enter_async_context(blog_app.router.lifespan_context(blog_app))
        blog = await outer.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=blog_app), base_url="http://b")
        )
        auth_app = create_auth_app(auth_cfg)
        async with auth_app.router.lifespan_context(auth_app):
            auth = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=auth_app), base_url="http://a"
            )
            # The blog service started first, so it has no keys yet; it would retry within a
            # second on its own (see JwksCache), the test just does not wait for that.
            await TOKEN_VERIFIER.of(blog_app).jwks.refresh()
            platform = Platform(auth, blog, blog)
            await platform.sign_in_admin(AUTH_SERVICE.of(auth_app))
            writer = await platform.user("AUTHOR", name="Offline Writer")
            editor = await platform.user("EDITOR")
            published = await platform.published(writer, editor)
            await auth.aclose()
        # Auth is gone (no responder on auth.*): public reads still answer, with the name.
        for path in (f"/v1/blogs/{published['id']}", "/v1/blogs?limit=5"):
            await BLOG_SERVICE.of(blog_app)._invalidate()  # force a read from the database
            response = await blog.get(path)
            assert response.status_code == 200
            assert response.headers["x-cache"] == "MISS"
            assert "Offline Writer" in response.text
