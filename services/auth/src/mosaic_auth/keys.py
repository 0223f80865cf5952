"""Signing keys: Ed25519 key pairs, their JWK form, and (optional) encryption at rest."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ALGORITHM = "EdDSA"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class KeyPair:
    kid: str
    private_key: Ed25519PrivateKey

    @property
    def public_jwk(self) -> dict[str, Any]:
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(raw),
            "kid": self.kid,
            "use": "sig",
            "alg": ALGORITHM,
        }


def generate() -> KeyPair:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # RFC 7638-style thumbprint: the kid names the key, so the same key always has the same kid.
    thumb = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}, separators=(",", ":"))
    kid = _b64url(hashlib.sha256(thumb.encode()).digest())[:22]
    return KeyPair(kid, key)


def to_pem(pair: KeyPair, secret: str | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(secret.encode())
        if secret
        else serialization.NoEncryption()
    )
    return pair.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def from_pem(kid: str, pem: bytes, secret: str | None) -> KeyPair:
    key = serialization.load_pem_private_key(pem, password=secret.encode() if secret else None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"signing key {kid} is not an Ed25519 key")
    return KeyPair(kid, key)
