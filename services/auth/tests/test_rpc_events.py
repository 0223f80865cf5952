"""The auth service's NATS side: request-reply endpoints and the events it publishes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import orjson
import pytest
import pytest_asyncio
from auth_support import bearer, signup
from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from mosaic_kit.contracts import auth as auth_contracts
from mosaic_kit.contracts.auth import UserCreated, UserUpdated
from mosaic_kit.events import Event
from mosaic_kit.nats.rpc import RpcError, request


@pytest_asyncio.fixture(scope="module")
async def nc(nats_url: str, auth_app: Any) -> AsyncIterator[Client]:
    conn = await nats.connect(nats_url)
    yield conn
    await conn.drain()


async def test_users_get_returns_public_profiles(client: httpx.AsyncClient, nc: Client) -> None:
    a = (await signup(client, name="Alice A"))["user"]
    b = (await signup(client, name="Bob B"))["user"]
    data = await request(
        nc, "auth.users.get", {"ids": [a["id"], b["id"], str(uuid.uuid4())]}, timeout=2
    )
    profiles = {u["id"]: u for u in data["users"]}
    assert set(profiles) == {a["id"], b["id"]}
    assert profiles[a["id"]] == {"id": a["id"], "name": "Alice A", "profilePicUrl": None}


@pytest.mark.parametrize(
    "payload",
    [{}, {"ids": "x"}, {"ids": ["not-a-uuid"]}, {"ids": [str(uuid.uuid4()) for _ in range(101)]}],
)
async def test_users_get_rejects_bad_requests(nc: Client, payload: dict[str, Any]) -> None:
    with pytest.raises(RpcError) as info:
        await request(nc, "auth.users.get", payload, timeout=2)
    assert info.value.status == 422


async def test_apikeys_verify(client: httpx.AsyncClient, nc: Client, admin: dict[str, str]) -> None:
    created = (await client.post("/v1/api-keys", json={"name": "rpc"}, headers=admin)).json()
    data = await request(nc, "auth.apikeys.verify", {"key": created["key"]}, timeout=2)
    assert data == {"id": created["id"], "name": "rpc"}
    for bad in (created["key"] + "x", "mk_nope", "other"):
        with pytest.raises(RpcError) as info:
            await request(nc, "auth.apikeys.verify", {"key": bad}, timeout=2)
        assert info.value.status == 403
    await client.delete(f"/v1/api-keys/{created['id']}", headers=admin)
    with pytest.raises(RpcError):
        await request(nc, "auth.apikeys.verify", {"key": created["key"]}, timeout=2)


async def test_jwks_over_nats_matches_http(client: httpx.AsyncClient, nc: Client) -> None:
    over_nats = await request(nc, "auth.jwks.get", {}, timeout=2)
    over_http = (await client.get("/v1/auth/jwks.json")).json()
    assert over_nats == over_http


async def test_service_is_discoverable(nc: Client) -> None:
    reply = await nc.request("$SRV.INFO.auth", b"", timeout=2)
    info = orjson.loads(reply.data)
    subjects = {e["subject"] for e in info["endpoints"]}
    assert {"auth.users.get", "auth.apikeys.verify", "auth.jwks.get"} <= subjects
    # Each endpoint publishes its contract: the request's and the reply's JSON Schema.
    by_subject = {e["subject"]: e["metadata"] for e in info["endpoints"]}
    users = by_subject["auth.users.get"]
    request_schema = orjson.loads(users["request_schema"])
    assert request_schema["required"] == ["ids"]
    assert request_schema["properties"]["ids"]["maxItems"] == 100
    reply = orjson.loads(users["response_schema"])
    assert "profilePicUrl" in reply["$defs"]["PublicUser"]["properties"]
    verify = orjson.loads(by_subject["auth.apikeys.verify"]["response_schema"])
    assert set(verify["properties"]) == {"id", "name"}


async def _next_event(sub: Any, event_type: str, match: dict[str, Any]) -> dict[str, Any]:
    async def find() -> dict[str, Any]:
        while True:
            msg = await sub.next_msg(timeout=5)
            event: dict[str, Any] = orjson.loads(msg.data)
            if event["type"] == event_type and all(
                event["data"].get(k) == v for k, v in match.items()
            ):
                return event

    return await asyncio.wait_for(find(), timeout=10)


async def test_state_changes_are_published_as_events(
    client: httpx.AsyncClient, nc: Client, admin: dict[str, str]
) -> None:
    js = nc.jetstream()
    sub = await js.subscribe(
        "events.auth.>", ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
    )
    try:
        body = await signup(client, name="Evented")
        user_id = body["user"]["id"]
        created = await _next_event(sub, "auth.user.created", {"id": user_id})
        assert created["data"]["name"] == "Evented"
        assert "email" not in created["data"]
        assert {"id", "type", "occurredAt", "data"} <= set(created)
        # The payload is the shared contract's, field for field (what consumers read it with).
        profile = UserCreated.of(Event.from_dict(created))
        assert (str(profile.id), profile.name, profile.roles) == (user_id, "Evented", ["LEARNER"])
        assert set(created["data"]) == set(
            UserCreated.model_json_schema(by_alias=True)["properties"]
        )

        hdr = bearer(body["tokens"]["accessToken"])
        await client.patch("/v1/users/me", json={"name": "Renamed"}, headers=hdr)
        updated = await _next_event(sub, "auth.user.updated", {"id": user_id})
        assert updated["data"]["name"] == "Renamed"
        assert UserUpdated.of(Event.from_dict(updated)).name == "Renamed"

        assert (await client.post("/v1/auth/signout", headers=hdr)).status_code == 204
        revoked = await _next_event(sub, "auth.session.revoked", {"userId": user_id})
        assert revoked["data"]["reason"] == "signout"
        assert revoked["data"]["expiresAt"] > 0

        await client.put(f"/v1/users/{user_id}/roles", json={"roles": ["AUTHOR"]}, headers=admin)
        changed = await _next_event(sub, "auth.user.roles_changed", {"userId": user_id})
        assert changed["data"]["roles"] == ["AUTHOR"]
        assert changed["data"]["removedRoles"] == ["LEARNER"]
        assert changed["data"]["tokensValidAfter"] > 0

        await client.post(f"/v1/users/{user_id}/disable", headers=admin)
        await _next_event(sub, "auth.user.disabled", {"userId": user_id})

        key = (await client.post("/v1/api-keys", json={"name": "ev"}, headers=admin)).json()
        await client.delete(f"/v1/api-keys/{key['id']}", headers=admin)
        await _next_event(sub, "auth.apikey.revoked", {"id": key["id"]})
    finally:
        await sub.unsubscribe()


async def test_another_service_verifies_locally_and_sees_signout_within_a_second(
    client: httpx.AsyncClient, nc: Client
) -> None:
    """What every other service does: JWKS over NATS, revocations from the event stream."""
    from datetime import timedelta

    from mosaic_kit.jwks import JwksCache
    from mosaic_kit.nats.keys import NatsKeySource
    from mosaic_kit.nats.revocation import follow_revocations
    from mosaic_kit.problem import Problem
    from mosaic_kit.revocation import RevocationSet
    from mosaic_kit.tokens import TokenVerifier

    revocations = RevocationSet()
    jwks = JwksCache(NatsKeySource(nc))
    verifier = TokenVerifier(jwks, revocations=revocations)
    feed = await follow_revocations(nc.jetstream(), revocations, since=timedelta(minutes=20))
    try:
        body = await signup(client)
        token = body["tokens"]["accessToken"]
        principal = await verifier.verify(token)
        assert principal.user_id == body["user"]["id"]
        assert principal.roles == frozenset({"LEARNER"})
        await client.post("/v1/auth/signout", headers=bearer(token))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        rejected: Problem | None = None
        while rejected is None:
            try:
                await verifier.verify(token)
            except Problem as problem:
                rejected = problem
            else:
                assert loop.time() < deadline, "revocation did not arrive within 1 s"
                await asyncio.sleep(0.02)
        assert rejected.code == "auth.token_revoked"
    finally:
        await feed.stop()
        await jwks.aclose()


async def test_the_asyncapi_document_lists_every_event_and_endpoint(
    client: httpx.AsyncClient,
) -> None:
    contract = (await client.get("/asyncapi.json")).json()
    addresses = {channel["address"] for channel in contract["channels"].values()}
    assert {f"events.{event.TYPE}" for event in auth_contracts.AUTH_EVENTS} <= addresses
    assert {"auth.users.get", "auth.apikeys.verify", "auth.jwks.get"} <= addresses
