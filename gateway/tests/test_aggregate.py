"""Aggregation through a real gateway process in front of real backend processes: parallel and
sequential calls, KrakenD-like shaping (group, target, allow, deny, mapping), the partial marker
when a backend is down, slow or answers badly, required calls, the all-failed answers, and the
configuration checks. A single-backend route keeps passing statuses and bodies through."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from backend_app import problem_body
from gateway_support import (
    BackendFactory,
    Gateway,
    GatewayFactory,
    eventually,
    free_port,
    gateway_config,
)

from mosaic_gateway.config import ConfigError, parse_config

pytestmark = pytest.mark.timeout(90)

SLOW_TIMEOUT = 1.0  # the slow routes' aggregate timeout; their slow backend sleeps far longer


def call(backend: str, path: str, **options: Any) -> dict[str, Any]:
    return {"backend": backend, "path": path, **options}


def aggregate_route(path: str, *calls: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {
        "path": path,
        "methods": ["GET"],
        # What the calls may forward: the route's allow-lists apply to them as to a proxy.
        "headers": {"allow": ["x-custom"]},
        "query": {"allow": ["limit"]},
        "aggregate": {**options, "backends": list(calls)},
    }


@pytest.fixture(scope="module")
async def gateway(
    shared_backends: BackendFactory, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    blog = shared_backends("blog")
    users = shared_backends("users")
    nothing = free_port()  # no process listens there: connections are refused
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway"))
    config = gateway_config(
        {
            "blog": {"instances": [blog.url]},
            "users": {"instances": [users.url]},
            "down": {
                "instances": [f"http://127.0.0.1:{nothing}"],
                "breaker": {"failure_threshold": 100},
            },
        },
        [
            aggregate_route(
                "/v1/blogs/{id}/page",
                call(
                    "blog",
                    "/__json/blog/{id}",
                    group="blog",
                    target="data",
                    allow=["id", "title", "author.name"],
                    mapping={"title": "headline"},
                ),
                call("blog", "/__json/similar/{id}", group="similar", deny=["draftText"]),
                call("users", "/__json/user/{id}", deny=["email"], mapping={"name": "owner"}),
                call("users", "/echo/{id}?fixed=1", group="seen"),
                call("blog", "/echo/plain", group="no_query", forward_query=False),
            ),
            aggregate_route(
                "/v1/partial/{id}",
                call("blog", "/__json/blog/{id}", group="blog", target="data", allow=["id"]),
                call("down", "/__json/user/{id}", group="user"),
                call("users", "/__json/text", group="text"),
                call("users", "/__json/status/500", group="failing"),
                call("users", "/__json/blog/{id}", group="targeted", target="nope"),
            ),
            aggregate_route(
                "/v1/slow/{id}",
                call("blog", "/__json/blog/{id}", target="data", allow=["title"]),
                call("users", "/__json/slow/30", group="slow"),
                timeout=f"{SLOW_TIMEOUT}s",
            ),
            aggregate_route(
                "/v1/all-down",
                call("down", "/a", group="a"),
                call("down", "/b", group="b"),
            ),
            aggregate_route(
                "/v1/all-slow",
                call("blog", "/__json/slow/30", group="a"),
                call("users", "/__json/slow/30", group="b"),
                timeout=f"{SLOW_TIMEOUT}s",
            ),
            aggregate_route(
                "/v1/long-slow",
                call("blog", "/__json/slow/60", group="a"),
                timeout="60s",
            ),
            aggregate_route(
                "/v1/chain/{id}",
                call("blog", "/__json/blog/{id}", group="blog", target="data", allow=["title"]),
                call("users", "/__json/user/{resp0.author.id}", group="author"),
                call("users", "/echo/{resp1.name}/{resp0.id}", group="seen", allow=["path"]),
                sequential=True,
            ),
            aggregate_route(
                "/v1/chain-missing/{id}",
                call("blog", "/__json/blog/{id}", group="blog", target="data", allow=["title"]),
                call("users", "/__json/user/{resp0.editor.id}", group="editor"),
                call("users", "/__json/user/{resp1.id}", group="editor_again"),
                call("users", "/__json/similar/{resp0.id}", group="similar", allow=["id"]),
                sequential=True,
            ),
            aggregate_route(
                "/v1/required/{status}",
                call("blog", "/__json/status/{status}", group="main", required=True),
                call("users", "/__json/slow/30", group="slow"),
            ),
            aggregate_route(
                "/v1/required-down",
                call("blog", "/__json/blog/1", group="blog"),
                call("down", "/x", group="down", required=True),
            ),
            aggregate_route(
                "/v1/collection/{id}",
                call("blog", "/__json/similar/{id}", allow=["title"]),
                call("users", "/__json/user/{id}", allow=["name"]),
            ),
            aggregate_route(
                "/v1/too-big",
                call("blog", "/__json/big/5000", group="big"),
                call("users", "/__json/user/1", group="user"),
                max_response_bytes="1KiB",
            ),
            {
                "path": "/v1/plain/*",
                "methods": ["GET"],
                "backend": "blog",
                "rewrite": {"strip_prefix": "/v1/plain"},
            },
        ],
    )
    gw = factory(config)
    yield gw
    await factory.close()


async def test_parallel_calls_are_shaped_and_merged(gateway: Gateway) -> None:
    client = gateway.client()
    response = await client.get(
        "/v1/blogs/42/page?limit=3",
        headers={"x-request-id": "agg-req-1", "x-custom": "kept", "accept-encoding": "gzip"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-mosaic-completed"] == "true"
    assert "x-mosaic-missing" not in response.headers
    assert response.headers["x-request-id"] == "agg-req-1"
    document = response.json()
    seen = document.pop("seen")
    no_query = document.pop("no_query")
    assert document == {
        # target `data`, allow id/title/author.name, then title renamed
        "blog": {"id": "42", "headline": "Blog 42", "author": {"name": "Ann"}},
        # a list stays a list under its group; deny applies to each item
        "similar": [
            {"id": "42-1", "title": "Like 42 #1"},
            {"id": "42-2", "title": "Like 42 #2"},
        ],
        # no group: merged at the top level, email denied, name renamed
        "id": "42",
        "owner": "User 42",
    }
    # The route parameter went into the path; the request's query after the call's own.
    assert seen["path"] == "/echo/42"
    assert seen["query"] == "fixed=1&limit=3"
    headers = dict(seen["headers"])
    assert headers["x-request-id"] == "agg-req-1"
    assert headers["x-custom"] == "kept"
    assert headers["accept"] == "application/json"
    assert "accept-encoding" not in headers  # the gateway must be able to read the answer
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert no_query["path"] == "/echo/plain"
    assert no_query["query"] == ""


async def test_a_header_the_client_named_in_connection_reaches_no_call(gateway: Gateway) -> None:
    response = await gateway.client().get(
        "/v1/blogs/42/page", headers={"x-custom": "hop", "connection": "x-custom"}
    )
    assert response.status_code == 200
    headers = dict(response.json()["seen"]["headers"])
    assert "x-custom" not in headers  # allow-listed, but made hop-by-hop by the client
    assert headers["x-request-id"] == response.headers["x-request-id"]


async def test_failed_parts_are_left_out_and_marked(gateway: Gateway) -> None:
    client = gateway.client()
    response = await client.get("/v1/partial/7")
    assert response.status_code == 200
    assert response.headers["x-mosaic-completed"] == "false"
    # down (refused), not JSON, a 500, a target the answer lacks
    assert response.headers["x-mosaic-missing"] == "user,text,failing,targeted"
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {"blog": {"id": "7"}}


async def test_a_slow_backend_is_cut_at_the_aggregate_timeout(gateway: Gateway) -> None:
    client = gateway.client()
    started = time.monotonic()
    response = await client.get("/v1/slow/3")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.headers["x-mosaic-completed"] == "false"
    assert response.headers["x-mosaic-missing"] == "slow"
    assert response.json() == {"title": "Blog 3"}
    # Bounded by the aggregate timeout, not by the backend's 30 s.
    assert elapsed < SLOW_TIMEOUT + 5


async def test_every_backend_down_is_a_502_problem(gateway: Gateway) -> None:
    client = gateway.client()
    response = await client.get("/v1/all-down")
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-mosaic-completed"] == "false"
    problem = response.json()
    assert problem["code"] == "gateway.bad_gateway"
    assert problem["status"] == 502
    # The calls went through the balancer: the refused instance's failures are counted.
    for _ in range(3):
        await client.get("/v1/all-down")
    down = gateway.admin("/admin/backends")["backends"]["down"]["instances"][0]
    assert down["consecutive_failures"] >= 3
    assert down["ejected"] is True
    assert down["outstanding"] == 0


async def test_every_backend_timing_out_is_a_504_problem(gateway: Gateway) -> None:
    client = gateway.client()
    started = time.monotonic()
    response = await client.get("/v1/all-slow")
    assert time.monotonic() - started < SLOW_TIMEOUT + 5
    assert response.status_code == 504
    assert response.json()["code"] == "gateway.timeout"
    # The abandoned calls were handed back to the balancer, not left outstanding.
    backends = gateway.admin("/admin/backends")["backends"]
    for name in ("blog", "users"):
        assert backends[name]["instances"][0]["outstanding"] == 0


async def test_a_client_leaving_cancels_its_calls(gateway: Gateway) -> None:
    def blog_outstanding() -> int:
        backends = gateway.admin("/admin/backends")["backends"]
        return int(backends["blog"]["instances"][0]["outstanding"])

    client = gateway.client(timeout=0.5)
    with pytest.raises(httpx.TimeoutException):
        await client.get("/v1/long-slow")
    await client.aclose()
    # The call is handed back at once, not when its 60 s timeout would have ended it.
    await eventually(lambda: blog_outstanding() == 0, timeout=15)


async def test_sequential_calls_use_fields_of_earlier_answers(
    gateway: Gateway, shared_backends: BackendFactory
) -> None:
    client = gateway.client()
    response = await client.get("/v1/chain/9")
    assert response.status_code == 200
    assert response.headers["x-mosaic-completed"] == "true"
    assert response.json() == {
        # author.id fed the next call although `allow` hides it from the client
        "blog": {"title": "Blog 9"},
        "author": {"id": "u9", "name": "User u9", "email": "u9@example.test"},
        # a field with a space is percent-encoded into one path segment
        "seen": {"path": "/echo/User u9/9"},
    }


async def test_a_missing_chained_field_leaves_that_call_out(gateway: Gateway) -> None:
    client = gateway.client()
    response = await client.get("/v1/chain-missing/5")
    assert response.status_code == 200
    assert response.headers["x-mosaic-completed"] == "false"
    # editor: the first answer has no editor.id; editor_again: depends on the missing one.
    assert response.headers["x-mosaic-missing"] == "editor,editor_again"
    assert response.json() == {
        "blog": {"title": "Blog 5"},
        "similar": [{"id": "5-1"}, {"id": "5-2"}],
    }


async def test_a_failing_required_call_fails_the_response_with_its_answer(
    gateway: Gateway,
) -> None:
    client = gateway.client()
    started = time.monotonic()
    response = await client.get("/v1/required/404")
    # Answered as soon as the required call failed, not after the slow one (30 s).
    assert time.monotonic() - started < 20
    assert response.status_code == 404
    assert response.content == problem_body(404)
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-mosaic-completed"] == "false"
    assert response.headers["x-mosaic-missing"] == "main"

    response = await client.get("/v1/required-down")
    assert response.status_code == 503
    assert response.json()["code"] == "gateway.unavailable"


async def test_lists_without_a_group_go_under_collection(gateway: Gateway) -> None:
    client = gateway.client()
    response = await client.get("/v1/collection/2")
    assert response.json() == {
        "collection": [{"title": "Like 2 #1"}, {"title": "Like 2 #2"}],
        "name": "User 2",
    }


async def test_an_answer_over_the_size_cap_is_left_out(gateway: Gateway) -> None:
    client = gateway.client()
    response = await client.get("/v1/too-big")
    assert response.status_code == 200
    assert response.headers["x-mosaic-missing"] == "big"
    assert response.json() == {"user": {"id": "1", "name": "User 1", "email": "1@example.test"}}


async def test_head_and_other_methods(gateway: Gateway) -> None:
    client = gateway.client()
    response = await client.head("/v1/chain/1")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["x-mosaic-completed"] == "true"
    response = await client.post("/v1/chain/1")
    assert response.status_code == 405


async def test_single_backend_routes_pass_status_and_body_through(gateway: Gateway) -> None:
    client = gateway.client()
    for status in (404, 422, 500):
        response = await client.get(f"/v1/plain/__json/status/{status}")
        assert response.status_code == status
        assert response.content == problem_body(status)
        assert response.headers["content-type"] == "application/problem+json"
        assert "x-mosaic-completed" not in response.headers


async def test_admin_lists_aggregate_routes(gateway: Gateway) -> None:
    routes = {route["path"]: route for route in gateway.admin("/admin/routes")["routes"]}
    chain = routes["/v1/chain/{id}"]
    assert chain["backend"] is None
    assert chain["aggregate"]["sequential"] is True
    assert [c["backend"] for c in chain["aggregate"]["backends"]] == ["blog", "users", "users"]


# --- configuration --------------------------------------------------------------------------

CONFIG = """\
backends:
  blog:
    instances: [http://127.0.0.1:8011]
routes:
  - path: /v1/blogs/{id}/page
    methods: [GET]
    aggregate:
      sequential: false
      backends:
        - backend: blog
          path: /v1/blogs/{id}
          group: blog
        - backend: blog
          path: /v1/blogs/{id}/similar
          group: similar
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    return [str(issue) for issue in caught.value.issues]


def test_the_documented_example_is_valid() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()
    example = doc.split("## Aggregation", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(example, "docs/gateway.md")
    aggregate = config.routes[0].aggregate
    assert aggregate is not None
    assert aggregate.sequential
    assert [call.backend for call in aggregate.backends] == ["blog", "auth", "blog"]


def test_a_good_aggregate_loads() -> None:
    config = parse_config(CONFIG, "gw.yaml")
    aggregate = config.routes[0].aggregate
    assert aggregate is not None
    assert config.routes[0].backend is None
    assert [c.group for c in aggregate.backends] == ["blog", "similar"]


def test_an_unknown_backend_is_reported_at_its_line() -> None:
    text = CONFIG.replace(
        "        - backend: blog\n          path: /v1/blogs/{id}/similar",
        "        - backend: blgo\n          path: /v1/blogs/{id}/similar",
    )
    assert errors_of(text) == [
        "gw.yaml:13:11: routes[0].aggregate.backends[1].backend: unknown backend 'blgo' "
        "(known: blog)"
    ]


def test_backend_and_aggregate_together_are_refused() -> None:
    text = CONFIG.replace("    methods: [GET]\n", "    methods: [GET]\n    backend: blog\n")
    assert errors_of(text) == [
        "gw.yaml:8:5: routes[0].aggregate: give `backend` or `aggregate`, not both"
    ]


def test_answers_are_usable_only_in_sequence_and_only_earlier_ones() -> None:
    chained = CONFIG.replace("/v1/blogs/{id}/similar", "/v1/users/{resp0.author.id}")
    assert errors_of(chained) == [
        "gw.yaml:14:11: routes[0].aggregate.backends[1].path: {resp0.author.id}: answers can "
        "be used only with `sequential: true`"
    ]
    later = chained.replace("sequential: false", "sequential: true").replace(
        "{resp0.author.id}", "{resp1.author.id}"
    )
    assert errors_of(later) == [
        "gw.yaml:14:11: routes[0].aggregate.backends[1].path: {resp1.author.id}: call 1 can "
        "use only earlier answers (resp0..resp0)"
    ]
    first = later.replace("path: /v1/blogs/{id}\n", "path: /v1/blogs/{resp0.id}\n")
    assert (
        "gw.yaml:11:11: routes[0].aggregate.backends[0].path: {resp0.id}: the first call has "
        "no earlier answer to use"
    ) in errors_of(first)
    assert (
        not parse_config(chained.replace("sequential: false", "sequential: true")).routes[0].backend
    )


def test_other_aggregate_mistakes() -> None:
    unknown_param = CONFIG.replace("/v1/blogs/{id}/similar", "/v1/blogs/{slug}")
    assert errors_of(unknown_param) == [
        "gw.yaml:14:11: routes[0].aggregate.backends[1].path: {slug}: "
        "'/v1/blogs/{id}/page' has no such parameter"
    ]
    both = CONFIG.replace(
        "group: similar", "group: similar\n          allow: [a]\n          deny: [b]"
    )
    assert errors_of(both) == [
        "gw.yaml:13:11: routes[0].aggregate.backends[1]: give `allow` or `deny`, not both"
    ]
    twice = CONFIG.replace("group: similar", "group: blog")
    assert errors_of(twice) == [
        "gw.yaml:15:11: routes[0].aggregate.backends[1].group: group 'blog' is used twice"
    ]
    post = CONFIG.replace("methods: [GET]", "methods: [GET, POST]")
    assert errors_of(post) == [
        "gw.yaml:6:5: routes[0].methods: an aggregate route serves GET (and HEAD) only"
    ]
    bad = CONFIG.replace("/v1/blogs/{id}/similar", "/v1/blogs/{id/similar")
    assert errors_of(bad)[0].startswith(
        "gw.yaml:14:11: routes[0].aggregate.backends[1].path: unbalanced"
    )
    neither = CONFIG.replace(CONFIG[CONFIG.index("    aggregate:") :], "")
    assert errors_of(neither) == ["gw.yaml:5:5: routes[0].backend: Field required"]
