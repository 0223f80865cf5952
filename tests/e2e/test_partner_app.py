"""The sample third-party application (examples/partner_app) against the running system, through
the gateway: its own token, scoped reads, renewal, a disabled client and a secret rotation."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import System, admin_headers
from partner_app import (
    PartnerClient,
    ScopeMissingError,
    TokenRequestError,
)
from partner_app.client import SCOPE_BLOGS, SCOPE_RECOMMENDATIONS, MosaicError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BOTH = [SCOPE_BLOGS, SCOPE_RECOMMENDATIONS]
# Events travel blog outbox -> JetStream -> reco's consumer: a few hundred milliseconds.
PROPAGATION = 10.0


def _register(system: System, scopes: list[str]) -> dict[str, Any]:
    """A new client application, registered by the admin: `{clientId, clientSecret, ...}`."""
    with system.client() as http:
        created = http.post(
            "/v1/clients",
            json={"name": f"partner {uuid.uuid4().hex[:6]}", "scopes": scopes},
            headers=admin_headers(http, system),
        )
    assert created.status_code == 201, created.text
    client: dict[str, Any] = created.json()
    return client


def _admin(system: System, method: str, path: str) -> httpx.Response:
    with system.client() as http:
        return http.request(method, path, headers=admin_headers(http, system))


def _publish(system: System, tag: str, title: str) -> str:
    """A published blog with this tag; the seeded admin holds every role, AUTHOR and EDITOR too."""
    with system.client() as http:
        admin = admin_headers(http, system)
        draft = {
            "title": title,
            "description": "Read by a partner application",
            "draftText": "Words.",
            "slug": f"partner-{uuid.uuid4().hex[:10]}",
            "imgUrl": "https://img.example.com/partner.png",
            "tags": [tag],
        }
        created = http.post("/v1/author/blogs", json=draft, headers=admin)
        assert created.status_code == 201, created.text
        blog_id: str = created.json()["id"]
        assert http.post(f"/v1/author/blogs/{blog_id}/submit", headers=admin).status_code == 200
        published = http.post(f"/v1/editor/blogs/{blog_id}/publish", headers=admin)
        assert published.status_code == 200, published.text
    return blog_id


class FakeClock:
    """The app's clock, moved by the test: renewal is tested without waiting 15 minutes."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def connect(system: System) -> Iterator[Any]:
    opened: list[PartnerClient] = []

    def connect(client: dict[str, Any], secret: str | None = None, **kw: Any) -> PartnerClient:
        app = PartnerClient.connect(
            system.gateway,
            client_id=client["clientId"],
            client_secret=secret or client["clientSecret"],
            **kw,
        )
        opened.append(app)
        return app

    yield connect
    for app in opened:
        app.close()


def _cli(
    system: System, client: dict[str, Any], tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """`python -m partner_app ARGS` as its README says: the secret in a file, the rest in env."""
    secret = tmp_path / f"{client['clientId']}.secret"
    secret.write_text(client["clientSecret"] + "\n")
    secret.chmod(0o600)
    env = {
        **system.env,
        "PYTHONPATH": str(EXAMPLES),
        "MOSAIC_GATEWAY_URL": system.gateway,
        "MOSAIC_CLIENT_ID": client["clientId"],
        "MOSAIC_CLIENT_SECRET_FILE": str(secret),
    }
    env.pop("MOSAIC_CLIENT_SECRET", None)
    return subprocess.run(
        [sys.executable, "-m", "partner_app", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_partner_app_reads_blogs_and_recommendations_with_its_own_token(
    system: System, connect: Any, tmp_path: Path
) -> None:
    client = _register(system, BOTH)
    tag = f"p{uuid.uuid4().hex[:8]}"
    first = _publish(system, tag, "Partners read this first")
    second = _publish(system, tag, "Partners read this second")

    app = connect(client)
    page = app.blogs(tag=tag, limit=10)
    assert [b["id"] for b in page["items"]] == [second, first]  # newest first
    assert app.tokens.current().scopes == set(BOTH)
    assert isinstance(app.trending(limit=5), list)
    # "Readers also liked" answers once reco has consumed the publish event (404 before).
    deadline = time.monotonic() + PROPAGATION
    while True:
        try:
            assert isinstance(app.also_liked(first), list)
            break
        except MosaicError as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert app.tokens.issued == 1  # one token served every call

    # The command line, following the cursor one blog per page to the end.
    done = _cli(system, client, tmp_path, "--json", "blogs", "--tag", tag, "--limit", "1", "--all")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [b["id"] for b in listed["blogs"]] == [second, first]
    assert listed["pages"] >= 2
    assert listed["nextCursor"] is None
    summary = _cli(system, client, tmp_path)
    assert summary.returncode == 0, summary.stderr
    assert "Published blogs:" in summary.stdout
    assert "Trending (7 days):" in summary.stdout
    assert client["clientSecret"] not in summary.stdout + summary.stderr


def test_a_client_without_the_recommendations_scope_is_told_which_scope_it_lacks(
    system: System, connect: Any, tmp_path: Path
) -> None:
    client = _register(system, [SCOPE_BLOGS])
    app = connect(client)
    assert "items" in app.blogs(limit=1)
    with pytest.raises(ScopeMissingError) as refused:
        app.trending()
    assert refused.value.needed == SCOPE_RECOMMENDATIONS
    assert refused.value.granted == {SCOPE_BLOGS}
    assert app.tokens.issued == 1  # a 403 is not a reason to get another token

    done = _cli(system, client, tmp_path, "trending")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "needs the scope 'recommendations:read'" in done.stderr
    assert "its token's scopes: blogs:read" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_token_is_renewed_before_it_expires_and_once_after_a_401(
    system: System, connect: Any
) -> None:
    clock = FakeClock()
    client = _register(system, BOTH)
    app = connect(client, clock=clock)
    app.blogs(limit=1)
    token = app.tokens.current()
    assert app.tokens.issued == 1
    # Cached until shortly before it expires (RENEW_BEFORE, 60 s, before a 900 s lifetime) ...
    clock.now = token.renew_at - 1
    app.blogs(limit=1)
    assert app.tokens.issued == 1
    assert token.expires_at - token.renew_at == 60
    # ... then replaced before the gateway could call it expired.
    clock.now = token.renew_at
    app.blogs(limit=1)
    assert app.tokens.issued == 2
    renewed = app.tokens.current()
    assert renewed.value != token.value

    # The token revoked behind the app's back (RFC 7009): the gateway answers 401
    # auth.token_revoked once the event reached it, and the app gets one new token and carries on.
    with system.client(api_key=None) as anonymous:
        revoked = anonymous.post(
            "/v1/oauth/revoke",
            data={"token": renewed.value},
            auth=(client["clientId"], client["clientSecret"]),
        )
    assert revoked.status_code == 200, revoked.text
    deadline = time.monotonic() + 3
    while app.tokens.issued == 2 and time.monotonic() < deadline:
        app.blogs(limit=1)  # never raises: the 401 is absorbed by one renewal
        time.sleep(0.05)
    assert app.tokens.issued == 3
    app.blogs(limit=1)
    assert app.tokens.issued == 3


def test_a_disabled_client_is_cut_off_within_a_second_with_a_clear_message(
    system: System, connect: Any, tmp_path: Path
) -> None:
    client = _register(system, BOTH)
    app = connect(client)
    app.blogs(limit=1)
    disabled = _admin(system, "POST", f"/v1/clients/{client['clientId']}/disable")
    assert disabled.status_code == 204, disabled.text
    since = time.monotonic()
    error: TokenRequestError | None = None
    while time.monotonic() - since < 3:
        try:
            app.blogs(limit=1)
        except TokenRequestError as exc:
            error = exc
            break
        time.sleep(0.02)
    elapsed = time.monotonic() - since
    assert error is not None, "the disabled client's token still worked after 3 s"
    # The gateway refused the cached token (auth.client.disabled applied) and the token endpoint
    # refused a new one: both in the one message.
    assert elapsed < 1.5, f"the gateway applied the disable after {elapsed:.2f} s"
    assert error.error == "invalid_client"
    assert "auth.token_revoked" in str(error)
    assert "disabled" in str(error)
    assert app.tokens.issued == 1  # one attempt at a new token, no loop

    done = _cli(system, client, tmp_path, "blogs")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "invalid_client" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_secret_rotation_keeps_the_app_working_and_retires_the_old_secret(
    system: System, connect: Any
) -> None:
    client = _register(system, BOTH)
    old_app = connect(client)
    old_app.blogs(limit=1)
    added = _admin(system, "POST", f"/v1/clients/{client['clientId']}/secrets")
    assert added.status_code == 201, added.text
    new_secret, new_id = added.json()["clientSecret"], added.json()["id"]
    # While both exist, either gets a token.
    assert "items" in connect(client).blogs(limit=1)
    assert "items" in connect(client, new_secret).blogs(limit=1)

    listed = _admin(system, "GET", f"/v1/clients/{client['clientId']}").json()["secrets"]
    (old_id,) = [s["id"] for s in listed if s["id"] != new_id]
    deleted = _admin(system, "DELETE", f"/v1/clients/{client['clientId']}/secrets/{old_id}")
    assert deleted.status_code == 204, deleted.text

    with pytest.raises(TokenRequestError) as refused:
        connect(client).blogs(limit=1)
    assert refused.value.error == "invalid_client"
    assert refused.value.status == 401
    assert "secret removed by a rotation" in str(refused.value)
    assert "items" in connect(client, new_secret).blogs(limit=1)
    # A token issued with the old secret lives on until it expires (docs/api.md).
    assert "items" in old_app.blogs(limit=1)
    assert old_app.tokens.issued == 1
