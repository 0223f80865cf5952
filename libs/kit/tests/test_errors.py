from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Query
from kit_support import build_app
from pydantic import BaseModel, Field

from mosaic_kit.fastapi.errors import install_problem_handlers
from mosaic_kit.openapi import PROBLEM_CONTENT_TYPE
from mosaic_kit.problem import Problem, conflict, unauthorized


class Address(BaseModel):
    city: str = Field(min_length=2)


class Person(BaseModel):
    name: str = Field(min_length=2)
    age: int
    address: Address


def _router() -> APIRouter:
    router = APIRouter(prefix="/v1/people")

    @router.post("")
    async def create(person: Person) -> Person:
        return person

    @router.get("")
    async def search(limit: int = Query(20, ge=1, le=100)) -> dict[str, int]:
        return {"limit": limit}

    @router.get("/taken")
    async def taken() -> None:
        raise conflict("people.name_taken", "That name is taken")

    @router.get("/secret")
    async def secret() -> None:
        raise unauthorized()

    @router.get("/teapot")
    async def teapot() -> None:
        raise Problem(418, "people.teapot", "Short and stout", headers={"Retry-After": "5"})

    @router.get("/crash")
    async def crash() -> None:
        raise ZeroDivisionError("internal detail: rows=42 user=alice")

    return router


def _bare_app() -> FastAPI:
    # errors.py on its own, without the kit middleware in front.
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(_router())
    return app


@asynccontextmanager
async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # Starlette re-raises unhandled errors after answering; the answer is what is under test.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture(params=["bare", "create_app"])
def app(request: pytest.FixtureRequest) -> FastAPI:
    return _bare_app() if request.param == "bare" else build_app([_router()])


def _assert_problem(resp: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert resp.status_code == status
    assert resp.headers["content-type"] == PROBLEM_CONTENT_TYPE
    body = resp.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"urn:mosaic:problem:{code}"
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body  # type: ignore[no-any-return]


async def test_unknown_route_is_404(app: FastAPI) -> None:
    async with _client(app) as c:
        resp = await c.get("/v1/nowhere")
    body = _assert_problem(resp, 404, "http.not_found")
    assert body["instance"] == "/v1/nowhere"


async def test_wrong_method_is_405_with_allow(app: FastAPI) -> None:
    async with _client(app) as c:
        resp = await c.delete("/v1/people")
    _assert_problem(resp, 405, "http.method_not_allowed")
    # The Allow header survives the conversion (Starlette names the first matching route's
    # methods only, so GET is not listed here).
    assert "POST" in resp.headers["allow"]


async def test_body_validation_lists_field_errors(app: FastAPI) -> None:
    async with _client(app) as c:
        resp = await c.post("/v1/people", json={"name": "x", "address": {"city": "y"}})
    body = _assert_problem(resp, 422, "validation_failed")
    errors = body["errors"]
    assert isinstance(errors, list)
    fields = {e["field"] for e in errors}
    assert fields == {"name", "age", "address.city"}
    assert all(isinstance(e["message"], str) for e in errors)
    assert all(e["message"] for e in errors)


async def test_query_validation_names_the_parameter(app: FastAPI) -> None:
    async with _client(app) as c:
        resp = await c.get("/v1/people", params={"limit": 1000})
    body = _assert_problem(resp, 422, "validation_failed")
    assert [e["field"] for e in body["errors"]] == ["query.limit"]  # type: ignore[attr-defined]


async def test_malformed_json_is_400(app: FastAPI) -> None:
    async with _client(app) as c:
        resp = await c.post(
            "/v1/people", content=b'{"name": "ab",', headers={"content-type": "application/json"}
        )
    _assert_problem(resp, 400, "http.malformed_json")


PERSON = b'{"name": "Ada", "age": 36, "address": {"city": "London"}}'


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_a_json_body_sent_as_another_type_is_415(
    app: FastAPI, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    async with _client(app) as c:
        resp = await c.post("/v1/people", content=PERSON, headers=headers)
    body = _assert_problem(resp, 415, "http.unsupported_media_type")
    assert "application/json" in str(body["detail"])


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "application/ld+json"]
)
async def test_json_and_json_suffixed_types_are_read(app: FastAPI, content_type: str) -> None:
    async with _client(app) as c:
        resp = await c.post("/v1/people", content=PERSON, headers={"content-type": content_type})
    assert resp.status_code == 200
    assert resp.json()["name"] == "Ada"


async def test_a_route_without_a_body_ignores_the_content_type(app: FastAPI) -> None:
    async with _client(app) as c:
        resp = await c.get("/v1/people", params={"limit": 0}, headers={"content-type": "text/x"})
    _assert_problem(resp, 422, "validation_failed")


async def test_business_problems_keep_code_detail_and_headers(app: FastAPI) -> None:
    async with _client(app) as c:
        taken = await c.get("/v1/people/taken")
        secret = await c.get("/v1/people/secret")
        teapot = await c.get("/v1/people/teapot")
    assert _assert_problem(taken, 409, "people.name_taken")["detail"] == "That name is taken"
    _assert_problem(secret, 401, "auth.unauthorized")
    assert secret.headers["www-authenticate"] == "Bearer"
    assert _assert_problem(teapot, 418, "people.teapot")["title"] == "I'm a Teapot"
    assert teapot.headers["retry-after"] == "5"


async def test_unexpected_error_is_500_without_internals(app: FastAPI) -> None:
    async with _client(app) as c:
        resp = await c.get("/v1/people/crash")
    body = _assert_problem(resp, 500, "http.internal")
    for leak in ("ZeroDivisionError", "alice", "rows=42", "Traceback", "File "):
        assert leak not in resp.text
    assert body["detail"] == "An unexpected error occurred"
