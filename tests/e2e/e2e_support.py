"""Helpers of the end-to-end tests (fixtures live in conftest.py)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

MOSAIC = [sys.executable, "-m", "mosaic_devstack.cli"]
PASSWORD = "correct-horse-9"
PROBLEM = "application/problem+json"


class System:
    def __init__(self, data: Path) -> None:
        self.data = data
        # Servers of the machine are not ours to use here: the stack starts its own.
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k
            not in {"DATABASE_URL", "NATS_URL", "REDIS_URL", "MOSAIC_DATA", "MOSAIC_GATEWAY_PORT"}
        }
        self.up_output = ""

    def mosaic(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MOSAIC, *args, "--data", str(self.data)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        done = self.mosaic("status", "--json")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    @functools.cached_property
    def started(self) -> dict[str, Any]:
        """`mosaic status --json` once: what does not change while the stack runs."""
        return self.status()

    @property
    def gateway(self) -> str:
        """The URL clients call."""
        return str(self.started["gateway"]["url"])

    @property
    def api_key(self) -> str:
        """The demo API key the seed created."""
        return str(self.started["credentials"]["apiKey"]["key"])

    @property
    def admin(self) -> dict[str, str]:
        return dict(self.started["credentials"]["admin"])

    def client(self, api_key: str | None = "demo") -> httpx.Client:
        """A client of the gateway, sending the demo API key (or `api_key`, or none)."""
        headers = {}
        if api_key is not None:
            headers["x-api-key"] = self.api_key if api_key == "demo" else api_key
        return httpx.Client(base_url=self.gateway, headers=headers, timeout=15, trust_env=False)

    def urls(self, service: str) -> list[str]:
        """The instances of a service (for operators; clients call the gateway)."""
        return [i["url"] for i in self.status()["instances"] if i["service"] == service]

    def pids(self) -> list[int]:
        state = json.loads((self.data / "state.json").read_text())
        pids = [state["supervisor_pid"], state["postgres"]["pid"], state["nats"]["pid"]]
        pids.append(state["gateway"]["pid"])
        return [p for p in pids + [i["pid"] for i in state["instances"]] if p]

    def service_logs(self) -> str:
        """Everything the service instances logged so far (one JSON line per request)."""
        return "".join(
            path.read_text(errors="replace")
            for path in sorted((self.data / "logs").glob("*-[0-9]*.log"))
        )

    def reached_services(self, request_ids: list[str], settle: float = 1.0) -> set[str]:
        """Which of these request ids a service instance logged.

        A service logs every request it answers (`http_request`, with the id the gateway
        forwarded); the line may land a moment after the response, hence `settle`.
        """
        time.sleep(settle)
        logged = self.service_logs()
        return {rid for rid in request_ids if f'"{rid}"' in logged}


def request_id() -> str:
    return f"e2e-{uuid.uuid4().hex}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(answer: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """`answer` is an RFC 9457 problem with this status (and code); returns its body."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM), answer.headers
    body: dict[str, Any] = answer.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "code"} <= set(body)
    if code is not None:
        assert body["code"] == code, body
    return body


def eventually(
    check: Callable[[], httpx.Response], done: Callable[[httpx.Response], bool], within: float
) -> httpx.Response:
    """Repeat `check` until `done(answer)` or `within` seconds have passed; the last answer."""
    deadline = time.monotonic() + within
    while True:
        answer = check()
        if done(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def signed_up(http: httpx.Client, name: str = "Ada") -> dict[str, Any]:
    """A new user (a LEARNER), signed up through the gateway: `{user, tokens, email}`."""
    email = f"{name.lower().replace(' ', '-')}-{uuid.uuid4().hex[:8]}@example.com"
    answer = http.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": name})
    assert answer.status_code == 201, answer.text
    return {**answer.json(), "email": email}


def admin_headers(http: httpx.Client, system: System) -> dict[str, str]:
    answer = http.post("/v1/auth/signin", json=system.admin)
    assert answer.status_code == 200, answer.text
    return bearer(answer.json()["tokens"]["accessToken"])


def with_roles(http: httpx.Client, system: System, name: str, *roles: str) -> dict[str, Any]:
    """A new user whom the admin granted `roles`, with a token carrying them:
    `{id, name, email, headers, tokens}`."""
    user = signed_up(http, name)
    granted = http.put(
        f"/v1/users/{user['user']['id']}/roles",
        json={"roles": ["LEARNER", *roles]},
        headers=admin_headers(http, system),
    )
    assert granted.status_code == 200, granted.text
    # Roles reach tokens on refresh.
    refreshed = http.post("/v1/auth/refresh", json={"refreshToken": user["tokens"]["refreshToken"]})
    assert refreshed.status_code == 200, refreshed.text
    tokens = refreshed.json()["tokens"]
    return {
        "id": user["user"]["id"],
        "name": name,
        "email": user["email"],
        "tokens": tokens,
        "headers": bearer(tokens["accessToken"]),
    }
