"""Sign-up and sign-in through the HTTP API, with good and bad input."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from auth_support import PASSWORD, bearer, signup, unique_email

PROBLEM = "application/problem+json"


async def test_signup_creates_a_learner_and_returns_working_tokens(
    client: httpx.AsyncClient,
) -> None:
    email = unique_email().upper()
    body = await signup(client, email=email, name="  Ada Lovelace ")
    user, tokens = body["user"], body["tokens"]
    assert user["email"] == email.lower()
    assert user["name"] == "Ada Lovelace"
    assert user["roles"] == ["LEARNER"]
    assert set(user) == {"id", "email", "name", "profilePicUrl", "roles", "createdAt"}
    assert tokens["tokenType"] == "Bearer"
    assert tokens["expiresIn"] > 0
    me = await client.get("/v1/users/me", headers=bearer(tokens["accessToken"]))
    assert me.status_code == 200
    assert me.json()["id"] == user["id"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"password": PASSWORD, "name": "Ann"}, "email"),
        ({"email": "not-an-email", "password": PASSWORD, "name": "Ann"}, "email"),
        ({"email": "EMAIL", "password": "short", "name": "Ann"}, "password"),
        ({"email": "EMAIL", "password": "x" * 129, "name": "Ann"}, "password"),
        ({"email": "EMAIL", "password": PASSWORD, "name": "A"}, "name"),
        ({"email": "EMAIL", "password": PASSWORD, "name": "A" * 201}, "name"),
        ({"email": "EMAIL", "password": PASSWORD}, "name"),
        (
            {"email": "EMAIL", "password": PASSWORD, "name": "Ann", "profilePicUrl": "ftp://x/y"},
            "profilePicUrl",
        ),
    ],
)
async def test_signup_rejects_bad_fields_with_422_and_creates_nothing(
    client: httpx.AsyncClient, payload: dict[str, str], field: str
) -> None:
    email = unique_email()
    payload = {k: (email if v == "EMAIL" else v) for k, v in payload.items()}
    response = await client.post("/v1/auth/signup", json=payload)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["code"] == "validation_failed"
    assert field in {e["field"] for e in problem["errors"]}
    if "email" in payload and "@" in payload["email"]:
        signin = await client.post("/v1/auth/signin", json={"email": email, "password": PASSWORD})
        assert signin.status_code == 401


async def test_signup_with_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/auth/signup", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith(PROBLEM)


async def test_duplicate_email_is_409_whatever_its_case(client: httpx.AsyncClient) -> None:
    email = unique_email()
    await signup(client, email=email)
    again = await client.post(
        "/v1/auth/signup", json={"email": email.upper(), "password": PASSWORD, "name": "Twin"}
    )
    assert again.status_code == 409
    assert again.json()["code"] == "auth.email_taken"


async def test_signin_succeeds_and_fails_the_same_way_for_unknown_and_wrong(
    client: httpx.AsyncClient,
) -> None:
    email = unique_email()
    await signup(client, email=email)
    good = await client.post("/v1/auth/signin", json={"email": email, "password": PASSWORD})
    assert good.status_code == 200
    assert good.json()["user"]["email"] == email
    wrong = await client.post("/v1/auth/signin", json={"email": email, "password": "nope-nope"})
    unknown = await client.post(
        "/v1/auth/signin", json={"email": unique_email(), "password": "nope-nope"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["code"] == "auth.bad_credentials"


async def test_signin_with_missing_fields_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/auth/signin", json={"email": unique_email()})
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {"password"}


async def test_brute_force_on_an_account_is_slowed_down_with_429(
    client: httpx.AsyncClient,
) -> None:
    email = unique_email()
    await signup(client, email=email)
    hdr = {"X-Forwarded-For": "203.0.113.7"}
    for _ in range(5):
        r = await client.post(
            "/v1/auth/signin", json={"email": email, "password": "guess-guess"}, headers=hdr
        )
        assert r.status_code == 401
    # Locked now: even the right password is not checked.
    locked = await client.post(
        "/v1/auth/signin", json={"email": email, "password": PASSWORD}, headers=hdr
    )
    assert locked.status_code == 429
    assert locked.json()["code"] == "auth.too_many_attempts"
    assert int(locked.headers["Retry-After"]) >= 1
    # Another account from another address is not affected.
    other = unique_email()
    await signup(client, email=other)
    ok = await client.post(
        "/v1/auth/signin",
        json={"email": other, "password": PASSWORD},
        headers={"X-Forwarded-For": "203.0.113.8"},
    )
    assert ok.status_code == 200
    await asyncio.sleep(1.1)  # the first lockout (auth_signin_base_delay) has passed
    after = await client.post(
        "/v1/auth/signin", json={"email": email, "password": PASSWORD}, headers=hdr
    )
    assert after.status_code == 200


async def test_brute_force_from_one_address_across_accounts_is_slowed_down(
    client: httpx.AsyncClient,
) -> None:
    hdr = {"X-Forwarded-For": "198.51.100.77"}
    for _ in range(20):
        r = await client.post(
            "/v1/auth/signin",
            json={"email": unique_email(), "password": "guess-guess"},
            headers=hdr,
        )
        assert r.status_code == 401
    email = unique_email()
    await signup(client, email=email)
    blocked = await client.post(
        "/v1/auth/signin", json={"email": email, "password": PASSWORD}, headers=hdr
    )
    assert blocked.status_code == 429


async def test_signup_with_an_idempotency_key_creates_one_account(
    client: httpx.AsyncClient,
) -> None:
    email = unique_email()
    payload = {"email": email, "password": PASSWORD, "name": "Retry Ann"}
    hdr = {"Idempotency-Key": f"signup-{email}"}
    first = await client.post("/v1/auth/signup", json=payload, headers=hdr)
    again = await client.post("/v1/auth/signup", json=payload, headers=hdr)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["user"] == first.json()["user"]
    # The replay is a sign-in of its own: working tokens, not stored copies of the first ones.
    replay_tokens = again.json()["tokens"]
    assert replay_tokens["refreshToken"] != first.json()["tokens"]["refreshToken"]
    me = await client.get("/v1/users/me", headers=bearer(replay_tokens["accessToken"]))
    assert me.status_code == 200
    wrong = await client.post(
        "/v1/auth/signup", json={**payload, "password": "not-the-same-1"}, headers=hdr
    )
    assert wrong.status_code == 401
