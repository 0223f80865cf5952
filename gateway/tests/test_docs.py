"""The merged OpenAPI document at /docs, from real backends' documents, through a real gateway."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from gateway_support import BackendFactory, GatewayFactory, free_port, gateway_config, plain_get

from mosaic_gateway.config import ConfigError, parse_config

pytestmark = pytest.mark.timeout(90)


def docs_config(alpha: str, beta: str, **docs: Any) -> dict[str, Any]:
    document = gateway_config(
        {"alpha": {"instances": [alpha]}, "beta": {"instances": [beta]}},
        [
            {"path": "/v1/items", "methods": ["GET"], "backend": "alpha"},
            {"path": "/v1/items/{id}", "methods": ["GET", "DELETE"], "backend": "alpha"},
            # A literal where alpha has a parameter: only one user is reachable, not documented.
            {"path": "/v1/users/me", "methods": ["GET"], "backend": "alpha"},
            # beta's items under another prefix: /b/items... -> /v1/items...
            {
                "path": "/b/items/*",
                "methods": ["GET"],
                "backend": "beta",
                "rewrite": {"strip_prefix": "/b", "add_prefix": "/v1"},
            },
        ],
    )
    document["docs"] = {
        "path": "/docs",
        "title": "Test API",
        "sources": {"alpha": "/openapi.json", "beta": "/openapi.json"},
        **docs,
    }
    return document


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item if method}


async def test_docs_merge_only_the_routed_operations_under_gateway_paths(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    alpha = backends("alpha")
    beta = backends("beta")
    gateway = gateways(docs_config(alpha.url, beta.url))
    client = gateway.client()
    response = await client.get("/docs/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "Test API"
    assert document["x-gateway-sources"] == {"alpha": "ok", "beta": "ok"}
    assert operations(document) == {
        ("/v1/items", "get"),
        ("/v1/items/{item_id}", "get"),
        ("/v1/items/{item_id}", "delete"),
        ("/b/items", "get"),
        ("/b/items/{item_id}", "get"),
    }
    # Left out: POST /v1/items (method not routed), /v1/users/{user_id} (the route is a literal),
    # /internal/stats (no route), beta's DELETE (not routed), and the schemas only they use.
    schemas = document["components"]["schemas"]
    assert "Stats" not in schemas
    assert "NewItem" not in schemas

    alpha_item = document["paths"]["/v1/items/{item_id}"]["get"]
    beta_item = document["paths"]["/b/items/{item_id}"]["get"]
    # The path item's parameters move into each operation.
    assert [p["name"] for p in alpha_item["parameters"]] == ["item_id"]
    # The same component name with different content: the later backend's is prefixed.
    ok = "200"
    json_schema = ("content", "application/json", "schema")

    def schema_of(operation: dict[str, Any]) -> Any:
        node = operation["responses"][ok]
        for key in json_schema:
            node = node[key]
        return node

    assert schema_of(alpha_item) == {"$ref": "#/components/schemas/Item"}
    assert schema_of(beta_item) == {"$ref": "#/components/schemas/beta_Item"}
    assert schemas["Item"]["title"] == "alpha item"
    assert schemas["beta_Item"]["title"] == "beta item"
    # Equal content is shared, and references inside kept components still resolve.
    assert schemas["beta_Item"]["properties"]["owner"] == {"$ref": "#/components/schemas/Owner"}
    # `Problem` is the gateway's (the kit's shape, for the problems it adds to every operation):
    # the test backends' own, different `Problem` is renamed like any clash.
    assert set(schemas) == {
        "Item",
        "beta_Item",
        "Owner",
        "Problem",
        "alpha_Problem",
        "beta_Problem",
    }
    # Operation ids stay unique.
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    assert beta_item["operationId"] == "beta_getItem"
    # Security: the gateway's schemes are there; the backend's own requirement is kept.
    schemes = document["components"]["securitySchemes"]
    assert schemes["gatewayApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": schemes["gatewayApiKey"]["description"],
    }
    assert schemes["gatewayBearer"]["scheme"] == "bearer"
    assert schemes["HTTPBearer"] == {"type": "http", "scheme": "bearer"}
    assert alpha_item["security"] == [{"HTTPBearer": []}]
    # Every reference in the document points at a component it holds.
    assert unresolved_refs(document) == set()


def unresolved_refs(document: dict[str, Any]) -> set[str]:
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                kind, name = ref.removeprefix("#/components/").split("/", 1)
                if name not in document["components"].get(kind, {}):
                    found.add(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document["paths"])
    walk(document["components"])
    return found


async def test_docs_page_is_html_loading_swagger_ui_and_head_works(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    alpha = backends("alpha")
    beta = backends("beta")
    gateway = gateways(docs_config(alpha.url, beta.url, path="/api-docs"))
    client = gateway.client()
    page = await client.get("/api-docs")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.text.startswith("<!doctype html>")
    assert "swagger-ui" in page.text
    assert '"/api-docs/openapi.json"' in page.text
    assert "<title>Test API</title>" in page.text
    # Swagger UI comes from the gateway itself (the installed package), not from a CDN.
    assert "https://" not in page.text
    script = await client.get("/api-docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert b"SwaggerUIBundle" in script.content
    assert (await client.get("/api-docs/assets/swagger-ui.css")).status_code == 200
    assert (await client.get("/api-docs/assets/nope.js")).status_code == 404
    head = await client.head("/api-docs/openapi.json")
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 100
    assert (await client.post("/api-docs")).status_code == 405
    # The backends' own paths are not reachable as docs.
    assert (await client.get("/docs")).status_code == 404


async def test_docs_follow_a_source_that_comes_up_late_and_changes(
    backends: BackendFactory, gateways: GatewayFactory
) -> None:
    alpha = backends("alpha")
    beta_port = free_port()
    gateway = gateways(
        docs_config(alpha.url, f"http://127.0.0.1:{beta_port}", refresh="400ms", timeout="1s")
    )
    client = gateway.client()

    async def document() -> dict[str, Any]:
        response = await client.get("/docs/openapi.json")
        assert response.status_code == 200
        return response.json()  # type: ignore[no-any-return]

    first = await document()
    assert first["x-gateway-sources"] == {"alpha": "ok", "beta": "unavailable"}
    assert ("/b/items", "get") not in operations(first)
    assert ("/v1/items", "get") in operations(first)

    beta = backends("beta", port=beta_port)
    latest: dict[str, Any] = {}

    async def poll() -> None:
        latest.update(await document())

    async def wait_for(condition: Any) -> None:
        for _ in range(100):
            await poll()
            if condition():
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"never reached; last document: {latest}")

    await wait_for(lambda: ("/b/items", "get") in operations(latest))
    assert latest["x-gateway-sources"]["beta"] == "ok"

    plain_get(f"{beta.url}/__openapi", params={"variant": "2"})
    await wait_for(lambda: ("/b/items/{item_id}/history", "get") in operations(latest))


async def test_docs_need_no_api_key_when_routes_do(
    backends: BackendFactory, gateways: GatewayFactory, nats_url: str
) -> None:
    alpha = backends("alpha")
    beta = backends("beta")
    document = docs_config(alpha.url, beta.url)
    document["nats"] = {"url": nats_url}
    document["defaults"]["auth"] = {"api_key": "required"}
    document["routes"][1]["auth"] = {"jwt": "optional"}
    document["routes"][0]["auth"] = {"scopes": {"any_of": ["items:read", "items:list"]}}
    document["routes"][3]["auth"] = {"scopes": {"all_of": ["items:read", "items:list"]}}
    gateway = gateways(document)
    client = gateway.client()
    refused = await client.get("/v1/items")
    assert refused.status_code == 401
    response = await client.get("/docs/openapi.json")
    assert response.status_code == 200
    assert (await client.get("/docs")).status_code == 200
    merged = response.json()
    # Each operation asks for what its route asks for. The backend's own bearer scheme names
    # the token the gateway checks (and forwards): it is left out, so the token is entered once.
    assert merged["paths"]["/v1/items/{item_id}"]["get"]["security"] == [
        {"gatewayApiKey": []},
        {"gatewayApiKey": [], "gatewayBearer": []},
    ]
    # Open to client applications: a client token in place of the key, holding one of the scopes
    # (any_of: an alternative per scope) or all of them (all_of: one alternative).
    assert merged["paths"]["/v1/items"]["get"]["security"] == [
        {"gatewayApiKey": []},
        {"gatewayClientToken": ["items:read"]},
        {"gatewayClientToken": ["items:list"]},
    ]
    history = merged["paths"]["/b/items/{item_id}"]["get"]
    assert history["security"] == [
        {"HTTPBearer": [], "gatewayApiKey": []},
        {"gatewayClientToken": ["items:read", "items:list"]},
    ]
    assert "auth.scope_missing" in str(history["responses"]["403"])
    assert "gatewayClientToken" in merged["components"]["securitySchemes"]


def test_docs_configuration_errors() -> None:
    base = """
backends: {alpha: {instances: [http://127.0.0.1:9]}}
routes:
  - {path: /docs, methods: [GET], backend: alpha}
"""
    with pytest.raises(ConfigError) as error:
        parse_config(base + "docs: {sources: {alpha: /openapi.json, nope: /x}}\n", "g.yaml")
    messages = [str(issue) for issue in error.value.issues]
    assert any("docs.sources.nope: unknown backend" in message for message in messages)
    assert any("docs.path: GET /docs is already routed" in message for message in messages), (
        messages
    )
    with pytest.raises(ConfigError) as error:
        parse_config(base + "docs: {path: '/d/{x}', sources: {}}\n", "g.yaml")
    assert "docs.path" in str(error.value)
    config = parse_config(base + "docs: {path: /api/docs, sources: {alpha: /openapi.json}}\n")
    assert config.docs is not None
    assert config.docs.refresh == 300
