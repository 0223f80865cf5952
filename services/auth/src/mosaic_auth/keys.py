"""Signing keys: Ed25519 key pairs, their JWK form, and their encryption at rest.

Private keys are stored as PKCS#8 PEM encrypted with `AUTH_SIGNING_KEY_SECRET`. Without that
secret the service refuses to handle keys at all, unless `AUTH_ALLOW_PLAINTEXT_KEYS=true` accepts
plaintext ones (development); keys stored in plaintext earlier are encrypted in place once a
secret is set (`AuthService.ensure_signing_key`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mosaic_auth.settings import AuthSettings

ALGORITHM = "EdDSA"
_ENCRYPTED_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


class KeyStorageError(RuntimeError):
    """The signing keys cannot be stored or read safely with this configuration."""


PLAINTEXT_REFUSED = (
    "AUTH_SIGNING_KEY_SECRET is not set, so the private signing keys would be stored unencrypted "
    "in the database. Set it to a long random value and keep it (environment, .env or "
    "$SECRETS_DIR/AUTH_SIGNING_KEY_SECRET; `mosaic up` does this for you), or set "
    "AUTH_ALLOW_PLAINTEXT_KEYS=true to accept plaintext keys (local development only)."
)


def secret_for(settings: AuthSettings) -> str | None:
    """The secret keys are encrypted with; None only where plaintext keys are allowed."""
    secret = settings.auth_signing_key_secret
    if secret is not None and secret.get_secret_value():
        return secret.get_secret_value()
    if settings.auth_allow_plaintext_keys:
        return None
    raise KeyStorageError(PLAINTEXT_REFUSED)


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


def is_encrypted(pem: bytes) -> bool:
    return pem.lstrip().startswith(_ENCRYPTED_PEM)


def from_pem(kid: str, pem: bytes, secret: str | None) -> KeyPair:
    encrypted = is_encrypted(pem)
    if encrypted and not secret:
        raise KeyStorageError(
            f"signing key {kid} is stored encrypted and AUTH_SIGNING_KEY_SECRET is not set"
        )
    try:
        # A plaintext key stored before a secret was set is read as it is (and re-encrypted).
        key = serialization.load_pem_private_key(
            pem, password=secret.encode() if secret and encrypted else None
        )
    except ValueError:
        raise KeyStorageError(
            f"signing key {kid} cannot be decrypted with AUTH_SIGNING_KEY_SECRET: "
            "is it the secret the key was stored with?"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"signing key {kid} is not an Ed25519 key")
    return KeyPair(kid, key)
