"""Profile and password routes of the signed-in user, and public profiles."""

from __future__ import annotations

import uuid

import httpx
import pytest
from auth_support import PASSWORD, bearer, signup, unique_email


async def test_patch_me_changes_name_and_picture(client: httpx.AsyncClient) -> None:
    tokens = (await signup(client))["tokens"]
    hdr = bearer(tokens["accessToken"])
    response = await client.patch(
        "/v1/users/me",
        json={"name": "New Name", "profilePicUrl": "https://img.example/a.png"},
        headers=hdr,
    )
    assert response.status_code == 200
    assert response.json()["name"] == "New Name"
    me = (await client.get("/v1/users/me", headers=hdr)).json()
    assert me["name"] == "New Name"
    assert me["profilePicUrl"] == "https://img.example/a.png"
    cleared = await client.patch("/v1/users/me", json={"profilePicUrl": None}, headers=hdr)
    assert cleared.json()["profilePicUrl"] is None
    assert cleared.json()["name"] == "New Name"


@pytest.mark.parametrize(
    "payload", [{"name": "x"}, {"name": "y" * 201}, {"profilePicUrl": "javascript:alert(1)"}]
)
async def test_patch_me_rejects_bad_fields(
    client: httpx.AsyncClient, payload: dict[str, str]
) -> None:
    body = await signup(client, name="Kept Name")
    hdr = bearer(body["tokens"]["accessToken"])
    response = await client.patch("/v1/users/me", json=payload, headers=hdr)
    assert response.status_code == 422
    assert (await client.get("/v1/users/me", headers=hdr)).json()["name"] == "Kept Name"


async def test_patch_me_needs_a_token(client: httpx.AsyncClient) -> None:
    assert (await client.patch("/v1/users/me", json={"name": "Nobody"})).status_code == 401


async def test_password_change_revokes_other_sessions_only(client: httpx.AsyncClient) -> None:
    email = unique_email()
    first = (await signup(client, email=email))["tokens"]
    second = (
        await client.post("/v1/auth/signin", json={"email": email, "password": PASSWORD})
    ).json()["tokens"]
    wrong = await client.put(
        "/v1/users/me/password",
        json={"currentPassword": "not-it-at-all", "newPassword": "brand-new-pass"},
        headers=bearer(first["accessToken"]),
    )
    assert wrong.status_code == 403
    short = await client.put(
        "/v1/users/me/password",
        json={"currentPassword": PASSWORD, "newPassword": "short"},
        headers=bearer(first["accessToken"]),
    )
    assert short.status_code == 422
    ok = await client.put(
        "/v1/users/me/password",
        json={"currentPassword": PASSWORD, "newPassword": "brand-new-pass"},
        headers=bearer(first["accessToken"]),
    )
    assert ok.status_code == 204
    assert (
        await client.get("/v1/users/me", headers=bearer(first["accessToken"]))
    ).status_code == 200
    assert (
        await client.get("/v1/users/me", headers=bearer(second["accessToken"]))
    ).status_code == 401
    old = await client.post("/v1/auth/signin", json={"email": email, "password": PASSWORD})
    assert old.status_code == 401
    new = await client.post("/v1/auth/signin", json={"email": email, "password": "brand-new-pass"})
    assert new.status_code == 200


async def test_public_profile_shows_no_private_fields(client: httpx.AsyncClient) -> None:
    user = (await signup(client, name="Public Person"))["user"]
    response = await client.get(f"/v1/users/{user['id']}")
    assert response.status_code == 200
    assert response.json() == {"id": user["id"], "name": "Public Person", "profilePicUrl": None}
    assert (await client.get(f"/v1/users/{uuid.uuid4()}")).status_code == 404
    assert (await client.get("/v1/users/not-a-uuid")).status_code == 422
