"""Unit tests of the auth service's pure rules: throttling, keys, tokens, passwords."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from mosaic_auth import keys
from mosaic_auth.passwords import Passwords
from mosaic_auth.throttle import Policy, after_failure, seconds_locked
from mosaic_auth.tokens import Signer, hash_refresh_token, new_refresh_token

POLICY = Policy(max_failures=3, window=timedelta(minutes=15), base_delay=2.0, max_delay=60.0)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_throttle_locks_only_at_the_limit_and_doubles_each_time() -> None:
    state = None
    for _ in range(2):
        state = after_failure(state, T0, POLICY)
        assert state.locked_until is None
        assert seconds_locked(state, T0) == 0
    state = after_failure(state, T0, POLICY)
    assert state.failures == 3
    assert seconds_locked(state, T0) == pytest.approx(2.0)
    state = after_failure(state, T0, POLICY)
    assert seconds_locked(state, T0) == pytest.approx(4.0)
    state = after_failure(state, T0, POLICY)
    assert seconds_locked(state, T0) == pytest.approx(8.0)


def test_throttle_delay_is_capped_and_expires() -> None:
    state = None
    for _ in range(20):
        state = after_failure(state, T0, POLICY)
    assert seconds_locked(state, T0) == pytest.approx(60.0)
    assert seconds_locked(state, T0 + timedelta(seconds=61)) == 0


def test_throttle_window_restarts_the_count() -> None:
    state = None
    for _ in range(2):
        state = after_failure(state, T0, POLICY)
    later = T0 + timedelta(minutes=16)
    state = after_failure(state, later, POLICY)
    assert state.failures == 1
    assert state.window_started_at == later
    assert state.locked_until is None


def test_key_ids_are_stable_thumbprints_and_pem_round_trips_encrypted() -> None:
    pair = keys.generate()
    other = keys.generate()
    assert pair.kid != other.kid
    pem = keys.to_pem(pair, "s3cret-kek")
    assert b"ENCRYPTED" in pem
    again = keys.from_pem(pair.kid, pem, "s3cret-kek")
    assert again.public_jwk == pair.public_jwk
    with pytest.raises(keys.KeyStorageError, match="cannot be decrypted"):
        keys.from_pem(pair.kid, pem, "wrong")
    with pytest.raises(keys.KeyStorageError, match="is stored encrypted"):
        keys.from_pem(pair.kid, pem, None)
    plain = keys.to_pem(pair, None)
    assert b"ENCRYPTED" not in plain
    assert keys.from_pem(pair.kid, plain, None).public_jwk["x"] == pair.public_jwk["x"]


def test_refresh_tokens_are_random_and_only_their_hash_is_kept() -> None:
    token, digest = new_refresh_token()
    other, _ = new_refresh_token()
    assert token != other
    assert len(token) >= 40
    assert digest == hash_refresh_token(token)
    assert token.encode() not in digest


async def test_signer_mints_eddsa_tokens_with_the_contract_claims() -> None:
    pair = keys.generate()

    async def load() -> keys.KeyPair:
        return pair

    signer = Signer(load, issuer="mosaic-auth", audience="mosaic", ttl=900, refresh_interval=30)
    user, session = uuid.uuid4(), uuid.uuid4()
    future = int(time.time()) + 3
    token = await signer.access_token(user, {"AUTHOR", "LEARNER"}, session, future)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA"
    assert header["kid"] == pair.kid
    claims = jwt.decode(
        token,
        pair.private_key.public_key(),
        algorithms=["EdDSA"],
        audience="mosaic",
        issuer="mosaic-auth",
        leeway=5,
    )
    assert claims["sub"] == str(user)
    assert claims["sid"] == str(session)
    assert claims["roles"] == ["AUTHOR", "LEARNER"]
    # Never minted before the user's tokens_valid_after, even within the same second.
    assert claims["iat"] == future
    assert claims["exp"] == future + 900


async def test_passwords_hash_verify_and_unknown_account_path() -> None:
    pw = Passwords(time_cost=1, memory_kib=8, parallelism=1)
    digest = await pw.hash("correct horse")
    assert digest.startswith("$argon2id$")
    assert await pw.verify(digest, "correct horse")
    assert not await pw.verify(digest, "wrong horse")
    # No account: still does the work, and never says yes.
    assert not await pw.verify(None, "mosaic-timing-equaliser")
    assert not await pw.verify("not-a-hash", "x")
