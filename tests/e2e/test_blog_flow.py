"""The blogging workflow of API.md through the gateway, and what the gateway refuses on its own."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from e2e_support import (
    System,
    assert_problem,
    bearer,
    eventually,
    request_id,
    signed_up,
    with_roles,
)

# Public reads are cached at the gateway (and in the blog service) and dropped by the events a
# change publishes (`blog.blog.*`), which travel through NATS to every gateway worker: a read
# issued right after a change may still meet the old entry for a moment. So reads that follow a
# change are repeated for up to this long; a cache that is not invalidated keeps the old answer
# for its whole TTL (10 s) and fails the test.
INVALIDATION = 2.0


def _draft(slug: str, tag: str) -> dict[str, Any]:
    return {
        "title": "Services that own their data",
        "description": "Why every service keeps its own schema",
        "draftText": "One schema per service.",
        "slug": slug,
        "imgUrl": "https://img.example.com/e2e.png",
        "tags": ["architecture", tag],
    }


def test_author_writes_editor_publishes_everyone_reads_through_the_gateway(
    system: System,
) -> None:
    with system.client() as http:
        author = with_roles(http, system, "Wren", "AUTHOR")
        editor = with_roles(http, system, "Ed Itor", "EDITOR")
        slug = f"e2e-{uuid.uuid4().hex[:8]}"
        tag = f"t{uuid.uuid4().hex[:8]}"
        listing = {"tag": tag, "limit": 10}
        # Read (and cached) before anything is published: empty.
        assert http.get("/v1/blogs", params=listing).json()["items"] == []

        idem = {"Idempotency-Key": uuid.uuid4().hex}
        created = http.post(
            "/v1/author/blogs", json=_draft(slug, tag), headers={**author["headers"], **idem}
        )
        assert created.status_code == 201, created.text
        blog_id = created.json()["id"]
        assert created.json()["state"] == "draft"
        again = http.post(
            "/v1/author/blogs", json=_draft(slug, tag), headers={**author["headers"], **idem}
        )
        assert again.json()["id"] == blog_id  # the repeat created nothing
        assert_problem(http.get(f"/v1/blogs/{blog_id}"), 404)
        mine = http.get("/v1/author/blogs", params={"state": "draft"}, headers=author["headers"])
        assert blog_id in [b["id"] for b in mine.json()["items"]]

        submit = http.post(f"/v1/author/blogs/{blog_id}/submit", headers=author["headers"])
        assert submit.status_code == 200, submit.text
        assert submit.json()["state"] == "submitted"
        queue = http.get(
            "/v1/editor/blogs", params={"state": "submitted"}, headers=editor["headers"]
        )
        assert queue.status_code == 200, queue.text
        assert blog_id in [b["id"] for b in queue.json()["items"]]
        # The author is no editor.
        assert_problem(
            http.post(f"/v1/editor/blogs/{blog_id}/publish", headers=author["headers"]), 403
        )
        publish = http.post(f"/v1/editor/blogs/{blog_id}/publish", headers=editor["headers"])
        assert publish.status_code == 200, publish.text
        assert publish.json()["state"] == "published"

        by_id = eventually(
            lambda: http.get(f"/v1/blogs/{blog_id}"), lambda r: r.status_code == 200, INVALIDATION
        )
        assert by_id.status_code == 200, by_id.text
        assert by_id.json()["text"] == "One schema per service."
        assert by_id.json()["author"]["name"] == "Wren"
        assert "draftText" not in by_id.json()
        by_slug = http.get(f"/v1/blogs/by-slug/{slug}")
        assert by_slug.status_code == 200
        assert by_slug.json()["id"] == blog_id
        listed = eventually(
            lambda: http.get("/v1/blogs", params=listing),
            lambda r: bool(r.json()["items"]),
            INVALIDATION,
        )
        assert [b["id"] for b in listed.json()["items"]] == [blog_id]
        assert listed.json()["items"][0]["tags"] == ["ARCHITECTURE", tag.upper()]
        similar = http.get(f"/v1/blogs/{blog_id}/similar")
        assert similar.status_code == 200
        assert blog_id not in [b["id"] for b in similar.json()["items"]]

        # The author renames themselves at auth; the blog service learns it from an event.
        # The gateway drops its entries on `auth.user.updated` too, but may cache the old name
        # again if a read lands before the blog service applied the event: then the entry's
        # TTL (10 s) bounds it.
        renamed = http.patch(
            "/v1/users/me", json={"name": "Wren Renamed"}, headers=author["headers"]
        )
        assert renamed.status_code == 200
        seen = eventually(
            lambda: http.get(f"/v1/blogs/{blog_id}"),
            lambda r: r.json()["author"]["name"] == "Wren Renamed",
            15.0,
        )
        assert seen.json()["author"]["name"] == "Wren Renamed", "the rename never showed"

        unpublish = http.post(f"/v1/editor/blogs/{blog_id}/unpublish", headers=editor["headers"])
        assert unpublish.status_code == 200
        gone = eventually(
            lambda: http.get(f"/v1/blogs/{blog_id}"), lambda r: r.status_code == 404, INVALIDATION
        )
        assert_problem(gone, 404)
        assert_problem(http.get(f"/v1/blogs/by-slug/{slug}"), 404)


def test_bad_inputs_are_refused_by_the_gateway_with_problems(system: System) -> None:
    """What the gateway answers itself, without troubling a service (checked in their logs)."""
    refused_at_gateway: list[str] = []

    def tagged(extra: dict[str, str] | None = None) -> dict[str, str]:
        rid = request_id()
        refused_at_gateway.append(rid)
        return {"x-request-id": rid, **(extra or {})}

    with system.client() as http, system.client(api_key=None) as anonymous:
        learner = signed_up(http, "Lee Arner")
        learner_hdr = bearer(learner["tokens"]["accessToken"])
        author = with_roles(http, system, "Pen", "AUTHOR")
        some_id = uuid.uuid4()

        assert_problem(anonymous.get("/v1/blogs", headers=tagged()), 401, "auth.apikey_missing")
        assert_problem(
            anonymous.get("/v1/blogs", headers=tagged({"x-api-key": "mk_nobody"})),
            403,
            "auth.apikey_invalid",
        )
        # The signing keys need no API key (verifiers fetch them).
        jwks = anonymous.get("/v1/auth/jwks.json")
        assert jwks.status_code == 200
        assert jwks.json()["keys"]

        assert_problem(
            http.post("/v1/author/blogs", json=_draft("x-slug", "t"), headers=tagged()), 401
        )
        for garbled in ("Bearer not-a-token", "Bearer", "Basic dXNlcjpwYXNz"):
            assert_problem(
                http.get("/v1/users/me", headers=tagged({"authorization": garbled})), 401
            )
        forged = author["tokens"]["accessToken"][:-4] + "AAAA"  # signature no longer matches
        assert_problem(http.get("/v1/users/me", headers=tagged(bearer(forged))), 401)
        assert_problem(
            http.post(f"/v1/editor/blogs/{some_id}/publish", headers=tagged(learner_hdr)), 403
        )
        assert_problem(http.get("/v1/users", headers=tagged(author["headers"])), 403)

        assert_problem(http.get("/v1/nothing-here", headers=tagged()), 404, "gateway.no_route")
        assert_problem(http.get("/v1/blogs/a/b/c", headers=tagged()), 404, "gateway.no_route")
        wrong = http.delete("/v1/blogs", headers=tagged())
        assert_problem(wrong, 405, "gateway.method_not_allowed")
        assert "GET" in wrong.headers["allow"]
        too_big = http.post(
            "/v1/auth/signin",
            content=b'{"email": "' + b"a" * 64 * 1024 + b'"}',
            headers=tagged({"content-type": "application/json"}),
        )
        assert_problem(too_big, 413, "gateway.body_too_large")

        # One that does reach a service (an uncached answer), to show it would be seen.
        control = request_id()
        unknown_user = http.get(f"/v1/users/{some_id}", headers={"x-request-id": control})
        assert_problem(unknown_user, 404)

    assert system.reached_services([control, *refused_at_gateway]) == {control}


def test_service_errors_pass_through_the_gateway_unchanged(system: System) -> None:
    blog_instance = system.urls("blog")[0]
    with system.client() as http:
        author = with_roles(http, system, "Val Idation", "AUTHOR")
        invalid = {"title": "no", "tags": []}
        through = http.post("/v1/author/blogs", json=invalid, headers=author["headers"])
        body = assert_problem(through, 422)
        fields = {e["field"] for e in body["errors"]}
        assert {"title", "description", "slug", "imgUrl", "tags"} <= fields
        with httpx.Client(timeout=10, trust_env=False) as direct:
            straight = direct.post(
                f"{blog_instance}/v1/author/blogs", json=invalid, headers=author["headers"]
            )
        assert (through.status_code, through.json()) == (straight.status_code, straight.json())
        assert through.headers["content-type"] == straight.headers["content-type"]

        # A conflict and a wrong state, as the service says them.
        slug = f"e2e-{uuid.uuid4().hex[:8]}"
        first = http.post("/v1/author/blogs", json=_draft(slug, "t"), headers=author["headers"])
        assert first.status_code == 201, first.text
        taken = http.post("/v1/author/blogs", json=_draft(slug, "t"), headers=author["headers"])
        assert_problem(taken, 409, "blog.slug_taken")
        withdraw = http.post(
            f"/v1/author/blogs/{first.json()['id']}/withdraw", headers=author["headers"]
        )
        assert_problem(withdraw, 409, "blog.bad_state")


def test_readers_like_bookmark_and_read_through_the_gateway(system: System) -> None:
    """A like shows on the blog's cached public view at once (the gateway drops it on the
    `blog.blog.liked` event), repeats change nothing, and a blog not public is not found."""
    with system.client() as http, system.client(api_key=None) as anonymous:
        author = with_roles(http, system, "Lia Kes", "AUTHOR")
        editor = with_roles(http, system, "Ed Likes", "EDITOR")
        readers = [bearer(signed_up(http, f"Reader {n}")["tokens"]["accessToken"]) for n in (1, 2)]
        tag = f"t{uuid.uuid4().hex[:8]}"
        created = http.post(
            "/v1/author/blogs",
            json=_draft(f"e2e-{uuid.uuid4().hex[:8]}", tag),
            headers=author["headers"],
        )
        blog_id = created.json()["id"]
        # Not public yet: not found for a signal.
        assert_problem(
            http.put(f"/v1/blogs/{blog_id}/like", headers=readers[0]), 404, "blog.not_found"
        )
        http.post(f"/v1/author/blogs/{blog_id}/submit", headers=author["headers"])
        assert (
            http.post(f"/v1/editor/blogs/{blog_id}/publish", headers=editor["headers"]).status_code
            == 200
        )
        view = f"/v1/blogs/{blog_id}"
        first = eventually(lambda: http.get(view), lambda r: r.status_code == 200, INVALIDATION)
        assert first.json()["likes"] == 0
        assert http.get(view).json()["likes"] == 0  # now cached at the gateway

        for reader in (*readers, readers[0]):  # the first reader twice: one like
            assert http.put(f"{view}/like", headers=reader).status_code == 200
        liked = eventually(lambda: http.get(view), lambda r: r.json()["likes"] == 2, INVALIDATION)
        assert liked.json()["likes"] == 2, "the cached view kept the old count"
        assert http.delete(f"{view}/like", headers=readers[1]).json() == {
            "liked": False,
            "likes": 1,
        }
        unliked = eventually(lambda: http.get(view), lambda r: r.json()["likes"] == 1, INVALIDATION)
        assert unliked.json()["likes"] == 1

        assert http.put(f"{view}/bookmark", headers=readers[0]).status_code == 204
        assert http.post(f"{view}/reads", headers=readers[0]).status_code == 204
        assert http.post(f"{view}/reads", headers=readers[0]).status_code == 204
        # A signal needs a reader's token, and an API key like every route.
        assert_problem(http.put(f"{view}/like"), 401, "auth.token_missing")
        assert_problem(
            anonymous.put(f"{view}/like", headers=readers[0]), 401, "auth.apikey_missing"
        )
