"""The auth flows of API.md against the running system: clients through the gateway, in front of
two auth and two blog replicas."""

from __future__ import annotations

import re
import time
import uuid

import httpx
import jwt
import nats
import orjson
from e2e_support import (
    PASSWORD,
    System,
    admin_headers,
    assert_problem,
    bearer,
    eventually,
    request_id,
    signed_up,
    with_roles,
)

from mosaic_kit.nats.rpc import request


def test_status_reports_the_gateway_two_ready_replicas_and_the_seeded_secrets(
    system: System,
) -> None:
    status = system.status()
    assert status["running"] is True
    gateway = status["gateway"]
    assert gateway["ready"] is True
    assert gateway["workers"] == 2
    assert gateway["admin_url"].startswith("http://127.0.0.1:")
    # `mosaic up` tells clients to call the gateway, with the demo key.
    assert f"Call the gateway: {gateway['url']}" in system.up_output
    assert f"x-api-key: {status['credentials']['apiKey']['key']}" in system.up_output
    for service in ("auth", "blog"):
        instances = [i for i in status["instances"] if i["service"] == service]
        assert len(instances) == 2
        assert all(i["ready"] for i in instances)
    assert status["credentials"]["admin"]["email"] == "admin@mosaic.local"
    assert status["credentials"]["apiKey"]["key"].startswith("mk_")
    # The gateway found both replicas of each service (NATS discovery), in every worker.
    with httpx.Client(timeout=5, trust_env=False) as http:
        for _ in range(6):
            view = http.get(
                f"{gateway['admin_url']}/admin/backends", headers={"connection": "close"}
            ).json()
            for service in ("auth", "blog"):
                urls = {i["url"] for i in view["backends"][service]["instances"]}
                assert urls == set(system.urls(service)), (service, view["worker"])


def test_signup_signin_me_refresh_through_the_gateway_across_replicas(system: System) -> None:
    with system.client() as http:
        user = signed_up(http, "End Toend")
        signin = http.post("/v1/auth/signin", json={"email": user["email"], "password": PASSWORD})
        assert signin.status_code == 200, signin.text
        tokens = signin.json()["tokens"]
        ids = [request_id() for _ in range(8)]
        for rid in ids:
            me = http.get(
                "/v1/users/me", headers={**bearer(tokens["accessToken"]), "x-request-id": rid}
            )
            assert me.status_code == 200, me.text
            assert me.json()["email"] == user["email"]
            assert me.headers["x-request-id"] == rid
        # The gateway spreads them over both auth replicas; a token minted by one is honoured
        # by the other.
        logs = {
            name: (system.data / "logs" / f"{name}.log").read_text()
            for name in ("auth-1", "auth-2")
        }
        for name, text in logs.items():
            assert any(rid in text for rid in ids), f"{name} served none of them"

        refreshed = http.post("/v1/auth/refresh", json={"refreshToken": tokens["refreshToken"]})
        assert refreshed.status_code == 200
        new = refreshed.json()["tokens"]
        assert http.get("/v1/users/me", headers=bearer(new["accessToken"])).status_code == 200
        # The old refresh token is spent; reusing it is refused and revokes the session.
        reused = http.post("/v1/auth/refresh", json={"refreshToken": tokens["refreshToken"]})
        assert_problem(reused, 401)


def test_sign_out_revokes_the_token_at_the_gateway_within_a_second(system: System) -> None:
    with system.client() as http:
        user = signed_up(http, "Short Lived")
        token = user["tokens"]["accessToken"]
        # Verified once by the gateway, so the gateway holds it as good (cached).
        control = request_id()
        me = http.get("/v1/users/me", headers={**bearer(token), "x-request-id": control})
        assert me.status_code == 200
        out = http.post("/v1/auth/signout", headers=bearer(token))
        assert out.status_code == 204
        signed_out = time.monotonic()
        # The services refuse the token at once themselves; the gateway must learn of the
        # revocation (auth.session.revoked) within a second and refuse it without asking them.
        tries: list[tuple[str, float]] = []
        while time.monotonic() - signed_out < 1.5:
            rid = request_id()
            sent = time.monotonic() - signed_out
            answer = http.get("/v1/users/me", headers={**bearer(token), "x-request-id": rid})
            assert_problem(answer, 401, "auth.token_revoked")
            tries.append((rid, sent))
            time.sleep(0.05)
        reached = system.reached_services([control, *(rid for rid, _ in tries)])
        assert control in reached  # what reached a service is seen as such
        first_refused_at_gateway = next(sent for rid, sent in tries if rid not in reached)
        assert first_refused_at_gateway <= 1.0, tries
        later = [rid for rid, sent in tries if sent > first_refused_at_gateway]
        assert not reached & set(later), "a revoked token got past the gateway again"
        # The refresh token of the session is dead too.
        again = http.post("/v1/auth/refresh", json={"refreshToken": user["tokens"]["refreshToken"]})
        assert_problem(again, 401)


def test_admin_grants_author_and_the_gateway_enforces_roles(system: System) -> None:
    with system.client() as http:
        author = with_roles(http, system, "Would Be Author", "AUTHOR")
        claims = jwt.decode(author["tokens"]["accessToken"], options={"verify_signature": False})
        assert set(claims["roles"]) == {"LEARNER", "AUTHOR"}
        # A role the token lacks: refused by the gateway, the service never sees it.
        rid = request_id()
        refused = http.get("/v1/users", headers={**author["headers"], "x-request-id": rid})
        assert_problem(refused, 403)
        assert system.reached_services([rid]) == set()
        # The admin holds it.
        listed = http.get(
            "/v1/users", params={"q": author["email"]}, headers=admin_headers(http, system)
        )
        assert listed.status_code == 200, listed.text
        assert [u["id"] for u in listed.json()["items"]] == [author["id"]]


def test_api_key_revocation_reaches_the_gateway_within_a_second(system: System) -> None:
    with system.client() as http:
        admin = admin_headers(http, system)
        idem = {"Idempotency-Key": uuid.uuid4().hex}
        body = {"name": f"e2e-{uuid.uuid4().hex[:8]}", "comment": "revoked by the e2e tests"}
        created = http.post("/v1/api-keys", json=body, headers={**admin, **idem})
        assert created.status_code == 201, created.text
        key = created.json()
        assert re.fullmatch(r"mk_\S+", key["key"])
        # A repeat with the same Idempotency-Key creates nothing new (the gateway forwards
        # the header and the caller's identity).
        again = http.post("/v1/api-keys", json=body, headers={**admin, **idem})
        assert again.status_code == 201
        assert again.json()["id"] == key["id"]
        listed = http.get("/v1/api-keys", params={"limit": 100}, headers=admin)
        assert listed.status_code == 200, listed.text
        (mine,) = [k for k in listed.json()["items"] if k["id"] == key["id"]]
        assert mine["name"] == body["name"]
        assert "key" not in mine  # shown once, at creation

    with system.client(api_key=key["key"]) as client:
        assert client.get("/v1/blogs").status_code == 200
        with system.client() as http:
            deleted = http.delete(f"/v1/api-keys/{key['id']}", headers=admin)
            assert deleted.status_code == 204
        revoked = time.monotonic()
        answers: list[tuple[float, int]] = []
        while time.monotonic() - revoked < 1.5:
            sent = time.monotonic() - revoked
            answers.append((sent, client.get("/v1/blogs").status_code))
            time.sleep(0.05)
        first_refused = next((sent for sent, status in answers if status == 403), None)
        assert first_refused is not None, answers
        assert first_refused <= 1.0, answers
        assert all(status == 403 for sent, status in answers if sent >= first_refused), answers
        assert_problem(client.get("/v1/blogs"), 403, "auth.apikey_invalid")


def test_the_gateway_documents_the_api_and_counts_what_it_serves(system: System) -> None:
    with system.client(api_key=None) as anonymous:
        # Both services' documents, merged at /docs: readable without an API key.
        merged = eventually(
            lambda: anonymous.get("/docs/openapi.json"),
            lambda r: r.status_code == 200 and "/v1/blogs" in r.json().get("paths", {}),
            10.0,
        )
        assert merged.status_code == 200, merged.text
        paths = merged.json()["paths"]
        assert {"/v1/auth/signup", "/v1/users/me", "/v1/blogs", "/v1/author/blogs"} <= set(paths)
        assert "/healthz" not in paths  # not routed through the gateway
        assert anonymous.get("/docs").status_code == 200
    with system.client() as http:
        assert http.get("/v1/blogs").status_code == 200
    admin = system.started["gateway"]["admin_url"]
    # Each worker hands its counts over to the scrape now and then, not per request.
    metrics = eventually(
        lambda: httpx.get(f"{admin}/metrics", timeout=5, trust_env=False),
        lambda r: 'route="/v1/blogs"' in r.text,
        10.0,
    )
    assert metrics.status_code == 200
    assert 'route="/v1/blogs"' in metrics.text  # per route template


async def test_internal_endpoints_answer_over_nats(system: System) -> None:
    status = system.status()
    # NATS of `mosaic up` has authorization: the devstack's own (unrestricted) user.
    password = (system.data / "secrets" / "NATS_PASSWORD_MOSAIC").read_text().strip()
    nc = await nats.connect(status["nats"]["url"], user="mosaic", password=password)
    try:
        key = status["credentials"]["apiKey"]
        verified = await request(nc, "auth.apikeys.verify", {"key": key["key"]}, timeout=2)
        assert verified == {"id": key["id"], "name": "demo"}
        reply = await nc.request("$SRV.PING.auth", b"", timeout=2)
        assert orjson.loads(reply.data)["name"] == "auth"
    finally:
        await nc.close()


def test_every_instance_is_observable(system: System) -> None:
    # The operator's view: each instance directly, behind the gateway's back.
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
