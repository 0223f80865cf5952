"""Micro-benchmark of `mosaic_kit.tokens.TokenVerifier.verify`.

Measures verifications per second for
  (a) a cache hit: a token verified before (hash + dict lookup + revocation check),
  (b) a cold verification: a token never seen (header parse, Ed25519 signature check, claims),
and, for reference, (c) a cache hit while the revocation set holds 10 000 entries.

Run: .venv/bin/python bench/kit_token_verify.py [--seconds 1.0]
Prints a table and writes bench/results/kit_token_verify.json. No assertions on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import platform
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from loadgen import write_results

from mosaic_kit.jwks import JwksCache, StaticKeySource
from mosaic_kit.revocation import RevocationSet
from mosaic_kit.tokens import TokenVerifier

RESULTS = Path(__file__).resolve().parent / "results" / "kit_token_verify.json"


def _jwk(private: Ed25519PrivateKey, kid: str) -> dict[str, Any]:
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}


def _mint(private: Ed25519PrivateKey, kid: str) -> str:
    now = int(time.time())
    claims = {
        "sub": str(uuid.uuid4()),
        "sid": str(uuid.uuid4()),
        "roles": ["USER", "EDITOR"],
        "iat": now,
        "exp": now + 3600,
        "iss": "mosaic-auth",
        "aud": "mosaic",
    }
    return jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": kid})


async def _new_verifier(
    private: Ed25519PrivateKey, kid: str, *, cache_size: int, revocations: RevocationSet
) -> TokenVerifier:
    jwks = JwksCache(StaticKeySource({"keys": [_jwk(private, kid)]}))
    await jwks.refresh()
    return TokenVerifier(jwks, revocations=revocations, cache_size=cache_size)


async def _rate(
    verify: Callable[[str], Awaitable[object]], tokens: list[str], seconds: float
) -> tuple[float, int]:
    """Verifications per second over at least `seconds`, cycling through `tokens`."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for token in tokens:
            await verify(token)
        done += len(tokens)
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start), done


async def _run(seconds: float) -> list[dict[str, Any]]:
    private, kid = Ed25519PrivateKey.generate(), "bench-key"
    results: list[dict[str, Any]] = []

    hot = await _new_verifier(private, kid, cache_size=10_000, revocations=RevocationSet())
    warm_tokens = [_mint(private, kid) for _ in range(100)]
    for token in warm_tokens:
        await hot.verify(token)
    rate, n = await _rate(hot.verify, warm_tokens, seconds)
    results.append({"case": "cache_hit", "ops_per_s": rate, "ops": n})

    # Cache disabled so that every call is a full verification of a distinct token.
    cold = await _new_verifier(private, kid, cache_size=0, revocations=RevocationSet())
    cold_tokens = [_mint(private, kid) for _ in range(500)]
    rate, n = await _rate(cold.verify, cold_tokens, seconds)
    results.append({"case": "cold_signature_check", "ops_per_s": rate, "ops": n})

    busy = RevocationSet()
    until = time.time() + 3600
    for i in range(5_000):
        busy.revoke_session(f"revoked-{i}", until)
        busy.revoke_user_before(f"user-{i}", int(time.time()), until)
    loaded = await _new_verifier(private, kid, cache_size=10_000, revocations=busy)
    for token in warm_tokens:
        await loaded.verify(token)
    rate, n = await _rate(loaded.verify, warm_tokens, seconds)
    results.append({"case": "cache_hit_10k_revocations", "ops_per_s": rate, "ops": n})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of each case")
    args = parser.parse_args()

    results = asyncio.run(_run(args.seconds))

    print(f"{'case':<28} {'verifications/s':>16} {'us/op':>9}")
    for row in results:
        print(f"{row['case']:<28} {row['ops_per_s']:>16,.0f} {1e6 / row['ops_per_s']:>9.2f}")

    report = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seconds_per_case": args.seconds,
        "results": [
            {**row, "ops_per_s": round(row["ops_per_s"], 1), "us_per_op": 1e6 / row["ops_per_s"]}
            for row in results
        ],
    }
    write_results(RESULTS, "kit_token_verify", report)


if __name__ == "__main__":
    main()
