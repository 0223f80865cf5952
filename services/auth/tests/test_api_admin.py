"""ADMIN routes: listing users, roles, disabling, API keys."""

from __future__ import annotations

import uuid

import httpx
import jwt
import pytest
from auth_support import PASSWORD, bearer, signup, unique_email

from mosaic_auth.api import SERVICE as AUTH_SERVICE


async def test_admin_routes_need_the_admin_role(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    learner = bearer((await signup(client))["tokens"]["accessToken"])
    target = (await signup(client))["user"]["id"]
    for method, path, body in [
        ("GET", "/v1/users", None),
        ("PUT", f"/v1/users/{target}/roles", {"roles": ["ADMIN"]}),
        ("POST", f"/v1/users/{target}/disable", None),
        ("POST", f"/v1/users/{target}/enable", None),
        ("POST", "/v1/api-keys", {"name": "x"}),
        ("GET", "/v1/api-keys", None),
        ("DELETE", f"/v1/api-keys/{uuid.uuid4()}", None),
    ]:
        denied = await client.request(method, path, json=body, headers=learner)
        assert denied.status_code == 403, (method, path)
        assert denied.json()["code"] == "auth.forbidden"
        anonymous = await client.request(method, path, json=body)
        assert anonymous.status_code == 401, (method, path)


async def test_list_users_filters_and_pages_without_repeats(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    tag = uuid.uuid4().hex[:8]
    created = [await signup(client, email=f"{tag}-{i}@example.com") for i in range(5)]
    ids = {c["user"]["id"] for c in created}
    seen: list[str] = []
    cursor = None
    while True:
        params = {"q": tag, "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await client.get("/v1/users", params=params, headers=admin)
        assert page.status_code == 200
        body = page.json()
        assert len(body["items"]) <= 2
        seen += [u["id"] for u in body["items"]]
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen))
    by_name = await client.get("/v1/users", params={"q": "no-such-name-" + tag}, headers=admin)
    assert by_name.json() == {"items": [], "nextCursor": None}


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 101}, {"limit": "many"}, {"cursor": "garbage!!"}]
)
async def test_list_users_rejects_bad_paging(
    client: httpx.AsyncClient, admin: dict[str, str], params: dict[str, object]
) -> None:
    response = await client.get("/v1/users", params=params, headers=admin)
    assert response.status_code in (400, 422)
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_granting_a_role_shows_in_the_next_token(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    body = await signup(client)
    user_id, tokens = body["user"]["id"], body["tokens"]
    granted = await client.put(
        f"/v1/users/{user_id}/roles", json={"roles": ["LEARNER", "AUTHOR"]}, headers=admin
    )
    assert granted.status_code == 200
    assert granted.json()["roles"] == ["AUTHOR", "LEARNER"]
    # Adding a role does not revoke anything: the old token still works, without the new role.
    assert (
        await client.get("/v1/users/me", headers=bearer(tokens["accessToken"]))
    ).status_code == 200
    refreshed = await client.post("/v1/auth/refresh", json={"refreshToken": tokens["refreshToken"]})
    new_access = refreshed.json()["tokens"]["accessToken"]
    claims = jwt.decode(new_access, options={"verify_signature": False})
    assert set(claims["roles"]) == {"AUTHOR", "LEARNER"}


async def test_removing_a_role_revokes_tokens_that_carry_it(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    body = await signup(client)
    user_id = body["user"]["id"]
    await client.put(f"/v1/users/{user_id}/roles", json={"roles": ["AUTHOR"]}, headers=admin)
    tokens = (
        await client.post("/v1/auth/refresh", json={"refreshToken": body["tokens"]["refreshToken"]})
    ).json()["tokens"]
    assert (
        await client.get("/v1/users/me", headers=bearer(tokens["accessToken"]))
    ).status_code == 200
    removed = await client.put(
        f"/v1/users/{user_id}/roles", json={"roles": ["LEARNER"]}, headers=admin
    )
    assert removed.status_code == 200
    stale = await client.get("/v1/users/me", headers=bearer(tokens["accessToken"]))
    assert stale.status_code == 401
    # The session itself lives: a refresh gives a token without the removed role, which works.
    again = await client.post("/v1/auth/refresh", json={"refreshToken": tokens["refreshToken"]})
    assert again.status_code == 200
    fresh = again.json()["tokens"]["accessToken"]
    assert jwt.decode(fresh, options={"verify_signature": False})["roles"] == ["LEARNER"]
    assert (await client.get("/v1/users/me", headers=bearer(fresh))).status_code == 200


async def test_roles_bad_input(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    user_id = (await signup(client))["user"]["id"]
    unknown_role = await client.put(
        f"/v1/users/{user_id}/roles", json={"roles": ["OVERLORD"]}, headers=admin
    )
    assert unknown_role.status_code == 422
    assert unknown_role.json()["errors"][0]["field"] == "roles"
    me = await client.get(f"/v1/users/{user_id}")
    assert me.status_code == 200
    missing = await client.put(f"/v1/users/{uuid.uuid4()}/roles", json={"roles": []}, headers=admin)
    assert missing.status_code == 404
    not_a_list = await client.put(
        f"/v1/users/{user_id}/roles", json={"roles": "AUTHOR"}, headers=admin
    )
    assert not_a_list.status_code == 422


async def test_disabled_user_loses_sessions_and_cannot_sign_in(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    email = unique_email()
    body = await signup(client, email=email)
    user_id, tokens = body["user"]["id"], body["tokens"]
    assert (await client.post(f"/v1/users/{user_id}/disable", headers=admin)).status_code == 204
    assert (
        await client.get("/v1/users/me", headers=bearer(tokens["accessToken"]))
    ).status_code == 401
    refresh = await client.post("/v1/auth/refresh", json={"refreshToken": tokens["refreshToken"]})
    assert refresh.status_code == 401
    signin = await client.post("/v1/auth/signin", json={"email": email, "password": PASSWORD})
    assert signin.status_code == 403
    assert signin.json()["code"] == "auth.user_disabled"
    wrong = await client.post("/v1/auth/signin", json={"email": email, "password": "wrong-wrong"})
    assert wrong.status_code == 401  # a wrong password reveals nothing about the account
    assert (await client.post(f"/v1/users/{user_id}/enable", headers=admin)).status_code == 204
    back = await client.post("/v1/auth/signin", json={"email": email, "password": PASSWORD})
    assert back.status_code == 200
    assert (
        await client.post(f"/v1/users/{uuid.uuid4()}/disable", headers=admin)
    ).status_code == 404


async def test_api_keys_are_shown_once_listed_without_secret_and_revocable(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    created = await client.post(
        "/v1/api-keys", json={"name": "mobile app", "comment": "iOS"}, headers=admin
    )
    assert created.status_code == 201
    record = created.json()
    assert record["key"].startswith("mk_")
    assert record["name"] == "mobile app"
    listed = await client.get("/v1/api-keys", params={"limit": 100}, headers=admin)
    entries = {k["id"]: k for k in listed.json()["items"]}
    assert record["id"] in entries
    assert "key" not in entries[record["id"]]
    assert record["key"] not in listed.text
    service = AUTH_SERVICE.of(client._transport.app)  # type: ignore[attr-defined]
    assert (await service.verify_api_key(record["key"])).name == "mobile app"
    deleted = await client.delete(f"/v1/api-keys/{record['id']}", headers=admin)
    assert deleted.status_code == 204
    again = await client.delete(f"/v1/api-keys/{record['id']}", headers=admin)
    assert again.status_code == 404
    listed = await client.get("/v1/api-keys", params={"limit": 100}, headers=admin)
    assert record["id"] not in {k["id"] for k in listed.json()["items"]}


@pytest.mark.parametrize("payload", [{}, {"name": ""}, {"name": "x" * 201}])
async def test_api_key_bad_input(
    client: httpx.AsyncClient, admin: dict[str, str], payload: dict[str, str]
) -> None:
    assert (await client.post("/v1/api-keys", json=payload, headers=admin)).status_code == 422


async def test_api_key_creation_is_idempotent_and_never_stores_the_key(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    hdr = {**admin, "Idempotency-Key": uuid.uuid4().hex}
    first = await client.post("/v1/api-keys", json={"name": "retry"}, headers=hdr)
    again = await client.post("/v1/api-keys", json={"name": "retry"}, headers=hdr)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert first.json()["key"].startswith("mk_")
    assert again.json()["key"] is None
    listed = await client.get("/v1/api-keys", params={"limit": 100}, headers=admin)
    assert [k["name"] for k in listed.json()["items"]].count("retry") == 1


async def test_an_admin_cannot_lock_themselves_out(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    me = (await client.get("/v1/users/me", headers=admin)).json()
    demote = await client.put(
        f"/v1/users/{me['id']}/roles", json={"roles": ["LEARNER"]}, headers=admin
    )
    assert demote.status_code == 409
    assert demote.json()["code"] == "auth.self_lockout"
    disable = await client.post(f"/v1/users/{me['id']}/disable", headers=admin)
    assert disable.status_code == 409
    still = await client.get("/v1/users/me", headers=admin)
    assert still.status_code == 200
    assert "ADMIN" in still.json()["roles"]
