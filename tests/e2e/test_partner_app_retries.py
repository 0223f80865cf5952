"""The sample app's answers to 429 and 5xx, over real HTTP: a scripted server on a socket plays
the gateway (the running system cannot be made to rate-limit or fail on cue). The app's waits
go to a recorder instead of sleeping."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from partner_app.client import PartnerClient, RetryPolicy, UnavailableError

PAGE = {"items": [{"id": "b-1", "title": "One"}], "nextCursor": None}


class Script:
    """The answers to `GET /v1/blogs`, in order; the token endpoint always answers."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str], object]] = []
        self.blog_requests = 0


@pytest.fixture
def gateway() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, headers: dict[str, str], body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            for name, value in {"content-type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            token = {
                "access_token": "t",
                "token_type": "Bearer",
                "expires_in": 900,
                "scope": "blogs:read",
            }
            self._send(200, {"cache-control": "no-store"}, token)

        def do_GET(self) -> None:
            script.blog_requests += 1
            status, headers, body = script.answers.pop(0)
            self._send(status, headers, body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()


def client(url: str, waits: list[float]) -> PartnerClient:
    return PartnerClient.connect(
        url,
        client_id="c",
        client_secret="s",
        sleep=waits.append,
        retry=RetryPolicy(attempts=4, backoff=0.1, backoff_cap=0.5, max_retry_after=30),
    )


def test_a_429_is_retried_after_its_retry_after(gateway: tuple[str, Script]) -> None:
    url, script = gateway
    limited = (429, {"retry-after": "2"}, {"code": "gateway.rate_limited"})
    script.answers = [limited, limited, (200, {}, PAGE)]
    waits: list[float] = []
    with client(url, waits) as app:
        assert app.blogs()["items"][0]["id"] == "b-1"
    assert waits == [2.0, 2.0]
    assert script.blog_requests == 3


def test_a_429_asking_longer_than_the_app_waits_is_reported_not_waited(
    gateway: tuple[str, Script],
) -> None:
    url, script = gateway
    script.answers = [(429, {"retry-after": "120"}, {"code": "gateway.rate_limited"})]
    waits: list[float] = []
    with client(url, waits) as app, pytest.raises(UnavailableError, match="120 s"):
        app.blogs()
    assert waits == []
    assert script.blog_requests == 1


def test_a_5xx_is_retried_with_bounded_backoff_then_reported(gateway: tuple[str, Script]) -> None:
    url, script = gateway
    busy = (503, {}, {"code": "gateway.unavailable"})
    script.answers = [busy, (200, {}, PAGE)]
    waits: list[float] = []
    with client(url, waits) as app:
        assert app.blogs()["items"]
    assert len(waits) == 1
    assert 0 <= waits[0] <= 0.1
    # Every try failing: four tries in all, then a clear error, not an endless loop.
    script.answers = [busy] * 4
    script.blog_requests = 0
    waits.clear()
    with client(url, waits) as app, pytest.raises(UnavailableError) as failed:
        app.blogs()
    assert failed.value.status == 503
    assert "after 4 tries" in str(failed.value)
    assert script.blog_requests == 4
    assert len(waits) == 3
    assert all(0 <= wait <= 0.5 for wait in waits)
