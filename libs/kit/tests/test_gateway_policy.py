"""A route's gateway policy: declared beside it, completed from it, published in its OpenAPI."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, Header, Query
from pydantic import BaseModel, ValidationError

from mosaic_kit.fastapi.app import create_app
from mosaic_kit.fastapi.auth import optional_principal, require_roles
from mosaic_kit.fastapi.gateway import through_gateway
from mosaic_kit.fastapi.idempotency import IdempotencyGuard
from mosaic_kit.gateway_policy import EXTENSION, JSON_BODY, NO_BODY, exposed_operations
from mosaic_kit.settings import ServiceSettings
from mosaic_kit.tokens import Principal


class Note(BaseModel):
    text: str


Editor = Annotated[Principal, Depends(require_roles("EDITOR", "ADMIN"))]


async def paging(cursor: Annotated[str | None, Query()] = None) -> str | None:
    return cursor


router = APIRouter(prefix="/v1")


@router.get("/notes", openapi_extra=through_gateway(cache={"ttl": "5s"}))
async def list_notes(
    _cursor: Annotated[str | None, Depends(paging)],
    _who: Annotated[Principal | None, Depends(optional_principal)],
    tag: Annotated[str | None, Query()] = None,
) -> list[str]:
    return []


@router.post("/notes", openapi_extra=through_gateway(headers=["User-Agent"]))
async def create_note(note: Note, _editor: Editor, _idem: IdempotencyGuard) -> Note:
    return note


@router.put(
    "/notes/{note_id}",
    openapi_extra=through_gateway(body="1MiB", rate_limit={"requests": 5, "per": "1s"}),
)
async def put_note(
    note_id: int, note: Note, x_trace_tag: Annotated[str | None, Header()] = None
) -> Note:
    return note


@router.get("/keys.json", openapi_extra=through_gateway(api_key=False))
async def keys() -> dict[str, Any]:
    return {}


@router.get("/notes/internal")
async def internal() -> dict[str, Any]:
    return {}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    app = create_app(ServiceSettings(), title="t", description="", version="1", routers=[router])
    return app.openapi()


def _policies(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method} {path}": policy.model_dump(exclude_defaults=True)
        for path, method, policy in exposed_operations(document)
    }


def test_each_declared_route_gets_its_policy_completed_from_the_route(
    document: dict[str, Any],
) -> None:
    assert _policies(document) == {
        "GET /v1/notes": {
            "jwt": "optional",
            "headers": ("authorization",),
            "query": ("tag", "cursor"),
            "cache": {"ttl": "5s"},
        },
        "POST /v1/notes": {
            "jwt": "required",
            "roles": ("ADMIN", "EDITOR"),
            "headers": ("user-agent", "authorization", "idempotency-key"),
            "max_body_bytes": JSON_BODY,
        },
        "PUT /v1/notes/{note_id}": {
            "headers": ("x-trace-tag",),
            "max_body_bytes": "1MiB",
            "rate_limit": {"requests": 5, "per": "1s"},
        },
        "GET /v1/keys.json": {"api_key": "off"},
    }


def test_an_undeclared_route_is_not_exposed_and_nothing_internal_leaks(
    document: dict[str, Any],
) -> None:
    assert EXTENSION not in document["paths"]["/v1/notes/internal"]["get"]
    for item in document["paths"].values():
        for operation in item.values():
            assert not any(key.endswith("-declared") for key in operation)
    get_notes = document["paths"]["/v1/notes"]["get"][EXTENSION]
    assert get_notes["api_key"] == "required"
    assert get_notes["max_body_bytes"] == NO_BODY  # no body: the smallest limit


def test_an_extension_that_is_not_a_policy_is_refused() -> None:
    bad = {"paths": {"/x": {"get": {EXTENSION: {"api_key": "required", "jtw": "required"}}}}}
    with pytest.raises(ValidationError, match="jtw"):
        list(exposed_operations(bad))


def test_scopes_are_declared_beside_the_route_and_published() -> None:
    scoped = APIRouter(prefix="/v1")

    @scoped.get("/public", openapi_extra=through_gateway(scopes=["notes:read"]))
    async def public() -> dict[str, Any]:
        return {}

    @scoped.get(
        "/both", openapi_extra=through_gateway(scopes=["notes:read", "tags:read"], all_scopes=True)
    )
    async def both() -> dict[str, Any]:
        return {}

    app = create_app(ServiceSettings(), title="t", description="", version="1", routers=[scoped])
    document = app.openapi()
    assert document["paths"]["/v1/public"]["get"][EXTENSION]["scopes"] == {"any_of": ["notes:read"]}
    assert document["paths"]["/v1/both"]["get"][EXTENSION]["scopes"] == {
        "all_of": ["notes:read", "tags:read"]
    }
    policies = _policies(document)
    assert policies["GET /v1/public"]["scopes"] == {"any_of": ("notes:read",)}
    with pytest.raises(ValueError, match="all_scopes needs scopes"):
        through_gateway(all_scopes=True)


@pytest.mark.parametrize(
    "scopes",
    [
        {"any_of": ["notes:read"], "all_of": ["notes:read"]},
        {},
        {"any_of": []},
        {"any_of": ["Notes:Read"]},
        {"all_of": ["notes"]},
    ],
)
def test_a_scope_rule_that_is_not_one_is_refused(scopes: dict[str, Any]) -> None:
    bad = {"paths": {"/x": {"get": {EXTENSION: {"scopes": scopes}}}}}
    with pytest.raises(ValidationError):
        list(exposed_operations(bad))
