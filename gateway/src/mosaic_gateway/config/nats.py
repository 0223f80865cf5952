"""The `nats` section: the connection every NATS-backed feature shares."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from mosaic_gateway.config.base import Duration, Spec
from mosaic_kit.nats.connection import NatsCredentials


class NatsSpec(Spec):
    """`nats`: needed by API keys, JWT, NATS discovery, cache invalidation, shared limits."""

    url: str = Field(
        description="NATS server(s), comma-separated: API key checks, JWKS, revocations, "
        "discovery, cache invalidation and shared rate limits go through it."
    )
    connect_timeout: Duration = Field(2.0, gt=0)
    max_wait: Duration = Field(
        30.0, gt=0, description="How long a starting worker retries its first connection."
    )
    user: str | None = Field(
        None, description="User name on a NATS server with authorization (`mosaic up`: gateway)."
    )
    password_file: str | None = Field(
        None,
        description="File holding `user`'s password (never the password itself in this file), "
        "absolute or relative to the gateway's working directory; read when a worker connects.",
    )
    creds_file: str | None = Field(
        None, description="A NATS .creds file (user JWT + NKey seed) for a server with accounts."
    )
    nkey_seed_file: str | None = Field(None, description="A file holding an NKey seed (SU...).")
    inbox_prefix: str = Field(
        "_INBOX",
        description="Prefix of the gateway's reply subjects: the inboxes its NATS permissions "
        "let it subscribe to (`mosaic up`: _INBOX_gateway).",
        pattern=r"^[A-Za-z0-9_-]+$",
    )

    @model_validator(mode="after")
    def _password_needs_user(self) -> NatsSpec:
        if self.password_file is not None and self.user is None:
            raise ValueError("nats.password_file needs nats.user")
        return self

    def credentials(self) -> NatsCredentials:
        """Who the gateway is on NATS; the password is read from its file now."""
        password = None
        if self.password_file is not None:
            try:
                password = Path(self.password_file).read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"nats.password_file {self.password_file}: {exc.strerror or exc}"
                ) from None
        return NatsCredentials(
            user=self.user,
            password=password,
            creds_file=self.creds_file,
            nkey_seed_file=self.nkey_seed_file,
            inbox_prefix=self.inbox_prefix,
        )
