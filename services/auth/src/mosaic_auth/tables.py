"""The auth schema. Migrations in `migrations/versions` create exactly these tables."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from mosaic_kit.sql.db import new_metadata
from mosaic_kit.sql.idempotency import idempotency_table
from mosaic_kit.sql.outbox import outbox_table
from mosaic_kit.sql.processed import processed_events_table

metadata = new_metadata()

ROLES = ("LEARNER", "AUTHOR", "EDITOR", "ADMIN")

roles = Table(
    "roles",
    metadata,
    Column("code", String(32), primary_key=True),
    Column("description", Text, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("profile_pic_url", Text),
    Column("password_hash", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("disabled_at", DateTime(timezone=True)),
    # Access tokens issued before this epoch second are no longer honoured (role removal,
    # disabling): the cheap way to revoke every token of a user without listing them.
    Column("tokens_valid_after", BigInteger, nullable=False, server_default="0"),
)
Index("ix_users_created_at_id", users.c.created_at, users.c.id)

user_roles = Table(
    "user_roles",
    metadata,
    Column(
        "user_id", UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("role", String(32), ForeignKey("roles.code"), primary_key=True),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "user_id",
        UUID(as_uuid=True),
        ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_used_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoked_reason", String(64)),
    Column("user_agent", Text),
    Column("client_address", String(64)),
)

# One row per refresh token ever issued: spent ones stay so that their reuse is recognised.
refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column(
        "session_id",
        UUID(as_uuid=True),
        ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("issued_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("spent_at", DateTime(timezone=True)),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("comment", Text),
    Column("key_hash", LargeBinary(32), nullable=False, unique=True),
    Column("key_prefix", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
)
Index("ix_api_keys_created_at_id", api_keys.c.created_at, api_keys.c.id)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("algorithm", String(16), nullable=False),
    Column("private_pem", LargeBinary, nullable=False),
    Column("public_jwk", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Retired keys no longer sign but stay in the JWKS until tokens they signed have expired.
    Column("retired_at", DateTime(timezone=True)),
    Column("publish_until", DateTime(timezone=True)),
)

signin_throttle = Table(
    "signin_throttle",
    metadata,
    Column("key", String(400), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("window_started_at", DateTime(timezone=True), nullable=False),
    Column("locked_until", DateTime(timezone=True)),
)

# Third-party applications (OAuth2 client credentials). Deleting one deletes its secrets.
clients = Table(
    "clients",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("scopes", ARRAY(String(64)), nullable=False),
    # Added to the platform audience in the `aud` of the client's tokens.
    Column("audience", ARRAY(String(200)), nullable=False, server_default="{}"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("disabled_at", DateTime(timezone=True)),
    # As for users: the client's tokens issued before this epoch second are refused (disabling).
    Column("tokens_valid_after", BigInteger, nullable=False, server_default="0"),
)
Index("ix_clients_created_at_id", clients.c.created_at, clients.c.id)

# At most two per client (rotation: the new one beside the old during the grace period). Only
# a keyed hash is stored (`mosaic_auth.clients.hash_secret`), never the secret.
client_secrets = Table(
    "client_secrets",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "client_id",
        UUID(as_uuid=True),
        ForeignKey("clients.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("secret_hash", LargeBinary(32), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_used_at", DateTime(timezone=True)),
)

# Client tokens revoked one by one (RFC 7009), kept until they expire: what introspection reads
# (the verifiers learn of them by event). No foreign key: a deleted client's rows may stay until
# they expire, harmlessly.
client_token_revocations = Table(
    "client_token_revocations",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("client_id", UUID(as_uuid=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

outbox = outbox_table(metadata)
processed_events = processed_events_table(metadata)
idempotency_keys = idempotency_table(metadata)
