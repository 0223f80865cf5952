"""The gateway configuration `mosaic up` writes, generated from the services' own OpenAPI.

Checked three ways: against the route tables of docs/api.md (every documented route is routed,
with the documented audience: public with an API key, a token, or a role), against the services'
OpenAPI documents (what each route accepts -- query parameters, Idempotency-Key, a bearer token --
is exactly what its allow-lists let through, since the gateway denies the rest), and route by route
against the policies of the hand-kept table it replaced (`gateway_routes_before.json`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from fastapi import APIRouter, Depends, Query

from mosaic_devstack.gateway_config import (
    GatewayConfigError,
    GatewaySettings,
    gateway_config,
    render,
)
from mosaic_devstack.services import load_registry
from mosaic_gateway.config import parse_config
from mosaic_kit.fastapi.app import create_app
from mosaic_kit.fastapi.auth import require_roles
from mosaic_kit.fastapi.gateway import through_gateway
from mosaic_kit.settings import ServiceSettings
from mosaic_kit.tokens import Principal

API_DOC = Path(__file__).parents[2] / "docs" / "api.md"
_ROW = re.compile(
    r"^\| (GET|POST|PUT|PATCH|DELETE) \| `(/v1/[^`]+|/\.well-known/[^`]+)` \| ([^|]+) \|", re.M
)
# The public API: the versioned routes, and the documents RFCs place under /.well-known.
PUBLIC_PREFIXES = ("/v1/", "/.well-known/")
SETTINGS = GatewaySettings(
    listen="127.0.0.1", port=8080, admin_port=9901, workers=2, nats_url="nats://127.0.0.1:4222"
)


def _template(path: str) -> str:
    """`/v1/users/{user_id}` and `/v1/users/{id}` are the same route."""
    return re.sub(r"\{[^}]+\}", "{}", path)


@pytest.fixture(scope="module")
def documents() -> dict[str, dict[str, Any]]:
    """Every registered service's OpenAPI document, as `mosaic up` reads them from the
    instances."""
    documents = {}
    for service in load_registry():
        definition = service.load_definition()
        documents[service.name] = definition.app(definition.settings.load()).openapi()
    return documents


@pytest.fixture(scope="module")
def config(documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return gateway_config(SETTINGS, documents)


@pytest.fixture(scope="module")
def routes(config: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(method, path template) -> route."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for route in config["routes"]:
        for method in route["methods"]:
            key = (method, _template(route["path"]))
            assert key not in table, f"{key} routed twice"
            table[key] = route
    return table


@pytest.fixture(scope="module")
def openapi_operations(
    documents: dict[str, dict[str, Any]],
) -> dict[tuple[str, str], dict[str, Any]]:
    ops: dict[tuple[str, str], dict[str, Any]] = {}
    for document in documents.values():
        for path, methods in document["paths"].items():
            if path.startswith(PUBLIC_PREFIXES):
                for method, op in methods.items():
                    ops[(method.upper(), _template(path))] = op
    return ops


def test_the_written_file_is_what_the_gateway_accepts(config: dict[str, Any]) -> None:
    text = render(config, "gateway.yaml")
    parsed = parse_config(text, "gateway.yaml")
    assert yaml.safe_load(text)["routes"] == config["routes"]
    assert (parsed.server.port, parsed.server.workers) == (8080, 2)
    assert parsed.server.admin is not None
    assert (parsed.server.admin.listen, parsed.server.admin.port) == ("127.0.0.1", 9901)
    assert parsed.nats is not None
    assert parsed.nats.url == "nats://127.0.0.1:4222"
    names = [service.name for service in load_registry()]
    assert set(parsed.backends) == set(names)
    for name in names:
        backend = parsed.backends[name]
        # Instances come from the services' own announcements, not from a list.
        assert backend.instances is None
        assert backend.discovery is not None
        assert backend.discovery.nats is not None
        assert backend.discovery.nats.service == name
        assert backend.health_check is not None
    # Operable from the first run: access log, metrics, every API documented at /docs.
    assert parsed.observability.access_log.enabled
    assert parsed.observability.metrics.enabled
    assert not parsed.observability.tracing.enabled  # nowhere to send spans
    assert parsed.docs is not None
    assert parsed.docs.path == "/docs"
    assert parsed.docs.sources == dict.fromkeys(names, "/openapi.json")
    traced = gateway_config(
        GatewaySettings(**{**SETTINGS.__dict__, "otlp_endpoint": "http://otel:4318"}), {}
    )
    assert traced["observability"]["tracing"] == {
        "enabled": True,
        "otlp_endpoint": "http://otel:4318",
    }


def test_a_configuration_the_gateway_refuses_is_never_written(config: dict[str, Any]) -> None:
    broken = {**config, "routes": [*config["routes"], {"path": "/v1/x", "methods": ["GET"]}]}
    with pytest.raises(GatewayConfigError, match=r"routes\[\d+\]\.backend"):
        render(broken, "gateway.yaml")


def test_every_documented_route_is_routed_to_its_audience(
    config: dict[str, Any], routes: dict[tuple[str, str], dict[str, Any]]
) -> None:
    documented = _ROW.findall(API_DOC.read_text())
    assert len(documented) > 25  # the tables were found
    assert set(routes) == {(method, _template(path)) for method, path, _ in documented}
    defaults = config["defaults"]["auth"]
    assert defaults == {"api_key": "required", "jwt": "off"}
    for method, path, audience in documented:
        route = routes[(method, _template(path))]
        auth = {**defaults, **route.get("auth", {})}
        # Which public reads are open to client applications too: the scopes test below.
        auth.pop("scopes", None)
        who = audience.strip()
        where = f"{method} {path}"
        if path in ("/v1/auth/jwks.json", "/.well-known/oauth-authorization-server"):
            assert auth == {"api_key": "off", "jwt": "off"}, where  # verifiers need no key
        elif who == "client credentials":
            # OAuth endpoints: the application authenticates with its client credentials.
            assert auth == {"api_key": "off", "jwt": "off"}, where
        elif who == "public":
            assert auth == {"api_key": "required", "jwt": "off"}, where
        elif who == "Bearer":
            assert auth == {"api_key": "required", "jwt": "required"}, where
        else:
            assert auth == {"api_key": "required", "jwt": "required", "roles": [who]}, where


def test_allow_lists_match_what_each_route_accepts(
    routes: dict[tuple[str, str], dict[str, Any]],
    openapi_operations: dict[tuple[str, str], dict[str, Any]],
) -> None:
    assert set(routes) == set(openapi_operations)
    for key, op in openapi_operations.items():
        route = routes[key]
        params = op.get("parameters", [])
        query = {p["name"] for p in params if p["in"] == "query"}
        headers = {p["name"].lower() for p in params if p["in"] == "header"}
        bearer = any("HTTPBearer" in requirement for requirement in op.get("security", []))
        # client_secret_basic (the OAuth endpoints): the credentials ride in Authorization too.
        basic = any("ClientBasic" in requirement for requirement in op.get("security", []))
        allowed = set(route["headers"]["allow"])
        assert set(route["query"]["allow"]) == query, key
        assert headers <= allowed, key
        assert ("idempotency-key" in allowed) == ("idempotency-key" in headers), key
        assert ("authorization" in allowed) == (bearer or basic), key
        assert {"accept", "content-type", "x-api-key"} <= allowed, key
        # Nothing that names a user ever comes from the client.
        assert not allowed & {"x-user-id", "x-user-roles", "*"}, key


def test_limits_caching_and_rate_limits_per_route(
    config: dict[str, Any], routes: dict[tuple[str, str], dict[str, Any]]
) -> None:
    parsed = parse_config(render(config, "g.yaml"), "g.yaml")
    by_path = {(r.methods[0], r.path): r for r in parsed.routes}
    create = by_path[("POST", "/v1/author/blogs")]
    assert create.max_body_bytes is not None
    # A maximal draft (50,000 characters, up to 6 bytes each once JSON-escaped) gets through.
    assert create.max_body_bytes >= 50_000 * 6
    signin = by_path[("POST", "/v1/auth/signin")]
    assert signin.max_body_bytes is not None
    assert 1024 <= signin.max_body_bytes <= 64 * 1024
    for path in ("/v1/auth/signup", "/v1/auth/signin"):
        rule = by_path[("POST", path)].rate_limit
        assert rule is not None
        assert rule.by == "address"
    # Sign-up answers 409 for a taken e-mail (API.md): one budget per client address for the
    # whole cluster, not per worker, keeps it from being an account oracle.
    signup = by_path[("POST", "/v1/auth/signup")].rate_limit
    assert signup is not None
    assert signup.shared
    assert signup.requests / signup.per <= 0.1  # at most one every 10 s, sustained
    assert parsed.rate_limits.store == "nats"  # the stack's own NATS, JetStream on
    cached = {key for key, route in routes.items() if "cache" in route}
    assert cached == {
        ("GET", "/v1/blogs"),
        ("GET", "/v1/blogs/{}"),
        ("GET", "/v1/blogs/by-slug/{}"),
        ("GET", "/v1/blogs/{}/similar"),
    }
    views = {"/v1/blogs/{}", "/v1/blogs/by-slug/{}"}
    for route in parsed.routes:
        # 0 would mean "no limit" to the gateway.
        assert route.max_body_bytes, route.path
        if route.cache is not None:
            dropped_by = set(route.cache.invalidate_on)
            # Every change of what the public sees drops the cached reads ...
            assert dropped_by >= BLOG_CHANGES, route.path
            # ... a like those of single blogs (the only ones showing counts), and a reader's
            # other signals none: not `blog.blog.*`, which would take reads and bookmarks too.
            assert (dropped_by >= LIKES) == (_template(route.path) in views), route.path
            assert not dropped_by & {"blog.blog.*", "blog.>", "blog.blog.read"}, route.path
            assert route.auth is None or route.auth.jwt != "required"


OPEN_TO_CLIENTS = {
    ("GET", "/v1/blogs"): {"any_of": ["blogs:read"]},
    ("GET", "/v1/blogs/{}"): {"any_of": ["blogs:read"]},
    ("GET", "/v1/blogs/by-slug/{}"): {"any_of": ["blogs:read"]},
    ("GET", "/v1/blogs/{}/similar"): {"any_of": ["blogs:read"]},
    ("GET", "/v1/recommendations/trending"): {"any_of": ["recommendations:read"]},
    ("GET", "/v1/recommendations/blogs/{}"): {"any_of": ["recommendations:read"]},
}
"""The routes open to third-party applications (issue 12): public reads only; nothing acting for
a user (`/v1/recommendations/me`, likes, an author's drafts) and nothing that writes."""


def test_scopes_come_from_the_services_openapi_and_open_only_public_reads(
    config: dict[str, Any],
    routes: dict[tuple[str, str], dict[str, Any]],
    openapi_operations: dict[tuple[str, str], dict[str, Any]],
) -> None:
    declared = {
        key: operation["x-mosaic-gateway"]["scopes"]
        for key, operation in openapi_operations.items()
        if "scopes" in operation.get("x-mosaic-gateway", {})
    }
    assert declared == OPEN_TO_CLIENTS
    generated = {
        key: route["auth"]["scopes"]
        for key, route in routes.items()
        if "scopes" in route.get("auth", {})
    }
    assert generated == OPEN_TO_CLIENTS
    for key in OPEN_TO_CLIENTS:
        assert "jwt" not in routes[key].get("auth", {}), key
        assert "roles" not in routes[key].get("auth", {}), key
    # The gateway reads them as scope rules.
    parsed = parse_config(render(config, "g.yaml"), "g.yaml")
    rules = {
        (route.methods[0], _template(route.path)): route.auth.scopes.rule
        for route in parsed.routes
        if route.auth is not None and route.auth.scopes is not None
    }
    assert rules[("GET", "/v1/recommendations/trending")] == ("any_of", ("recommendations:read",))
    assert set(rules) == set(OPEN_TO_CLIENTS)


def test_a_failing_or_hung_replica_counts_against_it_and_idempotent_requests_go_elsewhere(
    config: dict[str, Any],
) -> None:
    """A replica that lost its database or NATS answers 503 (with Retry-After), a hung one
    nothing: both count against the replica, and an idempotent request is tried elsewhere, the
    hung case well before the request timeout (gateway/tests/test_retry_faults.py runs it)."""
    parsed = parse_config(render(config, "gateway.yaml"), "gateway.yaml")
    request_timeout = parsed.server.timeouts.request
    names = [service.name for service in load_registry()]
    assert set(parsed.backends) == set(names)
    for name in names:
        backend = parsed.backends[name]
        assert 503 in backend.ejection.statuses
        assert {"connect_error", 503} <= set(backend.retries.on)
        assert backend.retries.attempts >= 1
        per_try = backend.retries.per_try_timeout
        assert per_try is not None
        assert per_try <= request_timeout / 3
    assert all(route.timeout is None for route in parsed.routes)


BEFORE = json.loads((Path(__file__).with_name("gateway_routes_before.json")).read_text())
"""Every route's policy in the hand-kept `ROUTES` table this generation replaced (at 9c1a042)."""

# What generation changed on purpose: each is stricter than the table was, and each follows from
# what the route itself declares (so the table was wrong, not the route).
INTENDED: dict[str, dict[str, Any]] = {
    # Bodyless reads shared a row with the PATCH (and DELETE) of their path, and its body limit.
    "GET /v1/users/me": {"max_body_bytes": ("16KiB", "1KiB")},
    "GET /v1/author/blogs/{}": {"max_body_bytes": ("512KiB", "1KiB")},
    "DELETE /v1/author/blogs/{}": {"max_body_bytes": ("512KiB", "1KiB")},
    # Refreshing reads no User-Agent (sign-up and sign-in record it with the session they open).
    "POST /v1/auth/refresh": {"headers": ("user-agent", None)},
}


BLOG_CHANGES = {
    "blog.blog.published",
    "blog.blog.updated",
    "blog.blog.unpublished",
    "blog.blog.deleted",
    "auth.user.updated",
}
LIKES = {"blog.blog.liked", "blog.blog.unliked"}
_READ_CACHE = {"ttl": "10s", "vary_headers": ["accept"]}
_TABLE_CACHE = {**_READ_CACHE, "invalidate_on": ["blog.blog.*", "auth.user.updated"]}
for _key, _events in (
    ("GET /v1/blogs", BLOG_CHANGES),
    ("GET /v1/blogs/{}/similar", BLOG_CHANGES),
    ("GET /v1/blogs/{}", BLOG_CHANGES | LIKES),
    ("GET /v1/blogs/by-slug/{}", BLOG_CHANGES | LIKES),
):
    # Readers' signals (issue 11) are blog.blog.* events too: the cached reads now name the
    # events that change them, so a read or a bookmark drops nothing.
    INTENDED[_key] = {
        "cache": (_TABLE_CACHE, {**_READ_CACHE, "invalidate_on": _events}),
        # Issue 12: published blogs are open to third-party applications (client tokens).
        "auth": ({}, {"scopes": {"any_of": ["blogs:read"]}}),
    }

_SIGNAL_ROUTE = {
    "backend": "blog",
    "auth": {"jwt": "required"},
    "headers": {"accept", "content-type", "x-api-key", "authorization"},
    "query": set(),
    "max_body_bytes": "1KiB",
    "cache": None,
    "rate_limit": None,
}
ADDED: dict[str, dict[str, Any]] = {
    f"{method} /v1/blogs/{{}}/{what}": _SIGNAL_ROUTE
    for method, what in (
        ("PUT", "like"),
        ("DELETE", "like"),
        ("PUT", "bookmark"),
        ("DELETE", "bookmark"),
        ("POST", "reads"),
    )
}
ADDED.update(
    {
        "GET /v1/recommendations/me": {
            **_SIGNAL_ROUTE,
            "backend": "reco",
            "query": {"limit", "exclude", "tag"},
        },
        "GET /v1/recommendations/blogs/{}": {
            **_SIGNAL_ROUTE,
            "backend": "reco",
            "auth": {"scopes": {"any_of": ["recommendations:read"]}},
            "headers": {"accept", "content-type", "x-api-key"},
            "query": {"limit"},
        },
        "GET /v1/recommendations/trending": {
            **_SIGNAL_ROUTE,
            "backend": "reco",
            "auth": {"scopes": {"any_of": ["recommendations:read"]}},
            "headers": {"accept", "content-type", "x-api-key"},
            "query": {"tag", "window", "limit"},
        },
    }
)
_ADMIN_ROUTE = {
    "backend": "auth",
    "auth": {"jwt": "required", "roles": ["ADMIN"]},
    "headers": {"accept", "content-type", "x-api-key", "authorization"},
    "query": set(),
    "max_body_bytes": "1KiB",
    "cache": None,
    "rate_limit": None,
}
ADDED.update(
    {
        "POST /v1/clients": {
            **_ADMIN_ROUTE,
            "headers": _ADMIN_ROUTE["headers"] | {"idempotency-key"},
            "max_body_bytes": "16KiB",
        },
        "GET /v1/clients": {**_ADMIN_ROUTE, "query": {"limit", "cursor"}},
        **{
            f"{method} /v1/clients/{path}": _ADMIN_ROUTE
            for method, path in (
                ("GET", "{}"),
                ("DELETE", "{}"),
                ("POST", "{}/disable"),
                ("POST", "{}/enable"),
                ("POST", "{}/secrets"),
                ("DELETE", "{}/secrets/{}"),
            )
        },
        # OAuth (RFC 6749, 7009, 7662): no API key, client credentials in Authorization (Basic)
        # or the form; a form may carry a token (8 KiB at most).
        **{
            f"POST /v1/oauth/{name}": {
                "backend": "auth",
                "auth": {"api_key": "off"},
                "headers": {"accept", "content-type", "x-api-key", "authorization", "user-agent"},
                "query": set(),
                "max_body_bytes": "16KiB",
                "cache": None,
                "rate_limit": {"requests": 300, "per": "1m", "by": "address"},
            }
            for name in ("token", "revoke", "introspect")
        },
        "GET /.well-known/oauth-authorization-server": {
            "backend": "auth",
            "auth": {"api_key": "off"},
            "headers": {"accept", "content-type", "x-api-key"},
            "query": set(),
            "max_body_bytes": "1KiB",
            "cache": None,
            "rate_limit": None,
        },
    }
)
"""Routes added since the table: readers' signals (any reader with a token), the reco
service's, and client applications (their ADMIN registry and the OAuth endpoints)."""


def _policy(route: dict[str, Any]) -> dict[str, Any]:
    """A route's policy, allow-lists as sets (their order means nothing to the gateway)."""
    return {
        "backend": route["backend"],
        "auth": route.get("auth", {}),
        "headers": set(route["headers"]["allow"]),
        "query": set(route["query"]["allow"]),
        "max_body_bytes": route["max_body_bytes"],
        "cache": route.get("cache"),
        "rate_limit": route.get("rate_limit"),
    }


def test_the_generated_routes_hold_the_policies_of_the_table_they_replace(
    routes: dict[tuple[str, str], dict[str, Any]],
) -> None:
    generated = {f"{method} {path}": _policy(route) for (method, path), route in routes.items()}
    before = {key: _policy({**route, "path": ""}) for key, route in BEFORE.items()}
    assert set(generated) == set(before) | set(ADDED)
    for key, policy in ADDED.items():
        assert generated[key] == policy, key
    for key, was in before.items():
        now = generated[key]
        for field, (old, new) in INTENDED.get(key, {}).items():
            if field == "headers":
                assert old in was["headers"], key
                assert old not in now["headers"], key
                was["headers"].discard(old)
            elif field == "cache":
                assert was["cache"] == old, key
                assert {**now["cache"], "invalidate_on": set(now["cache"]["invalidate_on"])} == {
                    **new,
                    "invalidate_on": set(new["invalidate_on"]),
                }, key
                was["cache"] = now["cache"]
            else:
                assert (was[field], now[field]) == (old, new), key
                was[field] = new
        assert now == was, key


def test_a_route_added_to_a_service_is_routed_with_nothing_else_edited() -> None:
    """A new service's routes come from its document alone; an undeclared route stays closed."""
    router = APIRouter(prefix="/v1")

    @router.get("/notes", openapi_extra=through_gateway())
    async def notes(limit: Annotated[int, Query(ge=1)] = 10) -> dict[str, int]:
        return {"limit": limit}

    @router.post("/notes/{note_id}/pin", openapi_extra=through_gateway(body="2KiB"))
    async def pin(
        note_id: int, _who: Annotated[Principal, Depends(require_roles("EDITOR"))]
    ) -> dict[str, int]:
        return {"id": note_id}

    @router.get(
        "/notes/shared",
        openapi_extra=through_gateway(scopes=["notes:read", "notes:list"], all_scopes=True),
    )
    async def shared() -> dict[str, str]:
        return {}

    @router.get("/notes/internal")
    async def internal() -> dict[str, str]:
        return {}

    app = create_app(
        ServiceSettings(), title="notes", description="", version="1", routers=[router]
    )
    config = gateway_config(SETTINGS, {"notes": app.openapi()})
    text = render(config, "gateway.yaml")  # the gateway accepts it
    assert "notes" in parse_config(text, "gateway.yaml").backends
    assert config["docs"]["sources"] == {"notes": "/openapi.json"}
    by_path = {route["path"]: route for route in config["routes"]}
    assert set(by_path) == {"/v1/notes", "/v1/notes/{note_id}/pin", "/v1/notes/shared"}
    assert by_path["/v1/notes/shared"]["auth"] == {
        "scopes": {"all_of": ["notes:read", "notes:list"]}
    }
    assert by_path["/v1/notes"]["query"] == {"allow": ["limit"]}
    assert "auth" not in by_path["/v1/notes"]  # the defaults: an API key, no token
    pinning = by_path["/v1/notes/{note_id}/pin"]
    assert pinning["methods"] == ["POST"]
    assert pinning["auth"] == {"jwt": "required", "roles": ["EDITOR"]}
    assert "authorization" in pinning["headers"]["allow"]
    assert pinning["max_body_bytes"] == "2KiB"
