"""Every SQL statement of the auth service. Functions take the caller's connection, so the
service layer decides what runs in one transaction (state change + outbox event)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from mosaic_auth.models import ApiKey, Client, ClientSecret, Session, Throttle, User
from mosaic_auth.tables import (
    api_keys,
    client_secrets,
    client_token_revocations,
    clients,
    refresh_tokens,
    roles,
    sessions,
    signin_throttle,
    signing_keys,
    user_roles,
    users,
)
from mosaic_kit.sql.db import Database

_roles_agg = (
    select(func.coalesce(func.array_agg(user_roles.c.role), []))
    .where(user_roles.c.user_id == users.c.id)
    .scalar_subquery()
)
_user_columns = [*users.c, _roles_agg.label("roles")]


def _user(row: Row[Any]) -> User:
    return _user_of(row._mapping)


def _user_of(m: Mapping[Any, Any]) -> User:
    return User(
        id=m["id"],
        email=m["email"],
        name=m["name"],
        profile_pic_url=m["profile_pic_url"],
        roles=frozenset(m["roles"] or ()),
        created_at=m["created_at"],
        disabled_at=m["disabled_at"],
        tokens_valid_after=m["tokens_valid_after"],
        password_hash=m["password_hash"],
    )


# --- users ---------------------------------------------------------------------------------


async def insert_user(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    email: str,
    name: str,
    profile_pic_url: str | None,
    password_hash: str,
    roles: Iterable[str],
) -> User:
    await conn.execute(
        users.insert().values(
            id=user_id,
            email=email,
            name=name,
            profile_pic_url=profile_pic_url,
            password_hash=password_hash,
        )
    )
    await conn.execute(user_roles.insert(), [{"user_id": user_id, "role": r} for r in roles])
    user = await get_user(conn, user_id)
    assert user is not None
    return user


async def get_user(conn: AsyncConnection, user_id: uuid.UUID) -> User | None:
    row = (await conn.execute(select(*_user_columns).where(users.c.id == user_id))).first()
    return _user(row) if row else None


async def get_user_by_email(conn: AsyncConnection, email: str) -> User | None:
    row = (await conn.execute(select(*_user_columns).where(users.c.email == email))).first()
    return _user(row) if row else None


async def get_users(conn: AsyncConnection, ids: Sequence[uuid.UUID]) -> list[User]:
    rows = await conn.execute(select(*_user_columns).where(users.c.id.in_(ids)))
    return [_user(r) for r in rows]


async def list_users(
    conn: AsyncConnection, q: str | None, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[User]:
    """Newest first, `limit + 1` rows so the caller can tell whether a next page exists."""
    stmt = select(*_user_columns)
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(or_(users.c.email.ilike(pattern), users.c.name.ilike(pattern)))
    if after:
        stmt = stmt.where(tuple_(users.c.created_at, users.c.id) < tuple_(*after))
    stmt = stmt.order_by(users.c.created_at.desc(), users.c.id.desc()).limit(limit + 1)
    return [_user(r) for r in await conn.execute(stmt)]


async def update_profile(conn: AsyncConnection, user_id: uuid.UUID, values: dict[str, Any]) -> None:
    await conn.execute(
        update(users).where(users.c.id == user_id).values(**values, updated_at=func.now())
    )


async def set_password(conn: AsyncConnection, user_id: uuid.UUID, password_hash: str) -> None:
    await update_profile(conn, user_id, {"password_hash": password_hash})


async def set_roles(conn: AsyncConnection, user_id: uuid.UUID, roles: Iterable[str]) -> None:
    await conn.execute(delete(user_roles).where(user_roles.c.user_id == user_id))
    rows = [{"user_id": user_id, "role": r} for r in roles]
    if rows:  # no rows is no insert: SQLAlchemy would run `INSERT ... DEFAULT VALUES` once
        await conn.execute(user_roles.insert(), rows)


async def known_roles(conn: AsyncConnection) -> set[str]:
    return set((await conn.execute(select(roles.c.code))).scalars())


async def set_tokens_valid_after(conn: AsyncConnection, user_id: uuid.UUID, epoch: int) -> None:
    await conn.execute(
        update(users)
        .where(users.c.id == user_id)
        .values(tokens_valid_after=func.greatest(users.c.tokens_valid_after, epoch))
    )


async def set_disabled(conn: AsyncConnection, user_id: uuid.UUID, disabled: bool) -> bool:
    """Returns True when the state changed."""
    cond = users.c.disabled_at.is_(None) if disabled else users.c.disabled_at.is_not(None)
    result = await conn.execute(
        update(users)
        .where(users.c.id == user_id, cond)
        .values(disabled_at=func.now() if disabled else None, updated_at=func.now())
    )
    return result.rowcount > 0


async def admin_exists(conn: AsyncConnection) -> bool:
    row = await conn.execute(select(user_roles.c.user_id).where(user_roles.c.role == "ADMIN"))
    return row.first() is not None


# --- sessions and refresh tokens --------------------------------------------------------------


async def create_session(
    conn: AsyncConnection,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    expires_at: datetime,
    user_agent: str | None,
    client_address: str | None,
) -> None:
    await conn.execute(
        sessions.insert().values(
            id=session_id,
            user_id=user_id,
            expires_at=expires_at,
            user_agent=(user_agent or "")[:500] or None,
            client_address=client_address,
        )
    )


async def get_session(conn: AsyncConnection, session_id: uuid.UUID) -> Session | None:
    row = (await conn.execute(select(sessions).where(sessions.c.id == session_id))).first()
    if row is None:
        return None
    m = row._mapping
    return Session(m["id"], m["user_id"], m["expires_at"], m["revoked_at"])


# Built once: on every authenticated request, building the statement and its cache key cost more
# than running it. The same statement object keeps its cache key, so SQLAlchemy compiles it once.
_active_session_user = (
    select(*_user_columns)
    .join(sessions, sessions.c.user_id == users.c.id)
    .where(
        sessions.c.id == bindparam("session_id", type_=sessions.c.id.type),
        sessions.c.revoked_at.is_(None),
        sessions.c.expires_at > func.now(),
        users.c.disabled_at.is_(None),
        users.c.tokens_valid_after <= bindparam("issued_at", type_=users.c.tokens_valid_after.type),
    )
)


async def active_session_user(db: Database, session_id: uuid.UUID, issued_at: int) -> User | None:
    """The user of session `session_id` if it is live (not revoked, not expired), the user is
    enabled and their tokens_valid_after does not postdate `issued_at`: the authoritative token
    check that every authenticated auth route makes, so one statement in one round trip
    (`Database.read_one`)."""
    params = {"session_id": session_id, "issued_at": issued_at}
    row = await db.read_one(_active_session_user, params)
    return _user_of(row) if row else None


async def insert_refresh_token(
    conn: AsyncConnection, token_hash: bytes, session_id: uuid.UUID
) -> None:
    await conn.execute(refresh_tokens.insert().values(token_hash=token_hash, session_id=session_id))


async def spend_refresh_token(conn: AsyncConnection, token_hash: bytes) -> uuid.UUID | None:
    """Atomically mark an unspent token spent; its session id, or None if none was unspent."""
    result = await conn.execute(
        update(refresh_tokens)
        .where(refresh_tokens.c.token_hash == token_hash, refresh_tokens.c.spent_at.is_(None))
        .values(spent_at=func.now())
        .returning(refresh_tokens.c.session_id)
    )
    row = result.first()
    return row[0] if row else None


async def refresh_token_session(conn: AsyncConnection, token_hash: bytes) -> uuid.UUID | None:
    row = (
        await conn.execute(
            select(refresh_tokens.c.session_id).where(refresh_tokens.c.token_hash == token_hash)
        )
    ).first()
    return row[0] if row else None


async def touch_session(conn: AsyncConnection, session_id: uuid.UUID) -> None:
    await conn.execute(
        update(sessions).where(sessions.c.id == session_id).values(last_used_at=func.now())
    )


async def revoke_sessions(
    conn: AsyncConnection,
    *,
    reason: str,
    session_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    keep: uuid.UUID | None = None,
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Revoke live sessions matching the filters; the (session id, user id) pairs revoked."""
    conds = [sessions.c.revoked_at.is_(None), sessions.c.expires_at > func.now()]
    if session_id is not None:
        conds.append(sessions.c.id == session_id)
    if user_id is not None:
        conds.append(sessions.c.user_id == user_id)
    if keep is not None:
        conds.append(sessions.c.id != keep)
    result = await conn.execute(
        update(sessions)
        .where(and_(*conds))
        .values(revoked_at=func.now(), revoked_reason=reason)
        .returning(sessions.c.id, sessions.c.user_id)
    )
    return [(r[0], r[1]) for r in result]


# --- API keys ---------------------------------------------------------------------------------


def _api_key(row: Row[Any]) -> ApiKey:
    m = row._mapping
    return ApiKey(
        m["id"], m["name"], m["comment"], m["key_prefix"], m["created_at"], m["revoked_at"]
    )


async def insert_api_key(
    conn: AsyncConnection,
    key_id: uuid.UUID,
    name: str,
    comment: str | None,
    key_hash: bytes,
    key_prefix: str,
) -> ApiKey:
    row = (
        await conn.execute(
            api_keys.insert()
            .values(id=key_id, name=name, comment=comment, key_hash=key_hash, key_prefix=key_prefix)
            .returning(*api_keys.c)
        )
    ).one()
    return _api_key(row)


async def list_api_keys(
    conn: AsyncConnection, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[ApiKey]:
    stmt = select(api_keys).where(api_keys.c.revoked_at.is_(None))
    if after:
        stmt = stmt.where(tuple_(api_keys.c.created_at, api_keys.c.id) < tuple_(*after))
    stmt = stmt.order_by(api_keys.c.created_at.desc(), api_keys.c.id.desc()).limit(limit + 1)
    return [_api_key(r) for r in await conn.execute(stmt)]


async def find_api_key_by_name(conn: AsyncConnection, name: str) -> ApiKey | None:
    row = (
        await conn.execute(
            select(api_keys).where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
        )
    ).first()
    return _api_key(row) if row else None


async def revoke_api_key(conn: AsyncConnection, key_id: uuid.UUID) -> bool:
    result = await conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    return result.rowcount > 0


async def api_key_by_hash(conn: AsyncConnection, key_hash: bytes) -> ApiKey | None:
    row = (
        await conn.execute(
            select(api_keys).where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
        )
    ).first()
    return _api_key(row) if row else None


# --- client applications (OAuth2 client credentials) -----------------------------------------


def _client_secret(m: Mapping[Any, Any]) -> ClientSecret:
    return ClientSecret(m["id"], m["created_at"], m["last_used_at"])


async def _secrets_of(
    conn: AsyncConnection, client_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[ClientSecret]]:
    found: dict[uuid.UUID, list[ClientSecret]] = {cid: [] for cid in client_ids}
    if not client_ids:
        return found
    rows = await conn.execute(
        select(client_secrets)
        .where(client_secrets.c.client_id.in_(client_ids))
        .order_by(client_secrets.c.created_at, client_secrets.c.id)
    )
    for row in rows:
        found[row._mapping["client_id"]].append(_client_secret(row._mapping))
    return found


def _client(m: Mapping[Any, Any], secrets: Sequence[ClientSecret]) -> Client:
    return Client(
        id=m["id"],
        name=m["name"],
        scopes=tuple(m["scopes"]),
        audience=tuple(m["audience"]),
        created_at=m["created_at"],
        disabled_at=m["disabled_at"],
        tokens_valid_after=m["tokens_valid_after"],
        secrets=tuple(secrets),
    )


async def insert_client(
    conn: AsyncConnection,
    client_id: uuid.UUID,
    name: str,
    scopes: Sequence[str],
    audience: Sequence[str],
) -> None:
    await conn.execute(
        clients.insert().values(
            id=client_id, name=name, scopes=list(scopes), audience=list(audience)
        )
    )


async def get_client(
    conn: AsyncConnection, client_id: uuid.UUID, *, for_update: bool = False
) -> Client | None:
    """The client with its secrets (oldest first); `for_update` locks its row until the end of
    the transaction, so that two changes to its secrets are made one after the other."""
    stmt = select(clients).where(clients.c.id == client_id)
    if for_update:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    if row is None:
        return None
    return _client(row._mapping, (await _secrets_of(conn, [client_id]))[client_id])


async def list_clients(
    conn: AsyncConnection, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[Client]:
    """Newest first, `limit + 1` rows so the caller can tell whether a next page exists."""
    stmt = select(clients)
    if after:
        stmt = stmt.where(tuple_(clients.c.created_at, clients.c.id) < tuple_(*after))
    stmt = stmt.order_by(clients.c.created_at.desc(), clients.c.id.desc()).limit(limit + 1)
    rows = [r._mapping for r in await conn.execute(stmt)]
    secrets = await _secrets_of(conn, [m["id"] for m in rows])
    return [_client(m, secrets[m["id"]]) for m in rows]


async def client_secret_hashes(
    conn: AsyncConnection, client_id: uuid.UUID
) -> list[tuple[uuid.UUID, bytes]]:
    rows = await conn.execute(
        select(client_secrets.c.id, client_secrets.c.secret_hash).where(
            client_secrets.c.client_id == client_id
        )
    )
    return [(r[0], r[1]) for r in rows]


async def insert_client_secret(
    conn: AsyncConnection, secret_id: uuid.UUID, client_id: uuid.UUID, secret_hash: bytes
) -> ClientSecret:
    row = (
        await conn.execute(
            client_secrets.insert()
            .values(id=secret_id, client_id=client_id, secret_hash=secret_hash)
            .returning(*client_secrets.c)
        )
    ).one()
    return _client_secret(row._mapping)


async def delete_client_secret(
    conn: AsyncConnection, client_id: uuid.UUID, secret_id: uuid.UUID
) -> bool:
    result = await conn.execute(
        delete(client_secrets).where(
            client_secrets.c.id == secret_id, client_secrets.c.client_id == client_id
        )
    )
    return result.rowcount > 0


async def touch_client_secret(conn: AsyncConnection, secret_id: uuid.UUID) -> None:
    await conn.execute(
        update(client_secrets)
        .where(client_secrets.c.id == secret_id)
        .values(last_used_at=func.now())
    )


async def set_client_disabled(
    conn: AsyncConnection, client_id: uuid.UUID, disabled: bool, tokens_valid_after: int
) -> None:
    """Disable (moving the cut-off forward, never back) or enable (the cut-off stays)."""
    await conn.execute(
        update(clients)
        .where(clients.c.id == client_id)
        .values(
            disabled_at=func.now() if disabled else None,
            tokens_valid_after=func.greatest(clients.c.tokens_valid_after, tokens_valid_after),
        )
    )


async def delete_client(conn: AsyncConnection, client_id: uuid.UUID) -> None:
    await conn.execute(delete(clients).where(clients.c.id == client_id))


async def revoke_client_token(
    conn: AsyncConnection, jti: str, client_id: uuid.UUID, expires_at: datetime
) -> bool:
    """True when it was not revoked before (a repeated revocation announces nothing)."""
    stmt = (
        insert(client_token_revocations)
        .values(jti=jti, client_id=client_id, expires_at=expires_at)
        .on_conflict_do_nothing(index_elements=[client_token_revocations.c.jti])
    )
    return (await conn.execute(stmt)).rowcount > 0


async def client_token_revoked(conn: AsyncConnection, jti: str) -> bool:
    row = await conn.execute(
        select(client_token_revocations.c.jti).where(client_token_revocations.c.jti == jti)
    )
    return row.first() is not None


# --- signing keys -----------------------------------------------------------------------------


async def insert_signing_key(
    conn: AsyncConnection, kid: str, algorithm: str, private_pem: bytes, public_jwk: str
) -> None:
    await conn.execute(
        signing_keys.insert().values(
            kid=kid, algorithm=algorithm, private_pem=private_pem, public_jwk=public_jwk
        )
    )


async def active_signing_key(conn: AsyncConnection) -> tuple[str, bytes] | None:
    row = (
        await conn.execute(
            select(signing_keys.c.kid, signing_keys.c.private_pem)
            .where(signing_keys.c.retired_at.is_(None))
            .order_by(signing_keys.c.created_at.desc())
            .limit(1)
        )
    ).first()
    return (row[0], row[1]) if row else None


async def signing_key_pems(conn: AsyncConnection) -> list[tuple[str, bytes]]:
    rows = await conn.execute(select(signing_keys.c.kid, signing_keys.c.private_pem))
    return [(r[0], r[1]) for r in rows]


async def set_signing_key_pem(conn: AsyncConnection, kid: str, private_pem: bytes) -> None:
    await conn.execute(
        update(signing_keys).where(signing_keys.c.kid == kid).values(private_pem=private_pem)
    )


async def retire_signing_keys(conn: AsyncConnection, keep: str, publish_until: datetime) -> None:
    await conn.execute(
        update(signing_keys)
        .where(signing_keys.c.retired_at.is_(None), signing_keys.c.kid != keep)
        .values(retired_at=func.now(), publish_until=publish_until)
    )


async def published_jwks(conn: AsyncConnection) -> list[str]:
    rows = await conn.execute(
        select(signing_keys.c.public_jwk)
        .where(
            or_(signing_keys.c.publish_until.is_(None), signing_keys.c.publish_until > func.now())
        )
        .order_by(signing_keys.c.created_at.desc())
    )
    return list(rows.scalars())


async def lock(conn: AsyncConnection, name: str) -> None:
    """A transaction-scoped advisory lock (e.g. so that two replicas don't both create a key)."""
    await conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(name))))


# --- sign-in throttling -----------------------------------------------------------------------


async def get_throttles(conn: AsyncConnection, keys: Sequence[str]) -> dict[str, Throttle]:
    rows = await conn.execute(select(signin_throttle).where(signin_throttle.c.key.in_(keys)))
    return {
        r._mapping["key"]: Throttle(
            r._mapping["failures"], r._mapping["window_started_at"], r._mapping["locked_until"]
        )
        for r in rows
    }


async def put_throttle(conn: AsyncConnection, key: str, throttle: Throttle) -> None:
    stmt = insert(signin_throttle).values(
        key=key,
        failures=throttle.failures,
        window_started_at=throttle.window_started_at,
        locked_until=throttle.locked_until,
    )
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[signin_throttle.c.key],
            set_={
                "failures": stmt.excluded.failures,
                "window_started_at": stmt.excluded.window_started_at,
                "locked_until": stmt.excluded.locked_until,
            },
        )
    )


async def clear_throttle(conn: AsyncConnection, key: str) -> None:
    await conn.execute(delete(signin_throttle).where(signin_throttle.c.key == key))


async def uncount_attempt(conn: AsyncConnection, key: str, max_failures: int) -> None:
    """Take back one attempt counted in advance; below the limit the key is not locked.

    At or above it the key stays locked: earlier failures alone reach the limit.
    """
    remaining = signin_throttle.c.failures - 1
    await conn.execute(
        update(signin_throttle)
        .where(signin_throttle.c.key == key, signin_throttle.c.failures > 0)
        .values(
            failures=remaining,
            locked_until=case(
                (remaining < max_failures, None), else_=signin_throttle.c.locked_until
            ),
        )
    )


# --- housekeeping -----------------------------------------------------------------------------


async def prune_expired(conn: AsyncConnection, keep_days: int) -> dict[str, int]:
    """Delete what can no longer matter: sessions expired or revoked long ago (their refresh
    tokens go with them), stale sign-in throttles and retired keys no longer published."""
    horizon = func.now() - func.make_interval(0, 0, 0, keep_days)
    sessions_gone = await conn.execute(
        delete(sessions).where(
            or_(sessions.c.expires_at < horizon, sessions.c.revoked_at < horizon)
        )
    )
    throttles_gone = await conn.execute(
        delete(signin_throttle).where(
            signin_throttle.c.window_started_at < horizon,
            or_(
                signin_throttle.c.locked_until.is_(None),
                signin_throttle.c.locked_until < func.now(),
            ),
        )
    )
    keys_gone = await conn.execute(
        delete(signing_keys).where(
            signing_keys.c.publish_until.is_not(None), signing_keys.c.publish_until < horizon
        )
    )
    # A revoked client token is refused by its `exp` alone once it has expired.
    revocations_gone = await conn.execute(
        delete(client_token_revocations).where(client_token_revocations.c.expires_at < func.now())
    )
    return {
        "sessions": sessions_gone.rowcount,
        "throttles": throttles_gone.rowcount,
        "signing_keys": keys_gone.rowcount,
        "client_token_revocations": revocations_gone.rowcount,
    }
