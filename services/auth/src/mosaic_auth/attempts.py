"""Failed-credential counting in the database: the sign-in throttle, and the same for client
applications authenticating with their secrets (`mosaic_auth.clients`).

The rule itself is `mosaic_auth.throttle` (pure functions); this holds its use: the keys'
advisory locks, the count made *before* the credential is checked, the count given back after a
right one. A key is `<kind>:<value>` (`account:ada@example.com`, `client:<id>`,
`address:203.0.113.7`); each kind has its `Policy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from mosaic_auth import store
from mosaic_auth.throttle import Policy, after_failure, seconds_locked
from mosaic_kit.sql.db import Connection

# A right credential clears these kinds' counts: the account's (or client's) own failures were
# its holder's typos. Other kinds (an address) only take back the attempt counted in advance,
# since other accounts' failures from there still count.
CLEARED_ON_SUCCESS = frozenset({"account", "client"})


class Attempts:
    def __init__(self, policies: Mapping[str, Policy]) -> None:
        self._policies = dict(policies)

    async def admit(self, conn: Connection, keys: Sequence[str]) -> float:
        """Seconds to wait when a key is locked (nothing is counted then); else 0.0, with the
        attempt already counted as a failure under every key.

        Counting first, under the keys' locks, is what bounds parallel guesses: the database
        holds both the count and the locks, so the bound holds across replicas too.
        """
        await self._lock(conn, keys)
        throttles = await store.get_throttles(conn, keys)
        now = datetime.now(UTC)
        wait = max((seconds_locked(t, now) for t in throttles.values()), default=0.0)
        if wait > 0:
            return wait
        for key in keys:
            policy = self._policies[_kind(key)]
            await store.put_throttle(conn, key, after_failure(throttles.get(key), now, policy))
        return 0.0

    async def succeeded(self, conn: Connection, keys: Sequence[str]) -> None:
        """The right credential: the attempt counted in advance is taken back."""
        await self._lock(conn, keys)
        for key in keys:
            kind = _kind(key)
            if kind in CLEARED_ON_SUCCESS:
                await store.clear_throttle(conn, key)
            else:
                await store.uncount_attempt(conn, key, self._policies[kind].max_failures)

    @staticmethod
    async def _lock(conn: Connection, keys: Sequence[str]) -> None:
        for key in sorted(keys):  # one lock order, so two requests never deadlock
            await store.lock(conn, "signin:" + key)


def _kind(key: str) -> str:
    return key.split(":", 1)[0]
