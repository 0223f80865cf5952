"""The sign-in throttle under parallel guesses, on two replicas sharing one database.

Password checks are counted for real: each replica's `Passwords` counts the Argon2 verifications
it runs (the hashes and the database are the real ones).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from auth_support import PASSWORD, make_settings, signup, unique_email
from fastapi import FastAPI

from mosaic_auth.api import SERVICE as AUTH_SERVICE
from mosaic_auth.app import create_auth_app
from mosaic_auth.passwords import Passwords
from mosaic_auth.settings import AuthSettings

GUESSES = 50
# Long enough that the first lockout outlasts the whole burst of guesses on a busy machine, so
# every refusal below is the lock's doing, not a race with its expiry.
LOCKOUT = 3.0


class CountedPasswords(Passwords):
    def __init__(self, settings: AuthSettings) -> None:
        super().__init__(
            settings.auth_argon2_time_cost,
            settings.auth_argon2_memory_kib,
            settings.auth_argon2_parallelism,
        )
        self.verified = 0

    async def verify(self, password_hash: str | None, password: str) -> bool:
        self.verified += 1
        return await super().verify(password_hash, password)


@pytest.fixture(scope="module")
def auth_settings(pg_url: str, nats_url: str) -> AuthSettings:
    return make_settings(pg_url, nats_url, auth_signin_base_delay=LOCKOUT)


@pytest_asyncio.fixture(scope="module")
async def second_replica(auth_app: FastAPI, auth_settings: AuthSettings) -> AsyncIterator[FastAPI]:
    """Another replica on the same schema: its own process state, its own connection pool."""
    settings = auth_settings.model_copy(update={"instance_id": "auth-test-2"})
    app = create_auth_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest_asyncio.fixture(scope="module")
async def replicas(
    auth_app: FastAPI, second_replica: FastAPI, auth_settings: AuthSettings
) -> AsyncIterator[list[tuple[httpx.AsyncClient, CountedPasswords]]]:
    pairs = []
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=auth_app), base_url="http://a") as a,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=second_replica), base_url="http://b"
        ) as b,
    ):
        for app, client in ((auth_app, a), (second_replica, b)):
            counted = CountedPasswords(auth_settings)
            AUTH_SERVICE.of(app).passwords = counted
            pairs.append((client, counted))
        yield pairs


def _reset(replicas: list[tuple[httpx.AsyncClient, CountedPasswords]]) -> None:
    for _, counted in replicas:
        counted.verified = 0


def _verified(replicas: list[tuple[httpx.AsyncClient, CountedPasswords]]) -> int:
    return sum(counted.verified for _, counted in replicas)


async def _signin(client: httpx.AsyncClient, email: str, password: str, address: str) -> Any:
    return await client.post(
        "/v1/auth/signin",
        json={"email": email, "password": password},
        headers={"X-Forwarded-For": address},
    )


async def _throttle_rows(settings: AuthSettings, *keys: str) -> dict[str, int]:
    conn = await asyncpg.connect(settings.database_url.get_secret_value().replace("+asyncpg", ""))
    try:
        rows = await conn.fetch(
            f'SELECT key, failures FROM "{settings.db_schema}".signin_throttle '
            "WHERE key = ANY($1::text[])",
            list(keys),
        )
    finally:
        await conn.close()
    return {r["key"]: r["failures"] for r in rows}


async def test_parallel_guesses_on_two_replicas_get_at_most_the_limit_of_password_checks(
    replicas: list[tuple[httpx.AsyncClient, CountedPasswords]], auth_settings: AuthSettings
) -> None:
    email = unique_email()
    await signup(replicas[0][0], email=email)
    address = "203.0.113.60"
    _reset(replicas)

    answers = await asyncio.gather(
        *(_signin(replicas[i % 2][0], email, f"guess-{i:02d}", address) for i in range(GUESSES))
    )

    limit = auth_settings.auth_signin_max_failures
    assert _verified(replicas) == limit
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [401] * limit + [429] * (GUESSES - limit)
    for refused in (r for r in answers if r.status_code == 429):
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "auth.too_many_attempts"
        assert 1 <= int(refused.headers["Retry-After"]) <= LOCKOUT + 1

    # The right password is refused unchecked while the lock lasts, on either replica ...
    for client, _ in replicas:
        locked = await _signin(client, email, PASSWORD, address)
        assert locked.status_code == 429
    assert _verified(replicas) == limit
    # ... and accepted once it has passed; success clears the account's count.
    await asyncio.sleep(int(locked.headers["Retry-After"]) + 0.1)
    accepted = await _signin(replicas[1][0], email, PASSWORD, address)
    assert accepted.status_code == 200, accepted.text
    rows = await _throttle_rows(auth_settings, f"account:{email}", f"address:{address}")
    assert f"account:{email}" not in rows
    assert rows[f"address:{address}"] == limit  # the success itself is not counted

    # A fresh budget: `limit - 1` wrong guesses are checked and answered 401, not 429.
    for i in range(limit - 1):
        wrong = await _signin(replicas[i % 2][0], email, "guess-again", address)
        assert wrong.status_code == 401


async def test_parallel_guesses_across_accounts_from_one_address_are_bounded_too(
    replicas: list[tuple[httpx.AsyncClient, CountedPasswords]], auth_settings: AuthSettings
) -> None:
    address = "203.0.113.61"
    _reset(replicas)
    answers = await asyncio.gather(
        *(
            _signin(replicas[i % 2][0], unique_email(), "guess-guess", address)
            for i in range(GUESSES)
        )
    )
    limit = auth_settings.auth_signin_max_failures_per_address
    assert _verified(replicas) == limit
    assert sorted(r.status_code for r in answers) == [401] * limit + [429] * (GUESSES - limit)
