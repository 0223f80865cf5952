"""A NUL character (U+0000) in any text input is a 422 naming the field, and changes nothing.

PostgreSQL cannot store or compare text holding NUL; before the rule in `mosaic_kit.types` each of
these requests was a 500 from the database driver.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from auth_support import PASSWORD, signup, unique_email
from fastapi import FastAPI
from kit_support import row_counts

from mosaic_kit.fastapi.parts import DATABASE

NUL = "\x00"


async def _row_counts(app: FastAPI) -> dict[str, int]:
    return await row_counts(DATABASE.of(app))


def _assert_names(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "validation_failed"
    assert {
        "field": field,
        "message": "Value error, must not contain the NUL character (U+0000)",
    } in body["errors"]


async def test_nul_in_any_text_input_is_422_naming_the_field_and_writes_nothing(
    client: httpx.AsyncClient, auth_app: FastAPI, admin: dict[str, str]
) -> None:
    user = await signup(client, name="Nul Tester")
    me = {"Authorization": f"Bearer {user['tokens']['accessToken']}"}
    user_id = user["user"]["id"]
    good_signup = {"email": unique_email(), "password": PASSWORD, "name": "Some Name"}
    cases: list[tuple[str, str, dict[str, Any], str]] = []
    for field in ("email", "password", "name", "profilePicUrl"):
        body = {**good_signup, "profilePicUrl": "https://example.com/p.png"}
        body[field] = body[field][:3] + NUL + body[field][3:]
        cases.append(("POST", "/v1/auth/signup", {"json": body}, field))
    signin = {"email": user["user"]["email"], "password": PASSWORD}
    for field in ("email", "password"):
        cases.append(
            ("POST", "/v1/auth/signin", {"json": {**signin, field: signin[field] + NUL}}, field)
        )
    refresh = {"refreshToken": user["tokens"]["refreshToken"] + NUL}
    cases.append(("POST", "/v1/auth/refresh", {"json": refresh}, "refreshToken"))
    for field in ("name", "profilePicUrl"):
        patch = {field: "Ada" + NUL + "Lovelace"}
        cases.append(("PATCH", "/v1/users/me", {"json": patch, "headers": me}, field))
    change = {"currentPassword": PASSWORD, "newPassword": "another-horse-7"}
    for field in ("currentPassword", "newPassword"):
        body = {**change, field: change[field] + NUL}
        cases.append(("PUT", "/v1/users/me/password", {"json": body, "headers": me}, field))
    roles = {"json": {"roles": ["LEARNER", "AUTH" + NUL + "OR"]}, "headers": admin}
    cases.append(("PUT", f"/v1/users/{user_id}/roles", roles, "roles"))
    for field in ("name", "comment"):
        key = {"name": "ci key", "comment": "for the pipeline", field: "bad" + NUL}
        cases.append(("POST", "/v1/api-keys", {"json": key, "headers": admin}, field))
    for param in ("q", "cursor"):
        query = {"params": {param: "ab" + NUL}, "headers": admin}
        cases.append(("GET", "/v1/users", query, f"query.{param}"))
    cursor = {"params": {"cursor": "ab" + NUL}, "headers": admin}
    cases.append(("GET", "/v1/api-keys", cursor, "query.cursor"))

    before = await _row_counts(auth_app)
    profile = (await client.get("/v1/users/me", headers=me)).json()
    for method, path, kwargs, field in cases:
        _assert_names(await client.request(method, path, **kwargs), field)
    assert await _row_counts(auth_app) == before
    assert (await client.get("/v1/users/me", headers=me)).json() == profile
    # The password was not changed, and the account still signs in.
    assert (await client.post("/v1/auth/signin", json=signin)).status_code == 200


@pytest.mark.parametrize("email", ["a\x00b@example.com", "\x00", "x" * 10 + "\x00"])
async def test_nul_is_named_before_any_other_rule(client: httpx.AsyncClient, email: str) -> None:
    response = await client.post("/v1/auth/signin", json={"email": email, "password": "p"})
    _assert_names(response, "email")
    assert len(response.json()["errors"]) == 1
