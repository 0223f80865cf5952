"""Third-party applications (OAuth2 client credentials): their registry and the OAuth rules.

The registry (ADMIN): a client has a name, the scopes it may be granted, optional extra
audiences, and one or two secrets (two during a rotation's grace period). The OAuth side: client
authentication (throttled as sign-in is), the token grant (RFC 6749 §4.4), revocation (RFC 7009)
and introspection (RFC 7662). Failures of the OAuth side are `OAuthError`s, which the transport
answers in RFC 6749 §5.2 form rather than as problems: OAuth client libraries expect that form.

**Secrets are stored as HMAC-SHA256 under a server key, not with Argon2id.** A secret is 256
random bits (`secrets.token_urlsafe(32)`): nobody can enumerate that space, so a slow hash would
buy nothing against a stolen table, while it would cost ~50 ms of CPU on every token request (the
token endpoint is hit by machines, every few minutes per client, and a slow hash there is also a
lever for denial of service). Passwords are different: people choose guessable ones, hence
Argon2id for them (`mosaic_auth.passwords`). The key (derived from `AUTH_SIGNING_KEY_SECRET`, kept
outside the database) means that a copy of the table alone cannot even confirm a secret found
elsewhere, e.g. in a log.

No HTTP types in here (the transport is `mosaic_auth.oauth_api` and `mosaic_auth.api`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import jwt

from mosaic_auth import store
from mosaic_auth.attempts import Attempts
from mosaic_auth.models import Client, ClientSecret
from mosaic_auth.settings import AuthSettings
from mosaic_auth.tokens import ClientToken, Signer, next_cutoff
from mosaic_kit.contracts.auth import (
    ClientCreated,
    ClientDisabled,
    ClientEnabled,
    ClientTokenRevoked,
)
from mosaic_kit.logging import get_logger
from mosaic_kit.pagination import decode_time_uuid_cursor, next_cursor_for
from mosaic_kit.problem import Problem, conflict, not_found
from mosaic_kit.revocation import RevocationSet
from mosaic_kit.sql import outbox
from mosaic_kit.sql.db import Database
from mosaic_kit.tokens import ClientPrincipal, TokenVerifier

log = get_logger("mosaic_auth.clients")

# What a client application may be granted. `blogs:write` is left out: a partner writing drafts
# for an author acts for that author, which needs the author's grant (authorization code with
# consent), not this grant type, where the application acts for itself.
SCOPES = ("blogs:read", "recommendations:read")
SECRET_PREFIX = "mcs_"  # noqa: S105 - a prefix, so that secret scanners recognise a leaked one
# Rotation: the new secret beside the old one while the application switches over.
MAX_SECRETS = 2
# Longer than anything issued (a uuid, a prefixed 43-character secret); bounds the work and the
# throttle keys a junk request can cause.
MAX_CREDENTIAL_LENGTH = 200
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# The key secrets are hashed under when the signing keys are stored in plaintext (local
# development only, AUTH_ALLOW_PLAINTEXT_KEYS): secrets stay 256 random bits, so still safe.
_DEVELOPMENT_KEY = b"mosaic-auth client secrets (development, no AUTH_SIGNING_KEY_SECRET)"
_KEY_LABEL = b"mosaic-auth client secrets v1"
REALM = 'Basic realm="mosaic"'


class OAuthError(Exception):
    """An RFC 6749 §5.2 error: `error` is the registered code, `description` for people."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def invalid_request(description: str) -> OAuthError:
    return OAuthError("invalid_request", description)


def invalid_client(description: str = "Client authentication failed") -> OAuthError:
    # §5.2: 401 with a challenge for the scheme the client may use (Basic).
    return OAuthError("invalid_client", description, 401, {"WWW-Authenticate": REALM})


def invalid_scope(description: str) -> OAuthError:
    return OAuthError("invalid_scope", description)


def unsupported_grant_type(description: str) -> OAuthError:
    return OAuthError("unsupported_grant_type", description)


def slow_down(wait: float) -> OAuthError:
    """Too many failed client authentications: 429 with Retry-After, in §5.2 form.

    RFC 6749 has no code for it. `slow_down` is the registered token-endpoint code meaning "wait,
    then ask again" (RFC 8628 §3.5), which is what is meant here; `invalid_client` would tell the
    client its credentials are wrong, and a well-behaved one would drop credentials that are
    fine. 429 is the status HTTP clients back off on.
    """
    return OAuthError(
        "slow_down",
        "Too many failed client authentications; try again later",
        429,
        {"Retry-After": str(math.ceil(wait))},
    )


def secret_key_for(signing_key_secret: str | None) -> bytes:
    """The key client secrets are hashed under: derived from the signing keys' secret, so
    that it is kept (and lost) with it, and never is the secret itself."""
    if not signing_key_secret:
        return _DEVELOPMENT_KEY
    return hmac.new(signing_key_secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def hash_secret(key: bytes, secret: str) -> bytes:
    return hmac.new(key, secret.encode(), hashlib.sha256).digest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)  # 256 random bits


def _client_uuid(client_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(client_id)
    except ValueError:
        return None


def _unknown_scopes(scopes: Sequence[str]) -> Problem:
    return Problem(
        422,
        "validation_failed",
        "Unknown scope",
        errors=[
            {"field": "scopes", "message": f"unknown scope: {s} (known: {', '.join(SCOPES)})"}
            for s in sorted(set(scopes) - set(SCOPES))
        ],
    )


class ClientService:
    def __init__(
        self,
        db: Database,
        settings: AuthSettings,
        signer: Signer,
        attempts: Attempts,
        secret_key: bytes,
        revocations: RevocationSet | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.signer = signer
        self.attempts = attempts
        self._key = secret_key
        self.revocations = revocations

    # --- the registry (ADMIN) -------------------------------------------------------------

    async def register_client(
        self, name: str, scopes: Sequence[str], audience: Sequence[str]
    ) -> tuple[Client, str]:
        """A new client and its first secret (returned once, stored only as a keyed hash)."""
        if set(scopes) - set(SCOPES):
            raise _unknown_scopes(scopes)
        wanted = sorted(set(scopes))
        client_id = uuid.uuid4()
        secret = new_secret()
        async with self.db.transaction() as conn:
            await store.insert_client(conn, client_id, name, wanted, list(dict.fromkeys(audience)))
            await store.insert_client_secret(
                conn, uuid.uuid4(), client_id, hash_secret(self._key, secret)
            )
            await outbox.add(
                conn, ClientCreated(client_id=client_id, name=name, scopes=wanted).event()
            )
            client = await store.get_client(conn, client_id)
        assert client is not None
        log.info("client_registered", client_id=str(client_id))
        return client, secret

    async def list_clients(self, limit: int, cursor: str | None) -> tuple[list[Client], str | None]:
        async with self.db.connect() as conn:
            rows = await store.list_clients(conn, limit, decode_time_uuid_cursor(cursor))
        return rows[:limit], next_cursor_for(rows, limit, lambda c: (c.created_at, c.id))

    async def client(self, client_id: uuid.UUID) -> Client:
        async with self.db.connect() as conn:
            found = await store.get_client(conn, client_id)
        if found is None:
            raise _client_not_found()
        return found

    async def delete_client(self, client_id: uuid.UUID) -> None:
        """Gone with its secrets; its live tokens are cut off (`auth.client.disabled`)."""
        async with self.db.transaction() as conn:
            found = await store.get_client(conn, client_id, for_update=True)
            if found is None:
                raise _client_not_found()
            cutoff = next_cutoff(found.tokens_valid_after)
            await store.delete_client(conn, client_id)
            await outbox.add(
                conn, ClientDisabled(client_id=client_id, tokens_valid_after=cutoff).event()
            )
        self._cut_off(client_id, cutoff)
        log.info("client_deleted", client_id=str(client_id))

    async def set_client_enabled(self, client_id: uuid.UUID, enabled: bool) -> None:
        """Disabling cuts off every token issued so far; enabling never lowers that cut-off,
        so only tokens issued afterwards work. No change, no event."""
        async with self.db.transaction() as conn:
            found = await store.get_client(conn, client_id, for_update=True)
            if found is None:
                raise _client_not_found()
            if found.enabled == enabled:
                return
            if enabled:
                await store.set_client_disabled(conn, client_id, False, found.tokens_valid_after)
                await outbox.add(conn, ClientEnabled(client_id=client_id).event())
                return
            cutoff = next_cutoff(found.tokens_valid_after)
            await store.set_client_disabled(conn, client_id, True, cutoff)
            await outbox.add(
                conn, ClientDisabled(client_id=client_id, tokens_valid_after=cutoff).event()
            )
        self._cut_off(client_id, cutoff)
        log.info("client_disabled", client_id=str(client_id))

    def _cut_off(self, client_id: uuid.UUID, cutoff: int) -> None:
        # This replica at once; the others (and every verifier) by the event.
        if self.revocations is not None:
            until = cutoff + self.settings.auth_client_token_ttl + 60
            self.revocations.revoke_client_before(str(client_id), cutoff, until)

    async def add_client_secret(self, client_id: uuid.UUID) -> tuple[ClientSecret, str]:
        """A second secret for a rotation (409 when the client has two already)."""
        secret = new_secret()
        async with self.db.transaction() as conn:
            # The row lock makes concurrent rotations count one after the other.
            found = await store.get_client(conn, client_id, for_update=True)
            if found is None:
                raise _client_not_found()
            if len(found.secrets) >= MAX_SECRETS:
                raise conflict(
                    "auth.client_secret_limit",
                    f"A client has at most {MAX_SECRETS} secrets: delete the old one first",
                )
            record = await store.insert_client_secret(
                conn, uuid.uuid4(), client_id, hash_secret(self._key, secret)
            )
        log.info("client_secret_added", client_id=str(client_id), secret_id=str(record.id))
        return record, secret

    async def remove_client_secret(self, client_id: uuid.UUID, secret_id: uuid.UUID) -> None:
        """The end of a rotation: the old secret stops working; tokens issued with it live on
        until they expire (rotation without downtime). Never the last secret (409)."""
        async with self.db.transaction() as conn:
            found = await store.get_client(conn, client_id, for_update=True)
            if found is None:
                raise _client_not_found()
            if secret_id not in {s.id for s in found.secrets}:
                raise not_found("auth.client_secret_not_found", "The client has no such secret")
            if len(found.secrets) == 1:
                raise conflict(
                    "auth.client_last_secret",
                    "The client's last secret cannot be deleted: add a new one first",
                )
            await store.delete_client_secret(conn, client_id, secret_id)
        log.info("client_secret_removed", client_id=str(client_id), secret_id=str(secret_id))

    # --- OAuth ----------------------------------------------------------------------------

    async def authenticate(self, client_id: str, secret: str, address: str | None) -> Client:
        """The client whose credentials these are, or `invalid_client` (unknown, wrong secret,
        disabled); `slow_down` while its id or the address is locked after failed attempts.

        Throttled as sign-in is (`Attempts`): the attempt is counted as a failure before the
        secret is checked, and given back when it was right.
        """
        if len(client_id) > MAX_CREDENTIAL_LENGTH or len(secret) > MAX_CREDENTIAL_LENGTH:
            raise invalid_client()
        keys = [f"client:{client_id}"]
        if address:
            keys.append(f"client_address:{address}")
        parsed = _client_uuid(client_id)
        async with self.db.transaction() as conn:
            wait = await self.attempts.admit(conn, keys)
            if wait > 0:
                raise slow_down(wait)
            stored = await store.client_secret_hashes(conn, parsed) if parsed else []
        # Computed whether or not the client exists, so both take the same time.
        presented = hash_secret(self._key, secret)
        matched = None
        for secret_id, secret_hash in stored:
            if hmac.compare_digest(secret_hash, presented):
                matched = secret_id
        if matched is None or parsed is None:
            log.info("client_authentication_failed", reason="bad_credentials")
            raise invalid_client()
        async with self.db.transaction() as conn:
            await self.attempts.succeeded(conn, keys)
            await store.touch_client_secret(conn, matched)
            client = await store.get_client(conn, parsed)
        if client is None:  # deleted in between
            raise invalid_client()
        if not client.enabled:
            raise invalid_client("The client is disabled")
        return client

    async def issue_token(self, client: Client, scope: str | None) -> tuple[ClientToken, str]:
        """A token for `scope` (space-separated; all the client's scopes when absent or empty),
        which must be a subset of the client's; the token and the scope granted."""
        requested = [s for s in (scope or "").split(" ") if s]
        if not all(_SCOPE_TOKEN.fullmatch(s) for s in requested):
            raise invalid_scope("The scope is malformed")
        extra = sorted(set(requested) - set(client.scopes))
        if extra:
            raise invalid_scope(f"Scopes not granted to this client: {' '.join(extra)}")
        granted = sorted(set(requested)) if requested else sorted(client.scopes)
        token = await self.signer.client_token(
            client.id,
            granted,
            client.audience,
            client.tokens_valid_after,
            self.settings.auth_client_token_ttl,
        )
        log.info("client_token_issued", client_id=str(client.id), jti=token.jti)
        return token, " ".join(granted)

    async def revoke_token(self, caller: Client, token: str, verifier: TokenVerifier) -> None:
        """RFC 7009: revoke `caller`'s token. Anything else (unknown, expired, already revoked,
        another client's or a user's token) changes nothing and is no error (§2.2)."""
        principal = await _client_token(token, verifier)
        if principal is None or principal.client_id != str(caller.id):
            return
        expires = datetime.fromtimestamp(principal.expires_at, UTC)
        async with self.db.transaction() as conn:
            if await store.revoke_client_token(conn, principal.token_id, caller.id, expires):
                event = ClientTokenRevoked(jti=principal.token_id, expires_at=principal.expires_at)
                await outbox.add(conn, event.event())
        if self.revocations is not None:
            self.revocations.revoke_token_id(principal.token_id, principal.expires_at + 60)
        log.info("client_token_revoked", client_id=str(caller.id), jti=principal.token_id)

    async def introspect(
        self, caller: Client, token: str, verifier: TokenVerifier
    ) -> dict[str, Any]:
        """RFC 7662: what `caller`'s own live token says; `{"active": false}` for anything else.

        The database decides what is live (not revoked, issued after the client's cut-off, the
        client still there and enabled), so the answer is never behind an event. A client learns
        nothing of other clients' tokens nor of users' (§4: the server may tell each caller only
        what it may know).
        """
        inactive: dict[str, Any] = {"active": False}
        principal = await _client_token(token, verifier)
        if principal is None or principal.client_id != str(caller.id):
            return inactive
        async with self.db.connect() as conn:
            client = await store.get_client(conn, caller.id)
            revoked = await store.client_token_revoked(conn, principal.token_id)
        if (
            client is None
            or not client.enabled
            or revoked
            or principal.issued_at < client.tokens_valid_after
        ):
            return inactive
        # Its signature, issuer, audience and times were verified just above.
        claims = jwt.decode(token, options={"verify_signature": False})
        return {
            "active": True,
            "client_id": claims["client_id"],
            "scope": claims["scope"],
            "exp": claims["exp"],
            "iat": claims["iat"],
            "jti": claims["jti"],
            "iss": claims["iss"],
            "aud": claims["aud"],
            "token_type": "Bearer",
        }


async def _client_token(token: str, verifier: TokenVerifier) -> ClientPrincipal | None:
    """The client token's verified claims; None for anything that is not a live client token."""
    try:
        principal = await verifier.verify_any(token)
    except Problem as problem:
        if problem.status == 503:  # the keys cannot be read: not the token's fault
            raise
        return None
    return principal if isinstance(principal, ClientPrincipal) else None


def _client_not_found() -> Problem:
    return not_found("auth.client_not_found", "No such client")
