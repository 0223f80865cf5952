"""What reaches a service through the gateway `mosaic up` configured.

The services do not echo what they receive, so this test runs a second gateway from the very
configuration file `mosaic up` wrote, with one change: its backends are a recording server. API
keys and tokens are still checked against the running system (same NATS, real auth service), so
every route behaves as in the stack; the recorder shows which headers and query parameters the
allow-lists let through, and that identity headers a client sends never get through.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
import yaml
from e2e_support import System, admin_headers, request_id, with_roles

from mosaic_devstack.embedded import free_port


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, list[str]]


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: dict[str, Seen] = {}  # by x-request-id

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        parts = urlsplit(self.path)
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        rid = self.headers.get("x-request-id")
        if rid:
            self.server.seen[rid] = Seen(self.command, parts.path, parse_qs(parts.query), headers)
        body = json.dumps({"keys": []} if parts.path.endswith("jwks.json") else {}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # The method names http.server dispatches to.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def mirror(
    system: System, recorder: Recorder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A gateway with the stack's configuration, in front of the recorder; its URL."""
    folder = tmp_path_factory.mktemp("mirror")
    config = yaml.safe_load(Path(system.started["gateway"]["config_file"]).read_text())
    port, admin = free_port(), free_port()
    config["server"].update(port=port, workers=1)
    config["server"]["admin"]["port"] = admin
    config["backends"] = {name: {"instances": [recorder.url]} for name in config["backends"]}
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    log = folder / "gateway.log"
    with log.open("wb") as out:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "mosaic_gateway.cli", "serve", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert gateway.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/v1/auth/jwks.json", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url
    finally:
        gateway.terminate()
        try:
            gateway.wait(20)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()


def _through(url: str, recorder: Recorder, method: str, path: str, **kwargs: Any) -> Seen:
    rid = request_id()
    headers = {**kwargs.pop("headers", {}), "x-request-id": rid}
    answer = httpx.request(method, f"{url}{path}", headers=headers, timeout=10, **kwargs)
    assert answer.status_code == 200, answer.text
    return recorder.seen[rid]


def test_only_allowed_query_parameters_and_headers_reach_the_service(
    system: System, recorder: Recorder, mirror: str
) -> None:
    someone = str(uuid.uuid4())
    seen = _through(
        mirror,
        recorder,
        "GET",
        "/v1/blogs",
        params={"tag": "A", "limit": "5", "cursor": "c1", "state": "draft", "debug": "1"},
        headers={
            "x-api-key": system.api_key,
            "accept": "application/json",
            "x-user-id": someone,
            "x-user-roles": "ADMIN",
            "cookie": "session=stolen",
            "x-internal-debug": "1",
            "authorization": "Bearer whatever",  # a public route takes no token: not passed on
        },
    )
    assert (seen.method, seen.path) == ("GET", "/v1/blogs")
    assert seen.query == {"tag": ["A"], "limit": ["5"], "cursor": ["c1"]}
    assert seen.headers["x-api-key"] == [system.api_key]  # the services scope idempotency by it
    assert seen.headers["accept"] == ["application/json"]
    for name in ("x-user-id", "x-user-roles", "cookie", "x-internal-debug", "authorization"):
        assert name not in seen.headers, name

    with system.client() as http:
        admin = admin_headers(http, system)
        author = with_roles(http, system, "Fay Warded", "AUTHOR")
    admin_id = jwt.decode(admin["Authorization"][7:], options={"verify_signature": False})["sub"]

    # On a route with a token, the user's id is the token's, whatever the client claims.
    seen = _through(
        mirror,
        recorder,
        "GET",
        "/v1/users",
        params={"q": "a", "limit": "2", "tag": "x"},
        headers={**admin, "x-api-key": system.api_key, "x-user-id": someone},
    )
    assert seen.query == {"q": ["a"], "limit": ["2"]}
    assert seen.headers["authorization"] == [admin["Authorization"]]
    assert seen.headers.get("x-user-id", [admin_id]) == [admin_id]

    # Idempotency-Key reaches the creating POST, and only it.
    key = uuid.uuid4().hex
    creating = {**author["headers"], "x-api-key": system.api_key, "idempotency-key": key}
    seen = _through(mirror, recorder, "POST", "/v1/author/blogs", json={}, headers=creating)
    assert seen.headers["idempotency-key"] == [key]
    assert seen.headers["content-type"] == ["application/json"]
    some_id = uuid.uuid4()
    seen = _through(
        mirror, recorder, "POST", f"/v1/author/blogs/{some_id}/submit", headers=creating
    )
    assert "idempotency-key" not in seen.headers
    assert seen.query == {}
