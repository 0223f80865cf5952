"""The scripted auth flow of the foundation issue, against the running system (2 replicas)."""

from __future__ import annotations

import uuid

import httpx
import jwt
import nats
import orjson
from e2e_support import System

from mosaic_kit.rpc import request

PASSWORD = "correct-horse-9"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_status_reports_two_ready_replicas_and_the_seeded_secrets(system: System) -> None:
    status = system.status()
    assert status["running"] is True
    auth = [i for i in status["instances"] if i["service"] == "auth"]
    assert len(auth) == 2
    assert all(i["ready"] for i in auth)
    assert status["credentials"]["admin"]["email"] == "admin@mosaic.local"
    assert status["credentials"]["apiKey"]["key"].startswith("mk_")


def test_signup_signin_me_refresh_signout_across_replicas(system: System) -> None:
    one, two = system.urls("auth")
    email = f"e2e-{uuid.uuid4().hex[:8]}@example.com"
    with httpx.Client(timeout=10) as http:
        signup = http.post(
            f"{one}/v1/auth/signup",
            json={"email": email, "password": PASSWORD, "name": "End Toend"},
        )
        assert signup.status_code == 201, signup.text
        signin = http.post(f"{two}/v1/auth/signin", json={"email": email, "password": PASSWORD})
        assert signin.status_code == 200
        tokens = signin.json()["tokens"]
        # A token minted by one replica is honoured by the other.
        me = http.get(f"{one}/v1/users/me", headers=bearer(tokens["accessToken"]))
        assert me.status_code == 200
        assert me.json()["email"] == email

        refreshed = http.post(
            f"{two}/v1/auth/refresh", json={"refreshToken": tokens["refreshToken"]}
        )
        assert refreshed.status_code == 200
        new = refreshed.json()["tokens"]
        assert http.get(f"{one}/v1/users/me", headers=bearer(new["accessToken"])).status_code == 200

        out = http.post(f"{one}/v1/auth/signout", headers=bearer(new["accessToken"]))
        assert out.status_code == 204
        # Rejected at once, on both replicas.
        for url in (one, two):
            rejected = http.get(f"{url}/v1/users/me", headers=bearer(new["accessToken"]))
            assert rejected.status_code == 401
            assert rejected.json()["code"] == "auth.token_revoked"


def test_admin_grants_author_and_the_next_token_carries_it(system: System) -> None:
    one, two = system.urls("auth")
    admin = system.status()["credentials"]["admin"]
    with httpx.Client(timeout=10) as http:
        signin = http.post(f"{one}/v1/auth/signin", json=admin)
        assert signin.status_code == 200, signin.text
        admin_hdr = bearer(signin.json()["tokens"]["accessToken"])
        user = http.post(
            f"{two}/v1/auth/signup",
            json={
                "email": f"author-{uuid.uuid4().hex[:8]}@example.com",
                "password": PASSWORD,
                "name": "Would Be Author",
            },
        ).json()
        granted = http.put(
            f"{two}/v1/users/{user['user']['id']}/roles",
            json={"roles": ["LEARNER", "AUTHOR"]},
            headers=admin_hdr,
        )
        assert granted.status_code == 200, granted.text
        refreshed = http.post(
            f"{one}/v1/auth/refresh", json={"refreshToken": user["tokens"]["refreshToken"]}
        )
        claims = jwt.decode(
            refreshed.json()["tokens"]["accessToken"], options={"verify_signature": False}
        )
        assert set(claims["roles"]) == {"LEARNER", "AUTHOR"}
        learner_only = http.get(f"{one}/v1/users", headers=bearer(user["tokens"]["accessToken"]))
        assert learner_only.status_code == 403


async def test_internal_endpoints_answer_over_nats(system: System) -> None:
    status = system.status()
    nc = await nats.connect(status["nats"]["url"])
    try:
        key = status["credentials"]["apiKey"]
        verified = await request(nc, "auth.apikeys.verify", {"key": key["key"]}, timeout=2)
        assert verified == {"id": key["id"], "name": "demo"}
        reply = await nc.request("$SRV.PING.auth", b"", timeout=2)
        assert orjson.loads(reply.data)["name"] == "auth"
    finally:
        await nc.close()


def test_every_instance_is_observable(system: System) -> None:
    with httpx.Client(timeout=10) as http:
        for url in system.urls("auth"):
            health = http.get(f"{url}/healthz").json()
            assert health["status"] == "ok"
            assert health["service"] == "auth"
            ready = http.get(f"{url}/readyz")
            assert ready.status_code == 200
            assert set(ready.json()["checks"]) == {"db", "nats"}
            user_id = uuid.uuid4()
            assert http.get(f"{url}/v1/users/{user_id}").status_code == 404
            metrics = http.get(f"{url}/metrics").text
            # Labelled by route template, never by the raw path.
            assert 'route="/v1/users/{user_id}",status="404"' in metrics
            assert str(user_id) not in metrics
            request_id = http.get(f"{url}/healthz", headers={"x-request-id": "e2e-req-1"})
            assert request_id.headers["x-request-id"] == "e2e-req-1"
