"""Revocation (RFC 7009), introspection (RFC 7662), the events that carry both to every
verifier, and the server's metadata (RFC 8414)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import nats
import orjson
import pytest
import pytest_asyncio
from auth_support import address, client_token, register_client, signup
from nats.aio.client import Client as Nats
from nats.js.api import DeliverPolicy

from mosaic_auth.settings import AuthSettings
from mosaic_kit.contracts.auth import ClientDisabled, ClientTokenRevoked
from mosaic_kit.events import Event

REVOKE = "/v1/oauth/revoke"
INTROSPECT = "/v1/oauth/introspect"


@pytest_asyncio.fixture(scope="module")
async def nc(nats_url: str, auth_app: Any) -> AsyncIterator[Nats]:
    conn = await nats.connect(nats_url)
    yield conn
    await conn.drain()


@pytest_asyncio.fixture
async def events(nc: Nats) -> AsyncIterator[Any]:
    """auth's client events published from now on."""
    sub = await nc.jetstream().subscribe(
        "events.auth.client.>", ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
    )
    yield sub
    await sub.unsubscribe()


async def next_event(sub: Any, event_type: str, match: dict[str, Any]) -> dict[str, Any]:
    async def find() -> dict[str, Any]:
        while True:
            msg = await sub.next_msg(timeout=5)
            event: dict[str, Any] = orjson.loads(msg.data)
            if event["type"] == event_type and all(
                event["data"].get(k) == v for k, v in match.items()
            ):
                return event

    return await asyncio.wait_for(find(), timeout=10)


async def no_event(sub: Any, event_type: str, match: dict[str, Any]) -> None:
    with pytest.raises((TimeoutError, nats.errors.TimeoutError)):
        await asyncio.wait_for(next_event(sub, event_type, match), timeout=1.5)


async def oauth(
    client: httpx.AsyncClient, path: str, app: dict[str, Any] | None, **form: str
) -> httpx.Response:
    auth = (app["clientId"], app["clientSecret"]) if app else None
    return await client.post(path, data=form, auth=auth, headers={"X-Forwarded-For": address()})


async def token_of(client: httpx.AsyncClient, app: dict[str, Any]) -> str:
    response = await client_token(client, app["clientId"], app["clientSecret"])
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def test_introspection_refuses_an_unauthenticated_caller(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    app = await register_client(client, admin)
    token = await token_of(client, app)
    for auth in (None, (app["clientId"], "mcs_wrong")):
        response = await client.post(
            INTROSPECT, data={"token": token}, auth=auth, headers={"X-Forwarded-For": address()}
        )
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"
        assert response.headers["www-authenticate"] == 'Basic realm="mosaic"'
        assert "active" not in response.json()
    # Revocation too.
    assert (await oauth(client, REVOKE, None, token=token)).status_code == 401
    missing = await oauth(client, INTROSPECT, app)
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_request"


async def test_introspection_of_a_live_token(
    client: httpx.AsyncClient, admin: dict[str, str], auth_settings: AuthSettings
) -> None:
    app = await register_client(
        client, admin, scopes=["blogs:read", "recommendations:read"], audience=["partner-api"]
    )
    token = await token_of(client, app)
    claims = jwt.decode(token, options={"verify_signature": False})
    response = await oauth(client, INTROSPECT, app, token=token, token_type_hint="access_token")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "active": True,
        "client_id": app["clientId"],
        "scope": "blogs:read recommendations:read",
        "exp": claims["exp"],
        "iat": claims["iat"],
        "jti": claims["jti"],
        "iss": auth_settings.auth_issuer,
        "aud": ["mosaic", "partner-api"],
        "token_type": "Bearer",
    }


async def test_introspection_says_inactive_and_nothing_more(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    app = await register_client(client, admin)
    other = await register_client(client, admin)
    user_token = (await signup(client))["tokens"]["accessToken"]
    mine = await token_of(client, app)
    forged = mine[:-4] + ("AAAA" if not mine.endswith("AAAA") else "BBBB")
    inactive = {
        "garbage": "not-a-token",
        "forged signature": forged,
        "a user's token": user_token,
        "another client's token": await token_of(client, other),
    }
    for label, token in inactive.items():
        response = await oauth(client, INTROSPECT, app, token=token)
        assert response.status_code == 200, label
        assert response.json() == {"active": False}, label


async def test_an_expired_token_is_inactive(
    client: httpx.AsyncClient, admin: dict[str, str], auth_settings: AuthSettings, events: Any
) -> None:
    from mosaic_auth.api import SERVICE

    svc = SERVICE.of(client._transport.app)  # type: ignore[attr-defined]
    app = await register_client(client, admin)
    # Minted by the real signer, as if 20 minutes ago (a token cannot be made to age faster).
    key = await svc.signer.key()
    now = int(time.time())
    claims = {
        "iss": auth_settings.auth_issuer,
        "aud": ["mosaic"],
        "client_id": app["clientId"],
        "scope": "blogs:read",
        "jti": str(uuid.uuid4()),
        "iat": now - 1200,
        "exp": now - 300,
    }
    old = jwt.encode(
        claims, key.private_key, algorithm="EdDSA", headers={"kid": key.kid, "typ": "at+jwt"}
    )
    assert (await oauth(client, INTROSPECT, app, token=old)).json() == {"active": False}
    # Revoking it is no error either, and announces nothing.
    assert (await oauth(client, REVOKE, app, token=old)).status_code == 200
    await no_event(events, "auth.client.token_revoked", {"jti": claims["jti"]})


async def test_revocation(client: httpx.AsyncClient, admin: dict[str, str], events: Any) -> None:
    app = await register_client(client, admin)
    other = await register_client(client, admin)
    token = await token_of(client, app)
    others_token = await token_of(client, other)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]

    # Unknown tokens: 200, nothing changes.
    for junk in ("not-a-token", str(uuid.uuid4())):
        response = await oauth(client, REVOKE, app, token=junk)
        assert response.status_code == 200
        assert response.content == b""
    # Another client's token is not revoked (and the answer says nothing about it).
    assert (await oauth(client, REVOKE, app, token=others_token)).status_code == 200
    assert (await oauth(client, INTROSPECT, other, token=others_token)).json()["active"] is True

    assert (await oauth(client, REVOKE, app, token=token)).status_code == 200
    revoked = await next_event(events, "auth.client.token_revoked", {"jti": jti})
    assert revoked["data"] == {"jti": jti, "expiresAt": exp}
    assert ClientTokenRevoked.of(Event.from_dict(revoked)).expires_at == exp
    assert (await oauth(client, INTROSPECT, app, token=token)).json() == {"active": False}
    # Revoking it again is fine and announces nothing more.
    assert (await oauth(client, REVOKE, app, token=token)).status_code == 200
    await no_event(events, "auth.client.token_revoked", {"jti": jti})
    # The client's other tokens are untouched.
    fresh = await token_of(client, app)
    assert (await oauth(client, INTROSPECT, app, token=fresh)).json()["active"] is True


async def test_disabling_publishes_the_cut_off_and_enabling_keeps_it(
    client: httpx.AsyncClient, admin: dict[str, str], events: Any
) -> None:
    app = await register_client(client, admin)
    cid = app["clientId"]
    before = await token_of(client, app)
    started = int(time.time())
    assert (await client.post(f"/v1/clients/{cid}/disable", headers=admin)).status_code == 204
    disabled = await next_event(events, "auth.client.disabled", {"clientId": cid})
    payload = ClientDisabled.of(Event.from_dict(disabled))
    assert set(disabled["data"]) == {"clientId", "tokensValidAfter"}
    iat = jwt.decode(before, options={"verify_signature": False})["iat"]
    assert payload.tokens_valid_after > iat
    assert started <= payload.tokens_valid_after <= int(time.time()) + 1
    # Disabling again announces nothing.
    await client.post(f"/v1/clients/{cid}/disable", headers=admin)
    await no_event(events, "auth.client.disabled", {"clientId": cid})

    assert (await client.post(f"/v1/clients/{cid}/enable", headers=admin)).status_code == 204
    await next_event(events, "auth.client.enabled", {"clientId": cid})
    # The old token stays dead; a new one (issued at or after the cut-off) is live.
    assert (await oauth(client, INTROSPECT, app, token=before)).json() == {"active": False}
    after = await token_of(client, app)
    claims = jwt.decode(after, options={"verify_signature": False})
    assert claims["iat"] >= payload.tokens_valid_after
    assert (await oauth(client, INTROSPECT, app, token=after)).json()["active"] is True

    # Deleting publishes a cut-off too.
    assert (await client.delete(f"/v1/clients/{cid}", headers=admin)).status_code == 204
    deleted = await next_event(events, "auth.client.disabled", {"clientId": cid})
    assert deleted["data"]["tokensValidAfter"] > claims["iat"]


async def test_registration_is_announced_without_the_secret(
    client: httpx.AsyncClient, admin: dict[str, str], events: Any
) -> None:
    app = await register_client(client, admin, scopes=["recommendations:read"])
    created = await next_event(events, "auth.client.created", {"clientId": app["clientId"]})
    assert created["data"] == {
        "clientId": app["clientId"],
        "name": app["name"],
        "scopes": ["recommendations:read"],
    }
    assert app["clientSecret"] not in orjson.dumps(created).decode()


async def test_the_metadata_document(
    client: httpx.AsyncClient, auth_settings: AuthSettings
) -> None:
    response = await client.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    meta = response.json()
    base = auth_settings.auth_public_url
    assert meta == {
        "issuer": auth_settings.auth_issuer,
        "token_endpoint": f"{base}/v1/oauth/token",
        "revocation_endpoint": f"{base}/v1/oauth/revoke",
        "introspection_endpoint": f"{base}/v1/oauth/introspect",
        "jwks_uri": f"{base}/v1/auth/jwks.json",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
        ],
        "scopes_supported": ["blogs:read", "recommendations:read"],
        "response_types_supported": [],
        "service_documentation": f"{base}/docs",
    }
    # The endpoints it names are the ones served (relative to the public base).
    jwks = await client.get(meta["jwks_uri"].removeprefix(base))
    assert jwks.status_code == 200
    assert jwks.json()["keys"]
