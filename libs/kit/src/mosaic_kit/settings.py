"""12-factor settings shared by every service.

Values come, highest priority first, from CLI flags (passed as init kwargs by `mosaic_kit.fastapi.cli`),
environment variables, a `.env` file, and a secrets directory holding one file per secret (the way
Kubernetes mounts them; its path is taken from `SECRETS_DIR`). Field names map to upper-case
environment variables without a prefix, so infrastructure settings read the conventional names
(`DATABASE_URL`, `NATS_URL`, `REDIS_URL`); service-specific fields carry the service name in the
field itself (`auth_access_token_ttl` -> `AUTH_ACCESS_TOKEN_TTL`).
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ServiceSettings"]

_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,47}")


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ServiceSettings(BaseSettings):
    """Settings every service has. Subclass it and add the service's own fields."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", validate_default=True)

    service_name: str = Field("service", description="Name used in logs, metrics, traces, NATS.")
    instance_id: str = Field(
        default_factory=_default_instance_id,
        description="This replica's id in logs, metrics and discovery (default: host-pid).",
    )
    environment: Literal["dev", "test", "prod"] = Field("dev", description="Deployment kind.")
    host: str = Field("127.0.0.1", description="Interface the HTTP server binds.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    log_level: str = Field("INFO", description="Minimum log level.")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto = console on a TTY, JSON otherwise."
    )
    database_url: SecretStr = Field(
        SecretStr("postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"),
        description="SQLAlchemy URL of the PostgreSQL database (asyncpg driver).",
    )
    db_schema: str = Field("public", description="PostgreSQL schema this service owns.")
    db_pool_size: int = Field(10, ge=1, description="Connections kept in the pool.")
    db_max_overflow: int = Field(
        0,
        ge=0,
        description="Extra connections allowed under load; each is opened for one checkout and "
        "closed after it, so under steady load they churn (a handshake per request).",
    )
    nats_url: str = Field(
        "nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated."
    )
    nats_user: str | None = Field(
        None, description="User name on a NATS server with authorization (with NATS_PASSWORD)."
    )
    nats_password: SecretStr | None = Field(
        None, description="Password of NATS_USER (a secret: from SECRETS_DIR or the environment)."
    )
    nats_creds_file: str | None = Field(
        None,
        description="A NATS .creds file (user JWT + NKey seed) for a server run with accounts "
        "(operator mode); takes the place of NATS_USER/NATS_PASSWORD.",
    )
    nats_nkey_seed_file: str | None = Field(
        None, description="A file holding an NKey seed (SU...) for a server that knows the NKey."
    )
    nats_inbox_prefix: str = Field(
        "_INBOX",
        description="Prefix of this process's reply subjects; a server with per-service "
        "permissions lets each user subscribe only to its own (`mosaic up` gives _INBOX_<name>).",
    )
    nats_stream_replicas: int = Field(
        1,
        ge=1,
        le=5,
        description="Servers of the JetStream cluster that keep each of the service's event "
        "streams (and the DLQ); 3 survives the loss of one. A client cannot tell the cluster's "
        "size, so whoever runs it sets this (`mosaic up --nats-cluster 3`, the manifests).",
    )
    nats_request_timeout: float = Field(2.0, gt=0, description="Seconds an internal request waits.")
    redis_url: SecretStr | None = Field(None, description="Redis URL for shared caches, if any.")
    otel_exporter_otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP endpoint; tracing is off (no cost) when unset."
    )
    shutdown_grace: float = Field(
        10.0, ge=0, description="Seconds to drain in-flight work on stop."
    )
    max_body_bytes: int = Field(
        1_048_576,
        ge=0,
        description="Largest HTTP request body accepted (413 above it); 0 = no limit.",
    )
    readiness_timeout: float = Field(
        2.0, gt=0, description="Seconds each /readyz check may take before it counts as failed."
    )

    advertise_url: str | None = Field(
        None,
        description="HTTP address other processes reach this instance at, published for "
        "discovery in $SRV.INFO (default: http://HOST:PORT).",
    )

    @field_validator("db_schema", check_fields=False)
    @classmethod
    def _check_schema(cls, schema: str) -> str:
        # Quoted into DDL by migrations and tools (a rebuild's `<schema>_next_<hex>`): an
        # identifier, short enough for what is derived from it to fit PostgreSQL's 63 bytes.
        if not _SCHEMA.fullmatch(schema):
            raise ValueError("a schema is 1-48 of a-z, 0-9 and _, not starting with a digit")
        return schema

    def http_url(self) -> str:
        """Where this instance's HTTP API is reached (for discovery)."""
        return self.advertise_url or f"http://{self.host}:{self.port}"

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Build settings from the environment, `.env`, `SECRETS_DIR` and explicit overrides."""
        secrets_dir = os.environ.get("SECRETS_DIR")
        if secrets_dir:
            return cls(_secrets_dir=secrets_dir, **overrides)
        return cls(**overrides)

    def sqlalchemy_url(self) -> str:
        """The database URL with the asyncpg driver, whatever scheme the operator gave."""
        url = self.database_url.get_secret_value()
        for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        return url
