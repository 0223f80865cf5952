"""API keys verified over real NATS against a stand-in auth endpoint the tests control."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mosaic_gateway.filters.apikeys import (
    ApiKeyIdentity,
    ApiKeyInvalid,
    ApiKeyMissing,
    ApiKeyUnavailable,
    ApiKeyVerifier,
)
from mosaic_kit.events import new_event
from mosaic_kit.nats.connection import Client, connect
from mosaic_kit.nats.jetstream import ensure_stream, publish
from mosaic_kit.nats.rpc import RpcService, serve
from mosaic_kit.problem import Problem


class FakeAuth:
    """What `auth.apikeys.verify` answers, on a subject of its own; counts the requests."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.keys: dict[str, ApiKeyIdentity] = {}
        self.calls = 0
        self.delay = 0.0
        self.service: RpcService | None = None

    def issue(self, name: str = "mobile app") -> tuple[str, ApiKeyIdentity]:
        key = "mk_" + uuid.uuid4().hex + uuid.uuid4().hex
        identity = ApiKeyIdentity(str(uuid.uuid4()), name)
        self.keys[key] = identity
        return key, identity

    def revoke(self, key: str) -> None:
        del self.keys[key]

    async def verify(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        identity = self.keys.get(payload.get("key", ""))
        if identity is None:
            raise Problem(403, "auth.apikey_invalid", "The API key is not valid")
        return {"id": identity.id, "name": identity.name}

    async def start(self, nc: Client) -> None:
        self.service = await serve(
            nc,
            name="fake-auth-" + uuid.uuid4().hex[:8],
            version="1.0.0",
            description="test stand-in for auth",
            endpoints={self.subject: self.verify},
        )

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(nats_url, "test-gateway-apikeys")
    yield client
    await client.close()


@pytest.fixture
async def auth(nc: Client) -> AsyncIterator[FakeAuth]:
    fake = FakeAuth(f"t{uuid.uuid4().hex[:10]}.apikeys.verify")
    await fake.start(nc)
    yield fake
    await fake.stop()


@pytest.fixture
async def verifier_factory(
    nc: Client, auth: FakeAuth
) -> AsyncIterator[Callable[..., ApiKeyVerifier]]:
    made: list[ApiKeyVerifier] = []

    def make(**options: Any) -> ApiKeyVerifier:
        options.setdefault("timeout", 1.0)
        verifier = ApiKeyVerifier(nc, subject=auth.subject, **options)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.stop()


def accepted(verifier: ApiKeyVerifier, key: str) -> ApiKeyIdentity | None:
    """What the cache says about `key` without asking auth: the identity, or None."""
    try:
        return verifier.peek(key)
    except ApiKeyInvalid:
        return None


async def following(verifier: ApiKeyVerifier, nc: Client) -> ApiKeyVerifier:
    js = nc.jetstream()
    await ensure_stream(js, "auth")
    await verifier.start(js)
    assert await verifier.wait_following(10.0)
    return verifier


async def test_cached_answer_avoids_the_request(
    nc: Client, auth: FakeAuth, verifier_factory: Callable[..., ApiKeyVerifier]
) -> None:
    verifier = await following(verifier_factory(ttl=60), nc)
    key, identity = auth.issue()
    assert verifier.peek(key) is None, "unknown yet: the caller must await verify"
    assert await verifier.verify(key) == identity
    assert auth.calls == 1
    assert verifier.peek(key) == identity
    assert verifier.peek(key.encode()) == identity, "header bytes work without decoding"
    assert await verifier.verify(key) == identity
    assert auth.calls == 1
    assert verifier.hits == 3


async def test_accepted_keys_expire_after_ttl(
    nc: Client, auth: FakeAuth, verifier_factory: Callable[..., ApiKeyVerifier]
) -> None:
    clock = Clock()
    verifier = await following(verifier_factory(ttl=30, clock=clock), nc)
    key, identity = auth.issue()
    await verifier.verify(key)
    clock.now += 29.9
    assert verifier.peek(key) == identity
    clock.now += 0.2
    assert verifier.peek(key) is None
    assert await verifier.verify(key) == identity
    assert auth.calls == 2


async def test_concurrent_misses_share_one_request(
    nc: Client, auth: FakeAuth, verifier_factory: Callable[..., ApiKeyVerifier]
) -> None:
    verifier = await following(verifier_factory(), nc)
    key, identity = auth.issue()
    auth.delay = 0.1
    results = await asyncio.gather(*(verifier.verify(key) for _ in range(25)))
    assert results == [identity] * 25
    assert auth.calls == 1

    bad = "mk_unknown_" + uuid.uuid4().hex
    outcomes = await asyncio.gather(
        *(verifier.verify(bad) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(o, ApiKeyInvalid) for o in outcomes)
    assert auth.calls == 2


async def test_a_cancelled_caller_does_not_fail_the_others(
    nc: Client, auth: FakeAuth, verifier_factory: Callable[..., ApiKeyVerifier]
) -> None:
    verifier = await following(verifier_factory(), nc)
    key, identity = auth.issue()
    auth.delay = 0.2
    first = asyncio.create_task(verifier.verify(key))
    second = asyncio.create_task(verifier.verify(key))
    await asyncio.sleep(0.05)
    first.cancel()
    assert await second == identity
    assert auth.calls == 1


async def test_refused_keys_are_cached_briefly(
    auth: FakeAuth, verifier_factory: Callable[..., ApiKeyVerifier]
) -> None:
    clock = Clock()
    verifier = verifier_factory(negative_ttl=5, clock=clock)
    bad = "mk_nope_" + uuid.uuid4().hex
    for _ in range(3):
        with pytest.raises(ApiKeyInvalid) as info:
            await verifier.verify(bad)
        assert info.value.problem.status == 403
    assert auth.calls == 1
    with pytest.raises(ApiKeyInvalid):
        verifier.peek(bad)
    clock.now += 5.1
    assert verifier.peek(bad) is None
    with pytest.raises(ApiKeyInvalid):
        await verifier.verify(bad)
    assert auth.calls == 2


async def test_missing_key_is_401_without_asking(
    auth: FakeAuth, verifier_factory: Callable[..., ApiKeyVerifier]
) -> None:
    verifier = verifier_factory()
    for missing in (None, "", b""):
        with pytest.raises(ApiKeyMissing) as info:
            await verifier.verify(missing)
        assert info.value.problem.status == 401
    with pytest.raises(ApiKeyInvalid):
        await verifier.verify("x" * 10_000)
    with pytest.raises(ApiKeyInvalid):
        await verifier.verify("mk_\u00e9".encode("latin-1"))
    assert auth.calls == 0


async def test_revocation_event_drops_the_cached_key_within_a_second(
    nc: Client, auth: FakeAuth, verifier_factory: Callable[..., ApiKeyVerifier]
) -> None:
    verifier = await following(verifier_factory(ttl=3600), nc)
    key, identity = auth.issue()
    other_key, other = auth.issue("other app")
    await verifier.verify(key)
    await verifier.verify(other_key)

    auth.revoke(key)  # what auth's database now says...
    loop = asyncio.get_running_loop()
    published_at = loop.time()
    await publish(nc.jetstream(), new_event("auth.apikey.revoked", {"id": identity.id}))
    async with asyncio.timeout(1.0):
        while accepted(verifier, key) is not None:
            await asyncio.sleep(0.01)
    assert loop.time() - published_at < 1.0
    with pytest.raises(ApiKeyInvalid):
        await verifier.verify(key)
    # The revoked key is remembered as refused: no need to ask auth about it again.
    assert auth.calls == 2
    assert verifier.peek(other_key) == other, "only the revoked key's entries are dropped"


async def test_revocation_racing_an_answer_in_flight_wins(
    nc: Client, auth: FakeAuth, verifier_factory: Callable[..., ApiKeyVerifier]
) -> None:
    verifier = await following(verifier_factory(ttl=3600), nc)
    key, identity = auth.issue()
    auth.delay = 0.3
    pending = asyncio.create_task(verifier.verify(key))
    await asyncio.sleep(0.1)  # auth has read the key as valid; the revocation lands meanwhile
    auth.revoke(key)
    await publish(nc.jetstream(), new_event("auth.apikey.revoked", {"id": identity.id}))
    with pytest.raises(ApiKeyInvalid):
        await pending
    with pytest.raises(ApiKeyInvalid):
        verifier.peek(key)


async def test_without_the_revocation_feed_nothing_accepted_is_cached(
    auth: FakeAuth, verifier_factory: Callable[..., ApiKeyVerifier]
) -> None:
    verifier = verifier_factory(ttl=3600)
    key, identity = auth.issue()
    assert not verifier.following
    assert await verifier.verify(key) == identity
    assert await verifier.verify(key) == identity
    assert auth.calls == 2, "a revocation could not be seen, so every request asks auth"


async def test_auth_unreachable_fails_closed_and_recovers(
    nc: Client, auth: FakeAuth, verifier_factory: Callable[..., ApiKeyVerifier]
) -> None:
    verifier = await following(verifier_factory(negative_ttl=60), nc)
    key, identity = auth.issue()
    await auth.stop()
    with pytest.raises(ApiKeyUnavailable) as info:
        await verifier.verify(key)
    assert info.value.problem.status == 503
    # Not remembered as refused: auth coming back answers at once.
    await auth.start(nc)
    assert await verifier.verify(key) == identity


async def test_auth_too_slow_is_unavailable(
    auth: FakeAuth, verifier_factory: Callable[..., ApiKeyVerifier]
) -> None:
    verifier = verifier_factory(timeout=0.2)
    key, _ = auth.issue()
    auth.delay = 0.5
    with pytest.raises(ApiKeyUnavailable):
        await verifier.verify(key)


async def test_refused_flood_cannot_evict_accepted_keys(
    nc: Client, auth: FakeAuth, verifier_factory: Callable[..., ApiKeyVerifier]
) -> None:
    verifier = await following(verifier_factory(max_entries=3), nc)
    key, identity = auth.issue()
    await verifier.verify(key)
    for _ in range(10):
        with pytest.raises(ApiKeyInvalid):
            await verifier.verify("mk_random_" + uuid.uuid4().hex)
    assert verifier.peek(key) == identity
    assert verifier.cached <= 6


async def test_the_raw_key_never_reaches_the_logs(
    nc: Client,
    auth: FakeAuth,
    verifier_factory: Callable[..., ApiKeyVerifier],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    verifier = await following(verifier_factory(timeout=0.3), nc)
    key, identity = auth.issue()
    bad = "mk_bad_" + uuid.uuid4().hex
    await verifier.verify(key)
    with pytest.raises(ApiKeyInvalid):
        await verifier.verify(bad)
    await publish(nc.jetstream(), new_event("auth.apikey.revoked", {"id": identity.id}))
    async with asyncio.timeout(2.0):
        while accepted(verifier, key) is not None:
            await asyncio.sleep(0.01)
    await auth.stop()
    other_key, _ = auth.issue()
    with pytest.raises(ApiKeyUnavailable):
        await verifier.verify(other_key)

    logged = [repr(record.__dict__) + record.getMessage() for record in caplog.records]
    captured = capsys.readouterr()
    everything = "\n".join([*logged, captured.out, captured.err])
    assert identity.id in everything, "the logs do show what happened, by key id"
    for secret in (key, bad, other_key):
        assert secret not in everything
