"""Helpers shared by the blog tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from mosaic_auth.service import AuthService
from mosaic_auth.settings import AuthSettings
from mosaic_blog.settings import BlogSettings

PASSWORD = "correct-horse-9"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def blog_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": "Microservices in practice",
        "description": "How to split a monolith into services that own their data",
        "draftText": "Start with the seams of the domain.",
        "slug": f"post-{uuid.uuid4().hex[:12]}",
        "imgUrl": "https://img.example.com/cover.png",
        "tags": ["architecture", "python"],
    }
    body.update(overrides)
    return body


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.05
) -> None:
    """Wait until `check()` holds (for effects that travel through NATS)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(interval)


class Platform:
    """HTTP clients for an auth app and two blog replicas, plus role-holding users."""

    def __init__(
        self, auth: httpx.AsyncClient, blog_a: httpx.AsyncClient, blog_b: httpx.AsyncClient
    ) -> None:
        self.auth = auth
        self.blog_a = blog_a
        self.blog_b = blog_b
        self.admin: dict[str, str] = {}

    async def sign_in_admin(self, auth_service: AuthService) -> None:
        """Seed auth's admin (`AuthService.seed`) and sign it in: `self.admin` then holds its
        headers, which `user` needs to grant roles."""
        seeded = await auth_service.seed()
        signin = await self.auth.post("/v1/auth/signin", json=seeded["admin"])
        assert signin.status_code == 200, signin.text
        self.admin = bearer(signin.json()["tokens"]["accessToken"])

    async def user(self, *roles: str, name: str = "Some Writer") -> dict[str, Any]:
        """A signed-up user holding `roles`, with a token that carries them."""
        email = f"u-{uuid.uuid4().hex[:12]}@example.com"
        signup = await self.auth.post(
            "/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": name}
        )
        assert signup.status_code == 201, signup.text
        body: dict[str, Any] = signup.json()
        if roles:
            granted = await self.auth.put(
                f"/v1/users/{body['user']['id']}/roles",
                json={"roles": ["LEARNER", *roles]},
                headers=self.admin,
            )
            assert granted.status_code == 200, granted.text
            refreshed = await self.auth.post(
                "/v1/auth/refresh", json={"refreshToken": body["tokens"]["refreshToken"]}
            )
            body["tokens"] = refreshed.json()["tokens"]
        body["headers"] = bearer(body["tokens"]["accessToken"])
        return body

    async def draft(self, author: dict[str, Any], **overrides: Any) -> dict[str, Any]:
        response = await self.blog_a.post(
            "/v1/author/blogs", json=blog_body(**overrides), headers=author["headers"]
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def published(
        self, author: dict[str, Any], editor: dict[str, Any], **overrides: Any
    ) -> dict[str, Any]:
        blog = await self.draft(author, **overrides)
        submit = await self.blog_a.post(
            f"/v1/author/blogs/{blog['id']}/submit", headers=author["headers"]
        )
        assert submit.status_code == 200, submit.text
        publish = await self.blog_a.post(
            f"/v1/editor/blogs/{blog['id']}/publish", headers=editor["headers"]
        )
        assert publish.status_code == 200, publish.text
        result: dict[str, Any] = publish.json()
        return result


def auth_settings(pg_url: str, nats_url: str) -> AuthSettings:
    return AuthSettings(
        database_url=pg_url,
        nats_url=nats_url,
        db_schema=f"auth_{uuid.uuid4().hex[:10]}",
        instance_id="auth-for-blog",
        auth_signing_key_secret=secrets.token_urlsafe(32),
        auth_argon2_time_cost=1,
        auth_argon2_memory_kib=8,
        auth_argon2_parallelism=1,
        log_format="json",
    )


def blog_settings(pg_url: str, nats_url: str, **overrides: Any) -> BlogSettings:
    tag = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "database_url": pg_url,
        "nats_url": nats_url,
        "db_schema": f"blog_{tag}",
        "blog_authors_consumer": f"blog-authors-{tag}",
        "blog_cache_bucket": f"cache_{tag}",
        "blog_cache_namespace": f"blog_{tag}",
        "log_format": "json",
    }
    values.update(overrides)
    return BlogSettings(**values)
