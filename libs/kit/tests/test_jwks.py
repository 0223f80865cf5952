"""JwksCache: key parsing, rotation, and refetches that a forged-kid flood cannot multiply."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI

from mosaic_kit.jwks import (
    HttpKeySource,
    JwksCache,
    JwksUnavailable,
    StaticKeySource,
    parse_ed25519_jwk,
    validate_jwks,
)
from mosaic_kit.nats.connection import connect
from mosaic_kit.nats.keys import NatsKeySource
from mosaic_kit.nats.rpc import RpcUnavailable, serve
from mosaic_kit.problem import Problem
from mosaic_kit.revocation import RevocationSet
from mosaic_kit.tokens import TokenVerifier


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Key:
    kid: str
    private: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def jwk(self) -> dict[str, Any]:
        raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw), "kid": self.kid}

    def mint(self, kid: str | None = None) -> str:
        now = int(time.time())
        body = {
            "sub": str(uuid.uuid4()),
            "sid": str(uuid.uuid4()),
            "roles": ["USER"],
            "iat": now,
            "exp": now + 600,
            "iss": "mosaic-auth",
            "aud": "mosaic",
        }
        return jwt.encode(body, self.private, algorithm="EdDSA", headers={"kid": kid or self.kid})


class SlowSource:
    """A key source whose fetch takes a while, so concurrent callers overlap."""

    def __init__(self, jwks: dict[str, Any], delay: float = 0.05) -> None:
        self.jwks = jwks
        self.delay = delay
        self.fetches = 0
        self.fail = False

    async def fetch(self) -> dict[str, Any]:
        self.fetches += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("no responders")
        return self.jwks


def verifier_for(cache: JwksCache) -> TokenVerifier:
    return TokenVerifier(cache, revocations=RevocationSet())


async def test_unknown_kid_refetches_once_then_verifies_after_rotation() -> None:
    old, new = Key("2025-01"), Key("2025-02")
    source = StaticKeySource({"keys": [old.jwk]})
    cache = JwksCache(source, min_refresh_interval=30.0)
    verifier = verifier_for(cache)
    await verifier.verify(old.mint())
    assert source.fetches == 1

    source.update({"keys": [old.jwk, new.jwk]})  # auth rotated
    principal = await verifier.verify(new.mint())
    assert principal.roles == frozenset({"USER"})
    assert source.fetches == 2
    # Tokens signed with the old key stay valid while auth still publishes it.
    await verifier.verify(old.mint())
    await verifier.verify(new.mint())
    assert source.fetches == 2


async def test_forged_kid_flood_costs_at_most_one_refetch() -> None:
    key = Key("real")
    source = SlowSource({"keys": [key.jwk]})
    cache = JwksCache(source, min_refresh_interval=30.0)
    verifier = verifier_for(cache)
    await cache.refresh()
    assert source.fetches == 1

    forged = [Key(f"forged-{i}").mint() for i in range(50)]
    results = await asyncio.gather(*(verifier.verify(t) for t in forged), return_exceptions=True)
    assert all(isinstance(r, Problem) and r.code == "auth.token_invalid" for r in results)
    # And a second wave after the first refetch completed is held back by the rate limit.
    for token in forged:
        with pytest.raises(Problem):
            await verifier.verify(token)
    assert source.fetches <= 2
    # Genuine tokens keep working throughout.
    await verifier.verify(key.mint())


async def test_refetch_allowed_again_after_the_interval() -> None:
    clock = Clock()
    known, later = Key("a"), Key("b")
    source = StaticKeySource({"keys": [known.jwk]})
    cache = JwksCache(source, min_refresh_interval=10.0, clock=clock)
    await cache.refresh()

    assert await cache.get_key("b") is None  # refetch 1: b not published yet
    source.update({"keys": [known.jwk, later.jwk]})
    clock.now += 9
    assert await cache.get_key("b") is None  # rate-limited: no fetch
    assert source.fetches == 2
    clock.now += 1
    assert await cache.get_key("b") is not None
    assert source.fetches == 3


async def test_concurrent_callers_share_one_fetch_even_if_one_is_cancelled() -> None:
    key = Key("k")
    source = SlowSource({"keys": [key.jwk]}, delay=0.1)
    cache = JwksCache(source)
    first = asyncio.create_task(cache.get_key("k"))
    others = [asyncio.create_task(cache.get_key("k")) for _ in range(10)]
    await asyncio.sleep(0.02)
    first.cancel()
    keys = await asyncio.gather(*others)
    assert all(k is not None for k in keys)
    assert source.fetches == 1


async def test_failed_first_load_is_unavailable_and_rate_limited() -> None:
    clock = Clock()
    key = Key("k")
    source = SlowSource({"keys": [key.jwk]}, delay=0)
    source.fail = True
    cache = JwksCache(source, min_refresh_interval=5.0, unloaded_retry_interval=5.0, clock=clock)
    with pytest.raises(JwksUnavailable):
        await cache.get_key("k")
    with pytest.raises(JwksUnavailable):
        await cache.get_key("k")
    assert source.fetches == 1  # the second call did not hit the failing source again
    source.fail = False
    clock.now += 5
    assert await cache.get_key("k") is not None
    assert cache.loaded


async def test_before_any_key_is_loaded_retries_come_sooner() -> None:
    """A service that starts before auth must not refuse every token for the full interval."""
    clock = Clock()
    key = Key("k")
    source = SlowSource({"keys": [key.jwk]}, delay=0)
    source.fail = True
    cache = JwksCache(source, min_refresh_interval=10.0, unloaded_retry_interval=1.0, clock=clock)
    with pytest.raises(JwksUnavailable):
        await cache.get_key("k")
    source.fail = False
    clock.now += 1.0
    assert await cache.get_key("k") is not None
    # Once loaded, an unknown kid is back to the full interval after a failed refetch.
    source.fail = True
    assert await cache.get_key("other") is None
    fetches = source.fetches
    clock.now += 1.0
    assert await cache.get_key("other") is None
    assert source.fetches == fetches


async def test_failed_refresh_keeps_known_keys() -> None:
    key = Key("k")
    source = SlowSource({"keys": [key.jwk]}, delay=0)
    cache = JwksCache(source)
    await cache.refresh()
    source.fail = True
    with pytest.raises(ConnectionError):
        await cache.refresh()
    assert await cache.get_key("k") is not None
    assert await cache.get_key("unknown") is None  # a refetch that fails: just not found


async def test_background_refresh_picks_up_new_keys() -> None:
    old, new = Key("old"), Key("new")
    source = StaticKeySource({"keys": [old.jwk]})
    cache = JwksCache(source)
    await cache.refresh()
    cache.start_refreshing(0.02)
    try:
        source.update({"keys": [new.jwk]})
        for _ in range(100):
            if cache.kids == {"new"}:
                break
            await asyncio.sleep(0.01)
        assert cache.kids == {"new"}
        assert cache.peek("old") is None
    finally:
        await cache.aclose()


async def test_only_ed25519_signing_keys_are_installed() -> None:
    good = Key("good")
    public = {**Key("enc").jwk, "use": "enc"}
    source = StaticKeySource(
        {
            "keys": [
                good.jwk,
                {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
                {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"},
                {**Key("x448").jwk, "crv": "X25519"},
                {**Key("rs").jwk, "alg": "RS256"},
                public,
                {**Key("short").jwk, "x": b64url(b"\x01" * 31)},
                {**Key("nokid").jwk, "kid": ""},
            ]
        }
    )
    cache = JwksCache(source)
    await cache.refresh()
    assert cache.kids == {"good"}


def test_parse_ignores_private_part_and_rejects_bad_base64() -> None:
    key = Key("k")
    kid, public = parse_ed25519_jwk({**key.jwk, "d": "c2VjcmV0"})
    assert kid == "k"
    assert public.public_bytes(
        Encoding.Raw, PublicFormat.Raw
    ) == key.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    with pytest.raises(ValueError, match="base64url"):
        parse_ed25519_jwk({**key.jwk, "x": "!!!"})


@pytest.mark.parametrize("document", [[], {"keys": {}}, {"keys": [1]}, {"nokeys": []}, "x"])
def test_validate_jwks_rejects_other_shapes(document: Any) -> None:
    with pytest.raises(ValueError, match="JWKS"):
        validate_jwks(document)


async def test_http_key_source() -> None:
    key = Key("http-key")
    served = {"keys": [key.jwk]}
    app = FastAPI()

    @app.get("/v1/auth/jwks.json")
    async def jwks() -> dict[str, Any]:
        return served

    @app.get("/broken")
    async def broken() -> list[int]:
        return [1, 2]

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://auth") as client:
        cache = JwksCache(HttpKeySource("http://auth/v1/auth/jwks.json", client))
        await verifier_for(cache).verify(key.mint())
        with pytest.raises(httpx.HTTPStatusError):
            await HttpKeySource("http://auth/missing", client).fetch()
        with pytest.raises(ValueError, match="JWKS"):
            await HttpKeySource("http://auth/broken", client).fetch()


async def test_nats_key_source_against_a_real_responder(nats_url: str) -> None:
    key = Key("nats-key")
    subject = f"test.{uuid.uuid4().hex}.jwks.get"
    requests: list[dict[str, Any]] = []

    async def jwks_get(payload: dict[str, Any]) -> dict[str, Any]:
        requests.append(payload)
        return {"keys": [key.jwk]}

    nc = await connect(nats_url, "test-jwks")
    service = await serve(
        nc, name="test-auth", version="0.0.1", description="jwks", endpoints={subject: jwks_get}
    )
    try:
        cache = JwksCache(NatsKeySource(nc, subject, timeout=2.0))
        principal = await verifier_for(cache).verify(key.mint())
        assert principal.roles == frozenset({"USER"})
        assert requests == [{}]
    finally:
        await service.stop()
        await nc.drain()


async def test_nats_key_source_without_responder_is_503(nats_url: str) -> None:
    nc = await connect(nats_url, "test-jwks-none")
    try:
        source = NatsKeySource(nc, f"test.{uuid.uuid4().hex}.jwks.get", timeout=1.0)
        with pytest.raises(RpcUnavailable):
            await source.fetch()
        verifier = verifier_for(JwksCache(source))
        with pytest.raises(Problem) as info:
            await verifier.verify(Key("k").mint())
        assert (info.value.status, info.value.code) == (503, "auth.keys_unavailable")
    finally:
        await nc.drain()


async def test_a_jwks_without_usable_keys_is_a_failed_fetch() -> None:
    key = Key("k")
    source = StaticKeySource({"keys": [key.jwk]})
    cache = JwksCache(source)
    await cache.refresh()
    source.update({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]})
    with pytest.raises(ValueError, match="no usable"):
        await cache.refresh()
    assert cache.kids == {"k"}
    empty = JwksCache(StaticKeySource({"keys": []}))
    with pytest.raises(JwksUnavailable):
        await empty.get_key("k")
