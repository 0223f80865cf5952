"""The auth service's rules: accounts, sessions, tokens, roles, API keys, signing keys (client
applications: `mosaic_auth.clients`, reached as `AuthService.clients`).

Every state change and the event announcing it are written in one transaction (the outbox), so
other services learn of exactly the changes that happened. No HTTP or NATS types in here.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson

from mosaic_auth import keys, store
from mosaic_auth.attempts import Attempts
from mosaic_auth.clients import ClientService, secret_key_for
from mosaic_auth.models import ApiKey, User
from mosaic_auth.passwords import Passwords
from mosaic_auth.settings import AuthSettings
from mosaic_auth.tables import ROLES
from mosaic_auth.throttle import Policy
from mosaic_auth.tokens import (
    IssuedTokens,
    Signer,
    hash_refresh_token,
    new_refresh_token,
    next_cutoff,
)
from mosaic_kit.contracts.auth import (
    ApiKeyCreated,
    ApiKeyRevoked,
    KeysRotated,
    SessionRevoked,
    UserCreated,
    UserDisabled,
    UserEnabled,
    UserProfile,
    UserRolesChanged,
    UserUpdated,
)
from mosaic_kit.logging import get_logger
from mosaic_kit.pagination import decode_time_uuid_cursor, next_cursor_for
from mosaic_kit.problem import Problem, conflict, forbidden, not_found, unauthorized
from mosaic_kit.revocation import RevocationSet
from mosaic_kit.sql import idempotency, outbox
from mosaic_kit.sql.db import Connection, ConstraintError, Database
from mosaic_kit.tokens import Principal

P = TypeVar("P", bound=UserProfile)

log = get_logger("mosaic_auth.service")

API_KEY_PREFIX = "mk_"


@dataclass(frozen=True)
class ClientInfo:
    address: str | None = None
    user_agent: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise unauthorized("auth.token_invalid", "The token is not valid") from exc


class AuthService:
    def __init__(
        self,
        db: Database,
        settings: AuthSettings,
        passwords: Passwords,
        revocations: RevocationSet | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.passwords = passwords
        self.revocations = revocations
        self.signer = Signer(
            self._load_active_key,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            ttl=settings.auth_access_token_ttl,
            refresh_interval=settings.auth_key_refresh_interval,
        )
        self._key_secret = keys.secret_for(settings)
        window = timedelta(seconds=settings.auth_signin_window)
        per_holder = Policy(
            settings.auth_signin_max_failures,
            window,
            settings.auth_signin_base_delay,
            settings.auth_signin_max_delay,
        )
        per_address = Policy(
            settings.auth_signin_max_failures_per_address,
            window,
            settings.auth_signin_base_delay,
            settings.auth_signin_max_delay,
        )
        # Client applications guessing secrets are throttled exactly as people guessing
        # passwords: per client id as per account, per address as per address (own counts).
        self.attempts = Attempts(
            {
                "account": per_holder,
                "address": per_address,
                "client": per_holder,
                "client_address": per_address,
            }
        )
        self.clients = ClientService(
            db,
            settings,
            self.signer,
            self.attempts,
            secret_key_for(self._key_secret),
            revocations,
        )

    # --- accounts -----------------------------------------------------------------------------

    async def signup(
        self,
        email: str,
        password: str,
        name: str,
        profile_pic_url: str | None,
        client: ClientInfo,
        roles: Sequence[str] = ("LEARNER",),
    ) -> tuple[User, IssuedTokens]:
        email = email.strip().lower()
        password_hash = await self.passwords.hash(password)
        try:
            async with self.db.transaction() as conn:
                user = await store.insert_user(
                    conn, uuid.uuid4(), email, name, profile_pic_url, password_hash, roles
                )
                await outbox.add(conn, _profile(UserCreated, user).event())
                tokens = await self._open_session(conn, user, client)
        except ConstraintError as exc:
            raise conflict("auth.email_taken", "An account with this e-mail exists") from exc
        log.info("user_signed_up", user_id=str(user.id))
        return user, tokens

    async def signin(
        self, email: str, password: str, client: ClientInfo
    ) -> tuple[User, IssuedTokens]:
        email = email.strip().lower()
        throttle_keys = [f"account:{email}"]
        if client.address:
            throttle_keys.append(f"address:{client.address}")
        user = await self._admit_attempt(throttle_keys, email)
        if not await self.passwords.verify(user.password_hash if user else None, password):
            log.info("signin_failed", reason="bad_credentials")
            raise unauthorized("auth.bad_credentials", "E-mail or password is wrong")
        assert user is not None
        if user.disabled_at is not None:
            async with self.db.transaction() as conn:
                await self._attempt_succeeded(conn, throttle_keys)
            raise forbidden("auth.user_disabled", "This account is disabled")
        rehashed = None
        if self.passwords.needs_rehash(user.password_hash):
            rehashed = await self.passwords.hash(password)
        async with self.db.transaction() as conn:
            await self._attempt_succeeded(conn, throttle_keys)
            if rehashed is not None:
                await store.set_password(conn, user.id, rehashed)
            tokens = await self._open_session(conn, user, client)
        log.info("user_signed_in", user_id=str(user.id))
        return user, tokens

    async def _admit_attempt(self, throttle_keys: Sequence[str], email: str) -> User | None:
        """429 if a key is locked; else the attempt is counted as a failure now, before any
        password is checked (`Attempts.admit`), and the account (if any) is returned."""
        async with self.db.transaction() as conn:
            wait = await self.attempts.admit(conn, throttle_keys)
            if wait > 0:
                raise Problem(
                    429,
                    "auth.too_many_attempts",
                    "Too many failed sign-ins; try again later",
                    headers={"Retry-After": str(math.ceil(wait))},
                )
            return await store.get_user_by_email(conn, email)

    async def _attempt_succeeded(self, conn: Connection, throttle_keys: Sequence[str]) -> None:
        """The right password: the account's count is cleared, the address's takes back the
        attempt counted in advance (other accounts' failures from there still count)."""
        await self.attempts.succeeded(conn, throttle_keys)

    async def _open_session(self, conn: Connection, user: User, client: ClientInfo) -> IssuedTokens:
        session_id = uuid.uuid4()
        expires = _now() + timedelta(seconds=self.settings.auth_refresh_token_ttl)
        await store.create_session(
            conn, session_id, user.id, expires, client.user_agent, client.address
        )
        return await self._issue(conn, user, session_id)

    async def _issue(self, conn: Connection, user: User, session_id: uuid.UUID) -> IssuedTokens:
        refresh, refresh_hash = new_refresh_token()
        await store.insert_refresh_token(conn, refresh_hash, session_id)
        access = await self.signer.access_token(
            user.id, user.roles, session_id, user.tokens_valid_after
        )
        return IssuedTokens(access, refresh, self.settings.auth_access_token_ttl)

    async def refresh(self, refresh_token: str) -> IssuedTokens:
        token_hash = hash_refresh_token(refresh_token)
        invalid = unauthorized("auth.refresh_invalid", "The refresh token is not valid")
        async with self.db.transaction() as conn:
            session_id = await store.spend_refresh_token(conn, token_hash)
            if session_id is not None:
                session = await store.get_session(conn, session_id)
                user = await store.get_user(conn, session.user_id) if session else None
                if (
                    session is None
                    or user is None
                    or session.revoked_at is not None
                    or session.expires_at <= _now()
                    or user.disabled_at is not None
                ):
                    raise invalid
                await store.touch_session(conn, session_id)
                return await self._issue(conn, user, session_id)
            reused_session = await store.refresh_token_session(conn, token_hash)
        if reused_session is None:
            raise invalid
        # A spent token came back: someone holds a copy. End the whole session, for both holders.
        await self._revoke_sessions(reason="refresh_token_reused", session_id=reused_session)
        log.warning("refresh_token_reused", session_id=str(reused_session))
        raise unauthorized("auth.refresh_reused", "The refresh token was already used")

    async def signout(self, principal: Principal) -> None:
        await self._revoke_sessions(reason="signout", session_id=_uuid(principal.session_id))

    async def _revoke_sessions(
        self,
        *,
        reason: str,
        session_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        keep: uuid.UUID | None = None,
        conn: Connection | None = None,
    ) -> None:
        if conn is None:
            async with self.db.transaction() as own:
                revoked = await self._revoke_in(own, reason, session_id, user_id, keep)
        else:
            revoked = await self._revoke_in(conn, reason, session_id, user_id, keep)
        if self.revocations is not None:
            until = int(time.time()) + self.settings.auth_access_token_ttl + 60
            for sid, _uid in revoked:
                self.revocations.revoke_session(str(sid), until)

    async def _revoke_in(
        self,
        conn: Connection,
        reason: str,
        session_id: uuid.UUID | None,
        user_id: uuid.UUID | None,
        keep: uuid.UUID | None,
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        revoked = await store.revoke_sessions(
            conn, reason=reason, session_id=session_id, user_id=user_id, keep=keep
        )
        # Access tokens of a revoked session live on until they expire: receivers must keep the
        # revocation that long, and no longer.
        expires_at = int(time.time()) + self.settings.auth_access_token_ttl + 60
        for sid, uid in revoked:
            event = SessionRevoked(
                session_id=sid, user_id=uid, expires_at=expires_at, reason=reason
            ).event()
            await outbox.add(conn, event)
        return revoked

    async def ensure_active_session(self, principal: Principal) -> None:
        """The auth service's own routes ask the database, which is never behind on revocations."""
        await self.me(principal)

    # --- profile ------------------------------------------------------------------------------

    async def me(self, principal: Principal) -> User:
        """The token's user, if its session is still live (else 401, revoked)."""
        user = await store.active_session_user(
            self.db, _uuid(principal.session_id), principal.issued_at
        )
        if user is None or str(user.id) != principal.user_id:
            raise unauthorized("auth.token_revoked", "The token has been revoked")
        return user

    async def update_me(self, principal: Principal, changes: dict[str, Any]) -> User:
        user_id = _uuid(principal.user_id)
        async with self.db.transaction() as conn:
            if changes:
                await store.update_profile(conn, user_id, changes)
            user = await store.get_user(conn, user_id)
            if user is None:
                raise unauthorized("auth.token_revoked", "The account no longer exists")
            if changes:
                await outbox.add(conn, _profile(UserUpdated, user).event())
        return user

    async def change_password(self, principal: Principal, current: str, new: str) -> None:
        user = await self.me(principal)
        if not await self.passwords.verify(user.password_hash, current):
            raise Problem(403, "auth.bad_credentials", "The current password is wrong")
        new_hash = await self.passwords.hash(new)
        async with self.db.transaction() as conn:
            await store.set_password(conn, user.id, new_hash)
            await self._revoke_sessions(
                reason="password_changed",
                user_id=user.id,
                keep=_uuid(principal.session_id),
                conn=conn,
            )

    async def public_profile(self, user_id: uuid.UUID) -> User:
        async with self.db.connect() as conn:
            user = await store.get_user(conn, user_id)
        if user is None:
            raise not_found("auth.user_not_found", "No such user")
        return user

    async def public_profiles(self, ids: Sequence[uuid.UUID]) -> list[User]:
        async with self.db.connect() as conn:
            return await store.get_users(conn, ids)

    # --- administration -----------------------------------------------------------------------

    async def list_users(
        self, q: str | None, limit: int, cursor: str | None
    ) -> tuple[list[User], str | None]:
        async with self.db.connect() as conn:
            rows = await store.list_users(conn, q, limit, decode_time_uuid_cursor(cursor))
        return rows[:limit], next_cursor_for(rows, limit, lambda u: (u.created_at, u.id))

    async def set_roles(
        self, user_id: uuid.UUID, roles: Sequence[str], *, acting: Principal | None = None
    ) -> User:
        wanted = sorted(set(roles))
        if acting is not None and acting.user_id == str(user_id) and "ADMIN" not in wanted:
            raise conflict("auth.self_lockout", "An admin cannot remove their own ADMIN role")
        async with self.db.transaction() as conn:
            unknown = set(wanted) - await store.known_roles(conn)
            if unknown:
                raise Problem(
                    422,
                    "validation_failed",
                    "Unknown role",
                    errors=[
                        {"field": "roles", "message": f"unknown role: {r}"} for r in sorted(unknown)
                    ],
                )
            user = await store.get_user(conn, user_id)
            if user is None:
                raise not_found("auth.user_not_found", "No such user")
            removed = sorted(user.roles - set(wanted))
            if set(wanted) == user.roles:
                return user  # nothing changes, nothing is announced
            await store.set_roles(conn, user_id, wanted)
            valid_after = user.tokens_valid_after
            if removed:
                # Tokens that still carry a removed role must stop working now, everywhere.
                valid_after = next_cutoff(user.tokens_valid_after)
                await store.set_tokens_valid_after(conn, user_id, valid_after)
            await outbox.add(
                conn,
                UserRolesChanged(
                    user_id=user_id,
                    roles=wanted,
                    removed_roles=removed,
                    tokens_valid_after=valid_after,
                ).event(),
            )
            updated = await store.get_user(conn, user_id)
        assert updated is not None
        if removed and self.revocations is not None:
            self.revocations.revoke_user_before(
                str(user_id), valid_after, valid_after + self.settings.auth_access_token_ttl + 60
            )
        return updated

    async def set_disabled(
        self, user_id: uuid.UUID, disabled: bool, *, acting: Principal | None = None
    ) -> None:
        if disabled and acting is not None and acting.user_id == str(user_id):
            raise conflict("auth.self_lockout", "An admin cannot disable their own account")
        async with self.db.transaction() as conn:
            user = await store.get_user(conn, user_id)
            if user is None:
                raise not_found("auth.user_not_found", "No such user")
            if not await store.set_disabled(conn, user_id, disabled):
                return  # already in that state: nothing changes, nothing is announced
            if disabled:
                valid_after = next_cutoff(user.tokens_valid_after)
                await store.set_tokens_valid_after(conn, user_id, valid_after)
                await self._revoke_sessions(reason="user_disabled", user_id=user_id, conn=conn)
                event = UserDisabled(user_id=user_id, tokens_valid_after=valid_after).event()
            else:
                event = UserEnabled(user_id=user_id).event()
            await outbox.add(conn, event)

    # --- API keys -----------------------------------------------------------------------------

    async def create_api_key(self, name: str, comment: str | None) -> tuple[ApiKey, str]:
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        async with self.db.transaction() as conn:
            record = await store.insert_api_key(
                conn, uuid.uuid4(), name, comment, _hash_api_key(key), key[:10]
            )
            await outbox.add(conn, ApiKeyCreated(id=record.id, name=name).event())
        return record, key

    async def list_api_keys(
        self, limit: int, cursor: str | None
    ) -> tuple[list[ApiKey], str | None]:
        async with self.db.connect() as conn:
            rows = await store.list_api_keys(conn, limit, decode_time_uuid_cursor(cursor))
        return rows[:limit], next_cursor_for(rows, limit, lambda k: (k.created_at, k.id))

    async def revoke_api_key(self, key_id: uuid.UUID) -> None:
        async with self.db.transaction() as conn:
            if not await store.revoke_api_key(conn, key_id):
                raise not_found("auth.apikey_not_found", "No such API key")
            await outbox.add(conn, ApiKeyRevoked(id=key_id).event())

    async def verify_api_key(self, key: str) -> ApiKey:
        if not key.startswith(API_KEY_PREFIX) or len(key) > 200:
            raise forbidden("auth.apikey_invalid", "The API key is not valid")
        async with self.db.connect() as conn:
            record = await store.api_key_by_hash(conn, _hash_api_key(key))
        if record is None:
            raise forbidden("auth.apikey_invalid", "The API key is not valid")
        return record

    # --- signing keys -------------------------------------------------------------------------

    async def _load_active_key(self) -> keys.KeyPair:
        async with self.db.connect() as conn:
            found = await store.active_signing_key(conn)
        if found is None:
            return await self.ensure_signing_key()
        return keys.from_pem(found[0], found[1], self._key_secret)

    async def ensure_signing_key(self) -> keys.KeyPair:
        """The active key, created if there is none (replicas racing at start make one).

        With a secret, keys stored in plaintext before it was set are encrypted in place first.
        """
        async with self.db.transaction() as conn:
            await store.lock(conn, "auth.signing_keys")
            if self._key_secret:
                await self._encrypt_plaintext_keys(conn)
            found = await store.active_signing_key(conn)
            if found is not None:
                return keys.from_pem(found[0], found[1], self._key_secret)
            pair = keys.generate()
            await self._insert_key(conn, pair)
        return pair

    async def rotate_keys(self) -> str:
        """Make a new key the signing key; the old ones stay published until their tokens expire."""
        pair = keys.generate()
        publish_until = _now() + timedelta(seconds=self.settings.auth_access_token_ttl + 300)
        async with self.db.transaction() as conn:
            await store.lock(conn, "auth.signing_keys")
            await self._insert_key(conn, pair)
            await store.retire_signing_keys(conn, pair.kid, publish_until)
            await outbox.add(conn, KeysRotated(kid=pair.kid).event())
        self.signer.forget_key()
        log.info("signing_key_rotated", kid=pair.kid)
        return pair.kid

    async def _encrypt_plaintext_keys(self, conn: Connection) -> None:
        encrypted = []
        for kid, pem in await store.signing_key_pems(conn):
            if not keys.is_encrypted(pem):
                pair = keys.from_pem(kid, pem, None)
                await store.set_signing_key_pem(conn, kid, keys.to_pem(pair, self._key_secret))
                encrypted.append(kid)
        if encrypted:
            log.info("signing_keys_encrypted_in_place", kids=encrypted)

    async def _insert_key(self, conn: Connection, pair: keys.KeyPair) -> None:
        await store.insert_signing_key(
            conn,
            pair.kid,
            keys.ALGORITHM,
            keys.to_pem(pair, self._key_secret),
            orjson.dumps(pair.public_jwk).decode(),
        )

    async def jwks(self) -> dict[str, Any]:
        async with self.db.connect() as conn:
            published = await store.published_jwks(conn)
        return {"keys": [orjson.loads(jwk) for jwk in published]}

    # --- housekeeping -------------------------------------------------------------------------

    async def prune(self) -> dict[str, int]:
        """Delete expired sessions, stale throttles, unpublished keys, expired client-token
        revocations and old idempotency keys."""
        async with self.db.transaction() as conn:
            counts = await store.prune_expired(conn, keep_days=7)
        counts["idempotency_keys"] = await idempotency.prune(self.db)
        return counts

    # --- seed data ----------------------------------------------------------------------------

    async def seed(self) -> dict[str, Any]:
        """Idempotent first-run data: the admin user and a demo API key, secrets generated.

        A secret is reported only when it was just created; it cannot be recovered later.
        """
        await self.ensure_signing_key()
        result: dict[str, Any] = {"admin": None, "apiKey": None}
        async with self.db.transaction() as conn:
            await store.lock(conn, "auth.seed")
            has_admin = await store.admin_exists(conn)
            demo = await store.find_api_key_by_name(conn, "demo")
        if not has_admin:
            password = secrets.token_urlsafe(18)
            email = self.settings.auth_seed_admin_email
            await self.signup_without_session(email, password, "Administrator", ROLES)
            result["admin"] = {"email": email, "password": password}
        if demo is None:
            record, key = await self.create_api_key("demo", "created by seed for local use")
            result["apiKey"] = {"id": str(record.id), "name": record.name, "key": key}
        return result

    async def signup_without_session(
        self, email: str, password: str, name: str, roles: Sequence[str]
    ) -> User:
        password_hash = await self.passwords.hash(password)
        async with self.db.transaction() as conn:
            user = await store.insert_user(
                conn, uuid.uuid4(), email.strip().lower(), name, None, password_hash, roles
            )
            await outbox.add(conn, _profile(UserCreated, user).event())
        return user


def _profile(kind: type[P], user: User) -> P:
    """The user's public profile as event `kind` (`mosaic_kit.contracts.auth`)."""
    return kind(
        id=user.id, name=user.name, profile_pic_url=user.profile_pic_url, roles=sorted(user.roles)
    )


def build_service(settings: AuthSettings, db: Database, revocations: RevocationSet) -> AuthService:
    """The service from its settings: what the app assembles and the operator commands use."""
    passwords = Passwords(
        settings.auth_argon2_time_cost,
        settings.auth_argon2_memory_kib,
        settings.auth_argon2_parallelism,
    )
    return AuthService(db, settings, passwords, revocations)
