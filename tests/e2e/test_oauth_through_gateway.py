"""The OAuth endpoints as a client application meets them: through the gateway, without an API
key, with its client credentials (HTTP Basic or the form)."""

from __future__ import annotations

import httpx
from e2e_support import System, admin_headers


def test_a_client_application_gets_inspects_and_revokes_a_token_through_the_gateway(
    system: System,
) -> None:
    with system.client() as http:
        created = http.post(
            "/v1/clients",
            json={"name": "e2e partner", "scopes": ["blogs:read", "recommendations:read"]},
            headers=admin_headers(http, system),
        )
        assert created.status_code == 201, created.text
    client_id, secret = created.json()["clientId"], created.json()["clientSecret"]

    with system.client(api_key=None) as app:
        meta = app.get("/.well-known/oauth-authorization-server")
        assert meta.status_code == 200, meta.text
        # The endpoints it names are the gateway's, as `mosaic up` tells auth.
        assert meta.json()["token_endpoint"] == f"{system.gateway}/v1/oauth/token"

        basic = app.post(
            "/v1/oauth/token",
            data={"grant_type": "client_credentials", "scope": "blogs:read"},
            auth=(client_id, secret),
        )
        assert basic.status_code == 200, basic.text
        assert basic.headers["cache-control"] == "no-store"
        assert basic.json()["scope"] == "blogs:read"
        posted = app.post(
            "/v1/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
        assert posted.status_code == 200, posted.text
        token = posted.json()["access_token"]

        wrong = app.post(
            "/v1/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, "x")
        )
        assert wrong.status_code == 401
        assert wrong.json()["error"] == "invalid_client"
        assert wrong.headers["www-authenticate"] == 'Basic realm="mosaic"'

        def introspect() -> httpx.Response:
            return app.post("/v1/oauth/introspect", data={"token": token}, auth=(client_id, secret))

        assert introspect().json()["active"] is True
        assert app.post("/v1/oauth/introspect", data={"token": token}).status_code == 401
        revoked = app.post("/v1/oauth/revoke", data={"token": token}, auth=(client_id, secret))
        assert revoked.status_code == 200
        assert introspect().json() == {"active": False}
