from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from fastapi import APIRouter, FastAPI
from kit_support import client, settings
from pydantic import BaseModel

from mosaic_kit.fastapi.app import OrjsonResponse, create_app
from mosaic_kit.metrics import new_registry
from mosaic_kit.openapi import PROBLEM_CONTENT_TYPE


class NewItem(BaseModel):
    name: str
    size: int


class Item(NewItem):
    id: uuid.UUID
    created_at: datetime


def _router() -> APIRouter:
    router = APIRouter(prefix="/v1/items", tags=["items"])

    @router.post("", status_code=201)
    async def create(body: NewItem) -> Item:
        return Item(id=uuid.uuid4(), created_at=datetime.now(UTC), **body.model_dump())

    @router.get("/raw")
    async def raw() -> OrjsonResponse:
        return OrjsonResponse({1: datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), "u": uuid.UUID(int=0)})

    return router


def _app(**kwargs: object) -> FastAPI:
    return create_app(
        settings(),
        title="Items",
        description="Items service",
        version="1.4.0",
        commit="feedbee",
        routers=[_router()],
        registry=new_registry(process_metrics=False),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_routes_validation_and_settings_are_wired() -> None:
    app = _app()
    assert app.state.settings.service_name == "kit-test"
    async with client(app) as c:
        created = await c.post("/v1/items", json={"name": "a", "size": 2})
        invalid = await c.post("/v1/items", json={"name": "a", "size": "big"})
    assert created.status_code == 201
    assert created.json()["name"] == "a"
    assert created.headers["content-type"] == "application/json"
    assert invalid.status_code == 422
    assert invalid.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert invalid.json()["errors"][0]["field"] == "size"


async def test_orjson_response_for_prebuilt_payloads() -> None:
    async with client(_app()) as c:
        resp = await c.get("/v1/items/raw")
    assert resp.json() == {
        "1": "2025-01-02T03:04:05+00:00",
        "u": "00000000-0000-0000-0000-000000000000",
    }


async def test_docs_and_openapi_are_served() -> None:
    async with client(_app()) as c:
        docs = await c.get("/docs")
        schema = (await c.get("/openapi.json")).json()
    assert docs.status_code == 200
    assert "/openapi.json" in docs.text
    assert schema["info"] == {"title": "Items", "description": "Items service", "version": "1.4.0"}
    assert "/v1/items" in schema["paths"]


async def test_the_docs_page_loads_swagger_ui_from_the_service_itself() -> None:
    async with client(_app()) as c:
        page = (await c.get("/docs")).text
        # Every asset the page loads is one the service serves: nothing from a CDN.
        loaded = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert loaded
        assert all(url.startswith("/docs/assets/") for url in loaded), loaded
        for url in loaded:
            answer = await c.get(url)
            assert answer.status_code == 200, url
            assert len(answer.content) > 500
            assert answer.headers["cache-control"] == "public, max-age=86400"
        script = await c.get("/docs/assets/swagger-ui-bundle.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert b"SwaggerUIBundle" in script.content
        missing = await c.get("/docs/assets/../openapi.json")
        unknown = await c.get("/docs/assets/secret.txt")
    assert missing.status_code == 404
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert "/docs" not in _app().openapi()["paths"]


def test_openapi_documents_validation_errors_as_problems() -> None:
    schema = _app().openapi()
    responses = schema["paths"]["/v1/items"]["post"]["responses"]
    assert set(responses["422"]["content"]) == {PROBLEM_CONTENT_TYPE}
    ref = responses["422"]["content"][PROBLEM_CONTENT_TYPE]["schema"]["$ref"]
    assert ref == "#/components/schemas/Problem"
    components = schema["components"]["schemas"]
    assert {"type", "title", "status", "detail", "code"} <= set(components["Problem"]["required"])
    assert "HTTPValidationError" not in components
    assert "ValidationError" not in components
    # The schema is computed once; later calls return the same document.
    assert _app().openapi() == schema


async def test_lifespan_fills_readiness_and_cleans_up() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("start")

        async def db() -> None:
            raise ConnectionError

        app.state.readiness = {"db": db}
        yield
        events.append("stop")

    app = _app(lifespan=lifespan)
    async with app.router.lifespan_context(app), client(app) as c:
        resp = await c.get("/readyz")
        assert events == ["start"]
    assert resp.status_code == 503
    assert resp.json()["failing"] == ["db"]
    assert events == ["start", "stop"]


async def test_commit_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOSAIC_GIT_COMMIT", "0ddba11")
    app = create_app(
        settings(),
        title="t",
        description="d",
        version="2.0.0",
        routers=[],
        registry=new_registry(process_metrics=False),
    )
    async with client(app) as c:
        body = (await c.get("/healthz")).json()
    assert (body["version"], body["commit"]) == ("2.0.0", "0ddba11")
