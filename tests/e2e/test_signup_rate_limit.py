"""Sign-up is not an account oracle: one budget per client address for the whole gateway.

Sign-up answers 409 `auth.email_taken` for a registered e-mail (API.md), so each attempt tells
whether an account exists. `mosaic up`'s gateway gives the route one budget per client address,
counted in NATS KV by every worker together.
"""

from __future__ import annotations

import time
import uuid

import httpx
from e2e_support import PASSWORD, PROBLEM, System

from mosaic_gateway.config import parse_config

# Loopback addresses other than 127.0.0.1, so the budget spent here is not the other tests'.
ADDRESSES = ("127.0.0.2", "127.0.0.3")


def _signup(system: System, address: str, email: str) -> httpx.Response:
    # A connection per request: the kernel spreads them over the gateway's workers, whose
    # separate local buckets would each admit the whole budget.
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(
        transport=transport,
        base_url=system.gateway,
        headers={"x-api-key": system.api_key},
        timeout=15,
        trust_env=False,
    ) as http:
        return http.post(
            "/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Probe"}
        )


def test_signup_has_one_budget_per_client_address_across_the_gateway(system: System) -> None:
    config = parse_config((system.data / "gateway.yaml").read_text(), "gateway.yaml")
    rule = next(r for r in config.routes if r.path == "/v1/auth/signup").rate_limit
    assert rule is not None
    assert rule.shared
    assert config.server.workers >= 2

    for address in ADDRESSES:
        # The budget is a fixed window: a run that straddles its end is repeated from a fresh
        # address in the new window, rather than waiting for one.
        window = int(time.time() // rule.per)
        email = f"probe-{uuid.uuid4().hex[:8]}@example.com"
        answers = [_signup(system, address, email) for _ in range(rule.requests + 1)]
        if int(time.time() // rule.per) == window:
            break
    else:
        raise AssertionError("two windows ended during the test")

    statuses = [a.status_code for a in answers]
    # The first creates the account, the others are told it exists, until the budget is spent.
    assert statuses == [201] + [409] * (rule.requests - 1) + [429], statuses
    refused = answers[-1]
    assert refused.headers["content-type"].startswith(PROBLEM)
    assert refused.json()["code"] == "gateway.rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= rule.per
    # Other clients (here, the tests' usual 127.0.0.1) keep their own budget.
    with system.client() as http:
        other = http.post(
            "/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Probe"}
        )
    assert other.status_code == 409
