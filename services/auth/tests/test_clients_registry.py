"""The client registry (ADMIN): registration, listing, disabling, deletion, secret rotation."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import httpx
import pytest
from auth_support import bearer, client_token, register_client, signup
from fastapi import FastAPI
from kit_support import row_counts
from sqlalchemy import text

from mosaic_auth.service import AuthService
from mosaic_kit.fastapi.parts import DATABASE


async def test_client_routes_need_an_admin(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    learner = bearer((await signup(client))["tokens"]["accessToken"])
    target = (await register_client(client, admin))["clientId"]
    secret_id = uuid.uuid4()
    for method, path, body in [
        ("POST", "/v1/clients", {"name": "x", "scopes": ["blogs:read"]}),
        ("GET", "/v1/clients", None),
        ("GET", f"/v1/clients/{target}", None),
        ("DELETE", f"/v1/clients/{target}", None),
        ("POST", f"/v1/clients/{target}/disable", None),
        ("POST", f"/v1/clients/{target}/enable", None),
        ("POST", f"/v1/clients/{target}/secrets", None),
        ("DELETE", f"/v1/clients/{target}/secrets/{secret_id}", None),
    ]:
        denied = await client.request(method, path, json=body, headers=learner)
        assert denied.status_code == 403, (method, path)
        assert denied.json()["code"] == "auth.forbidden"
        anonymous = await client.request(method, path, json=body)
        assert anonymous.status_code == 401, (method, path)
    # None of that touched the client.
    still = await client.get(f"/v1/clients/{target}", headers=admin)
    assert still.status_code == 200
    assert still.json()["enabled"] is True
    assert len(still.json()["secrets"]) == 1


async def test_registration_shows_the_secret_once_and_stores_only_a_keyed_hash(
    client: httpx.AsyncClient, admin: dict[str, str], service: AuthService
) -> None:
    created = await register_client(
        client,
        admin,
        scopes=["recommendations:read", "blogs:read", "blogs:read"],
        audience=["partner-api"],
    )
    secret = created.pop("clientSecret")
    assert secret.startswith("mcs_")
    assert len(secret) >= 4 + 43  # 32 random bytes, base64url
    assert created["scopes"] == ["blogs:read", "recommendations:read"]  # sorted, deduplicated
    assert created["audience"] == ["partner-api"]
    assert created["enabled"] is True
    assert [set(s) for s in created["secrets"]] == [{"id", "createdAt", "lastUsedAt"}]
    assert created["secrets"][0]["lastUsedAt"] is None

    got = await client.get(f"/v1/clients/{created['clientId']}", headers=admin)
    assert got.json() == created
    assert secret not in got.text
    listed = await client.get("/v1/clients", params={"limit": 100}, headers=admin)
    assert created in listed.json()["items"]
    assert secret not in listed.text

    async with service.db.connect() as conn:
        stored = (await conn.execute(text("SELECT secret_hash FROM client_secrets"))).scalars()
        hashes = list(stored)
    # Neither the secret nor its bare digest: an HMAC under a server key.
    assert all(secret.encode() not in h for h in hashes)
    assert hashlib.sha256(secret.encode()).digest() not in hashes


async def test_list_pages_without_repeats(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    ids = {(await register_client(client, admin))["clientId"] for _ in range(5)}
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await client.get("/v1/clients", params=params, headers=admin)
        assert page.status_code == 200
        body = page.json()
        assert len(body["items"]) <= 2
        seen += [c["clientId"] for c in body["items"]]
        assert all("clientSecret" not in c for c in body["items"])
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert ids <= set(seen)
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "x", "scopes": ["blogs:write"]}, "scopes"),
        ({"name": "x", "scopes": ["blogs:read", "admin"]}, "scopes"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x"}, "scopes"),
        ({"scopes": ["blogs:read"]}, "name"),
        ({"name": "", "scopes": ["blogs:read"]}, "name"),
        ({"name": "x" * 201, "scopes": ["blogs:read"]}, "name"),
        ({"name": "x", "scopes": ["blogs:read"], "audience": ["has space"]}, "audience.0"),
        ({"name": "x", "scopes": ["blogs:read"], "audience": "partner"}, "audience"),
        ({"name": "x\x00y", "scopes": ["blogs:read"]}, "name"),
    ],
)
async def test_bad_registrations_are_422_and_change_nothing(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    auth_app: FastAPI,
    payload: dict[str, Any],
    field: str,
) -> None:
    before = await row_counts(DATABASE.of(auth_app))
    response = await client.post("/v1/clients", json=payload, headers=admin)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in {e["field"] for e in response.json()["errors"]}
    assert await row_counts(DATABASE.of(auth_app)) == before


async def test_unknown_ids_are_404_and_bad_ids_422(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    unknown = uuid.uuid4()
    for method, path in [
        ("GET", f"/v1/clients/{unknown}"),
        ("DELETE", f"/v1/clients/{unknown}"),
        ("POST", f"/v1/clients/{unknown}/disable"),
        ("POST", f"/v1/clients/{unknown}/enable"),
        ("POST", f"/v1/clients/{unknown}/secrets"),
        ("DELETE", f"/v1/clients/{unknown}/secrets/{uuid.uuid4()}"),
    ]:
        response = await client.request(method, path, headers=admin)
        assert response.status_code == 404, (method, path)
        assert response.json()["code"] == "auth.client_not_found"
    bad = await client.get("/v1/clients/not-a-uuid", headers=admin)
    assert bad.status_code == 422
    known = (await register_client(client, admin))["clientId"]
    no_secret = await client.delete(f"/v1/clients/{known}/secrets/{uuid.uuid4()}", headers=admin)
    assert no_secret.status_code == 404
    assert no_secret.json()["code"] == "auth.client_secret_not_found"


async def test_rotation_two_secrets_at_most_never_none(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    created = await register_client(client, admin)
    cid = created["clientId"]
    first_id = created["secrets"][0]["id"]
    last = await client.delete(f"/v1/clients/{cid}/secrets/{first_id}", headers=admin)
    assert last.status_code == 409
    assert last.json()["code"] == "auth.client_last_secret"

    added = await client.post(f"/v1/clients/{cid}/secrets", headers=admin)
    assert added.status_code == 201
    second = added.json()
    assert second["clientSecret"].startswith("mcs_")
    assert second["clientSecret"] != created["clientSecret"]
    third = await client.post(f"/v1/clients/{cid}/secrets", headers=admin)
    assert third.status_code == 409
    assert third.json()["code"] == "auth.client_secret_limit"
    listed = (await client.get(f"/v1/clients/{cid}", headers=admin)).json()["secrets"]
    assert [s["id"] for s in listed] == [first_id, second["id"]]  # oldest first

    # The end of the rotation: the old one goes; the new one may not (it is the last).
    assert (
        await client.delete(f"/v1/clients/{cid}/secrets/{first_id}", headers=admin)
    ).status_code == 204
    listed = (await client.get(f"/v1/clients/{cid}", headers=admin)).json()["secrets"]
    assert [s["id"] for s in listed] == [second["id"]]
    assert (
        await client.delete(f"/v1/clients/{cid}/secrets/{second['id']}", headers=admin)
    ).status_code == 409


async def test_disable_enable_delete(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    created = await register_client(client, admin)
    cid, secret = created["clientId"], created["clientSecret"]
    assert (await client.post(f"/v1/clients/{cid}/disable", headers=admin)).status_code == 204
    assert (await client.get(f"/v1/clients/{cid}", headers=admin)).json()["enabled"] is False
    assert (await client_token(client, cid, secret)).status_code == 401
    # Disabling twice is no error (and announces nothing: see test_oauth_revocation).
    assert (await client.post(f"/v1/clients/{cid}/disable", headers=admin)).status_code == 204
    assert (await client.post(f"/v1/clients/{cid}/enable", headers=admin)).status_code == 204
    assert (await client.get(f"/v1/clients/{cid}", headers=admin)).json()["enabled"] is True
    assert (await client_token(client, cid, secret)).status_code == 200

    assert (await client.delete(f"/v1/clients/{cid}", headers=admin)).status_code == 204
    assert (await client.get(f"/v1/clients/{cid}", headers=admin)).status_code == 404
    assert (await client.delete(f"/v1/clients/{cid}", headers=admin)).status_code == 404
    assert (await client_token(client, cid, secret)).status_code == 401


async def test_registration_is_idempotent_and_never_stores_the_secret(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    name = f"retry-{uuid.uuid4().hex[:6]}"
    hdr = {**admin, "Idempotency-Key": uuid.uuid4().hex}
    body = {"name": name, "scopes": ["blogs:read"]}
    first = await client.post("/v1/clients", json=body, headers=hdr)
    again = await client.post("/v1/clients", json=body, headers=hdr)
    assert first.status_code == again.status_code == 201
    assert again.json()["clientId"] == first.json()["clientId"]
    assert first.json()["clientSecret"].startswith("mcs_")
    assert again.json()["clientSecret"] is None
    listed = await client.get("/v1/clients", params={"limit": 100}, headers=admin)
    assert [c["name"] for c in listed.json()["items"]].count(name) == 1
