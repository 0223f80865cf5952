"""Recommendations through the gateway, fed by the real event path: readers' likes at the blog
service, its outbox, JetStream, the reco service's consumers."""

from __future__ import annotations

import uuid
from typing import Any

from e2e_support import System, assert_problem, bearer, eventually, signed_up, with_roles

# Events travel blog outbox -> JetStream -> reco's consumer: a few hundred milliseconds.
PROPAGATION = 10.0


def _publish(
    http: Any, author: dict[str, Any], editor: dict[str, Any], title: str, tag: str
) -> str:
    draft = {
        "title": title,
        "description": "A blog for the recommendation flow",
        "draftText": "Words.",
        "slug": f"reco-{uuid.uuid4().hex[:10]}",
        "imgUrl": "https://img.example.com/reco.png",
        "tags": [tag],
    }
    created = http.post("/v1/author/blogs", json=draft, headers=author["headers"])
    assert created.status_code == 201, created.text
    blog_id: str = created.json()["id"]
    http.post(f"/v1/author/blogs/{blog_id}/submit", headers=author["headers"])
    published = http.post(f"/v1/editor/blogs/{blog_id}/publish", headers=editor["headers"])
    assert published.status_code == 200, published.text
    return blog_id


def test_a_reader_is_recommended_what_a_like_minded_reader_liked(system: System) -> None:
    """Two readers like the same blogs, one likes a third: the other is recommended the third,
    with `reason: co_engagement`."""
    with system.client() as http, system.client(api_key=None) as anonymous:
        author = with_roles(http, system, "Rhea Writer", "AUTHOR")
        editor = with_roles(http, system, "Ed Reco", "EDITOR")
        tag = f"r{uuid.uuid4().hex[:8]}"
        first, second, third = (
            _publish(http, author, editor, f"Part {n} of the series", tag) for n in (1, 2, 3)
        )
        ann, bob = (
            bearer(signed_up(http, name)["tokens"]["accessToken"]) for name in ("Ann", "Bob")
        )
        for blog_id in (first, second):
            for reader in (ann, bob):
                assert http.put(f"/v1/blogs/{blog_id}/like", headers=reader).status_code == 200
        assert http.put(f"/v1/blogs/{third}/like", headers=ann).status_code == 200

        def picks() -> Any:
            return http.get("/v1/recommendations/me", headers=bob)

        answer = eventually(
            picks,
            # The third is a tag match as soon as it is published; co-engagement once Ann's like
            # of it reached the service too, and its author's name once auth's event did.
            lambda r: (
                r.status_code == 200
                and [
                    (i["blog"]["id"], i["reason"], i["blog"]["author"]["name"])
                    for i in r.json()["items"]
                ][:1]
                == [(third, "co_engagement", "Rhea Writer")]
            ),
            PROPAGATION,
        )
        assert answer.status_code == 200, answer.text
        top = answer.json()["items"][0]
        assert (top["blog"]["id"], top["reason"]) == (third, "co_engagement")
        assert top["blog"]["author"]["name"] == "Rhea Writer"  # from auth's events
        liked = {first, second}
        assert not liked & {i["blog"]["id"] for i in answer.json()["items"]}

        # Each blog replica relays its own outbox, so Bob's like of the second blog may reach reco
        # after Ann's like of the third (which the wait above saw): wait for it too.
        also = eventually(
            lambda: http.get(f"/v1/recommendations/blogs/{first}"),
            lambda r: (
                r.status_code == 200
                and [i["blog"]["id"] for i in r.json()["items"]][:1] == [second]
            ),
            PROPAGATION,
        )
        assert also.status_code == 200, also.text
        assert [i["blog"]["id"] for i in also.json()["items"]][:1] == [second]
        trending = http.get("/v1/recommendations/trending", params={"tag": tag})
        assert [i["blog"]["id"] for i in trending.json()["items"]][:1] in ([first], [second])

        # The gateway's policies: /me needs a token, every route an API key.
        assert_problem(http.get("/v1/recommendations/me"), 401, "auth.token_missing")
        assert_problem(anonymous.get("/v1/recommendations/trending"), 401, "auth.apikey_missing")
        forged = {"x-api-key": "mk_nobody"}
        assert_problem(
            anonymous.get(f"/v1/recommendations/blogs/{first}", headers=forged),
            403,
            "auth.apikey_invalid",
        )
        assert_problem(
            http.get(f"/v1/recommendations/blogs/{uuid.uuid4()}"), 404, "reco.blog_not_found"
        )
        assert_problem(http.get("/v1/recommendations/trending", params={"window": "1y"}), 422)

        # Its routes are in the gateway's merged documentation.
        paths = anonymous.get("/docs/openapi.json").json()["paths"]
        assert {
            "/v1/recommendations/me",
            "/v1/recommendations/blogs/{blog_id}",
            "/v1/recommendations/trending",
        } <= set(paths)
        assert "gatewayBearer" in str(paths["/v1/recommendations/me"]["get"]["security"])
