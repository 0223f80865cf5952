"""What the contract fuzzing (tests/contract) found in the auth service, held in place by fast
tests of their own."""

from __future__ import annotations

import httpx
from auth_support import signup


async def test_an_empty_role_list_takes_every_role_away(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    # docs/api.md allows an empty list; it was a 500 (an INSERT of no rows ran as one row of
    # NULLs and broke the NOT NULL constraint).
    user_id = (await signup(client))["user"]["id"]
    emptied = await client.put(f"/v1/users/{user_id}/roles", json={"roles": []}, headers=admin)
    assert emptied.status_code == 200, emptied.text
    assert emptied.json()["roles"] == []
    granted = await client.put(
        f"/v1/users/{user_id}/roles", json={"roles": ["AUTHOR"]}, headers=admin
    )
    assert granted.status_code == 200, granted.text
    assert granted.json()["roles"] == ["AUTHOR"]
