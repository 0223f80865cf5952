"""The contract fuzzing's caller and data, made through the gateway of the running stack (the
`system` fixture of tests/conftest.py, shared with the end-to-end tests)."""

from __future__ import annotations

import uuid

import pytest
from contract_support import Fuzzer
from e2e_support import PASSWORD, System, signed_up, with_roles


@pytest.fixture(scope="session")
def fuzzer(system: System) -> Fuzzer:
    with system.client() as http:
        # A user of its own with every role, not the seeded admin: the fuzzed PATCH /users/me
        # and PUT /users/me/password touch nobody else's account.
        me = with_roles(http, system, "Contract Fuzzer", "AUTHOR", "EDITOR", "ADMIN")
        signin = http.post("/v1/auth/signin", json={"email": me["email"], "password": PASSWORD})
        assert signin.status_code == 200, signin.text
        other = signed_up(http, "Contract Other")
        blogs = []
        for name in ("draft", "published"):
            slug = f"contract-{name}-{uuid.uuid4().hex[:8]}"
            created = http.post(
                "/v1/author/blogs",
                headers=me["headers"],
                json={
                    "title": f"Contract {name}",
                    "description": "Made for the contract fuzzing",
                    "draftText": "Text",
                    "slug": slug,
                    "imgUrl": "https://example.com/cover.png",
                    "tags": ["contract"],
                },
            )
            assert created.status_code == 201, created.text
            blogs.append(created.json())
        published = blogs[1]["id"]
        for step in (
            f"/v1/author/blogs/{published}/submit",
            f"/v1/editor/blogs/{published}/publish",
        ):
            answer = http.post(step, headers=me["headers"])
            assert answer.status_code == 200, answer.text
        key = http.post("/v1/api-keys", headers=me["headers"], json={"name": "contract fuzzing"})
        assert key.status_code == 201, key.text
    return Fuzzer(
        api_key=system.api_key,
        token=me["tokens"]["accessToken"],
        spare_token=signin.json()["tokens"]["accessToken"],
        blog_ids=[blog["id"] for blog in blogs],
        slugs=[blog["slug"] for blog in blogs],
        # Its own id too: disabling oneself or dropping one's ADMIN role is a 409.
        user_ids=[other["user"]["id"], me["id"]],
        api_key_ids=[key.json()["id"]],
    )
