"""The blogging workflow across the running system: two auth and two blog replicas."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
from e2e_support import System

PASSWORD = "correct-horse-9"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _user_with_roles(http: httpx.Client, system: System, *roles: str) -> dict[str, Any]:
    auth_one, auth_two = system.urls("auth")
    admin = http.post(f"{auth_one}/v1/auth/signin", json=system.status()["credentials"]["admin"])
    admin_hdr = bearer(admin.json()["tokens"]["accessToken"])
    email = f"writer-{uuid.uuid4().hex[:8]}@example.com"
    user = http.post(
        f"{auth_two}/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Wren"}
    ).json()
    granted = http.put(
        f"{auth_one}/v1/users/{user['user']['id']}/roles",
        json={"roles": ["LEARNER", *roles]},
        headers=admin_hdr,
    )
    assert granted.status_code == 200, granted.text
    tokens = http.post(
        f"{auth_two}/v1/auth/refresh", json={"refreshToken": user["tokens"]["refreshToken"]}
    ).json()["tokens"]
    return {"id": user["user"]["id"], "headers": bearer(tokens["accessToken"])}


def test_write_submit_publish_read_across_replicas(system: System) -> None:
    blog_one, blog_two = system.urls("blog")
    auth_one, _ = system.urls("auth")
    with httpx.Client(timeout=10) as http:
        writer = _user_with_roles(http, system, "AUTHOR", "EDITOR")
        slug = f"e2e-{uuid.uuid4().hex[:8]}"
        created = http.post(
            f"{blog_one}/v1/author/blogs",
            json={
                "title": "Services that own their data",
                "description": "Why every service keeps its own schema",
                "draftText": "One schema per service.",
                "slug": slug,
                "imgUrl": "https://img.example.com/e2e.png",
                "tags": ["architecture"],
            },
            headers=writer["headers"],
        )
        assert created.status_code == 201, created.text
        blog_id = created.json()["id"]
        assert http.get(f"{blog_two}/v1/blogs/{blog_id}").status_code == 404
        submit = http.post(
            f"{blog_two}/v1/author/blogs/{blog_id}/submit", headers=writer["headers"]
        )
        assert submit.status_code == 200
        publish = http.post(
            f"{blog_one}/v1/editor/blogs/{blog_id}/publish", headers=writer["headers"]
        )
        assert publish.status_code == 200
        # Published through one replica, read at once through the other.
        public = http.get(f"{blog_two}/v1/blogs/by-slug/{slug}")
        assert public.status_code == 200
        assert public.json()["text"] == "One schema per service."
        assert public.json()["author"]["name"] == "Wren"

        # The author renames themselves at auth; the blog service learns it from the event.
        renamed = http.patch(
            f"{auth_one}/v1/users/me", json={"name": "Wren Renamed"}, headers=writer["headers"]
        )
        assert renamed.status_code == 200
        deadline = time.monotonic() + 10
        while http.get(f"{blog_one}/v1/blogs/{blog_id}").json()["author"]["name"] != "Wren Renamed":
            assert time.monotonic() < deadline, "the rename never reached the blog service"
            time.sleep(0.1)

        unpublish = http.post(
            f"{blog_two}/v1/editor/blogs/{blog_id}/unpublish", headers=writer["headers"]
        )
        assert unpublish.status_code == 200
        assert http.get(f"{blog_one}/v1/blogs/{blog_id}").status_code == 404


def test_bad_blog_input_through_the_running_system(system: System) -> None:
    blog_one, _ = system.urls("blog")
    with httpx.Client(timeout=10) as http:
        writer = _user_with_roles(http, system, "AUTHOR")
        bad = http.post(
            f"{blog_one}/v1/author/blogs", json={"title": "no"}, headers=writer["headers"]
        )
        assert bad.status_code == 422
        assert bad.headers["content-type"].startswith("application/problem+json")
        fields = {e["field"] for e in bad.json()["errors"]}
        assert {"title", "description", "slug", "imgUrl", "tags"} <= fields
        assert http.post(f"{blog_one}/v1/author/blogs", json={}).status_code == 401
