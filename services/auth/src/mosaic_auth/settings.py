"""Settings of the auth service (the shared ones come from `ServiceSettings`)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from mosaic_kit.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    service_name: str = Field("auth", description="Name used in logs, metrics, traces, NATS.")
    db_schema: str = Field("auth", description="PostgreSQL schema this service owns.")
    port: int = Field(8001, ge=0, le=65535, description="HTTP port (0 picks a free one).")

    auth_issuer: str = Field("mosaic-auth", description="`iss` of every access token.")
    auth_audience: str = Field("mosaic", description="`aud` of every access token.")
    auth_access_token_ttl: int = Field(900, ge=30, description="Access token lifetime, seconds.")
    auth_client_token_ttl: int = Field(
        900,
        ge=30,
        le=900,
        description="Lifetime of a client application's access token (OAuth2 client "
        "credentials), seconds; at most 15 minutes, as there is no refresh token to revoke.",
    )
    auth_public_url: str = Field(
        "http://localhost:8080",
        pattern=r"^https?://[^/?#]+(/[^?#]*)?$",
        description="The public base URL of the API (the gateway's), without a trailing slash: "
        "the endpoints named in the OAuth metadata (/.well-known/oauth-authorization-server) "
        "start with it. `mosaic up` sets it to the gateway it starts.",
    )
    auth_refresh_token_ttl: int = Field(
        30 * 24 * 3600, ge=60, description="Session (refresh token) lifetime, seconds."
    )
    auth_signing_key_secret: SecretStr | None = Field(
        None,
        description="Private signing keys are stored encrypted with it; required unless "
        "AUTH_ALLOW_PLAINTEXT_KEYS is true. Keep it: keys stored with it are unreadable without.",
    )
    auth_allow_plaintext_keys: bool = Field(
        False,
        description="Without AUTH_SIGNING_KEY_SECRET, store private signing keys unencrypted "
        "instead of refusing to start (local development only).",
    )
    auth_key_refresh_interval: float = Field(
        30.0, gt=0, description="Seconds between re-reads of the active signing key."
    )
    auth_signin_max_failures: int = Field(
        5,
        ge=1,
        description="Failed sign-ins per account (and failed client authentications per client "
        "id, at the OAuth endpoints) before it is locked (429): at most this many password or "
        "secret checks, however many attempts run in parallel on however many replicas.",
    )
    auth_signin_max_failures_per_address: int = Field(
        20,
        ge=1,
        description="Failed sign-ins per client address (any accounts) before it is locked; "
        "failed client authentications from an address are counted apart, with this limit.",
    )
    auth_signin_window: int = Field(
        900,
        ge=1,
        description="Seconds over which failed sign-ins are counted (in the database, so "
        "across replicas); a right password clears its account's count.",
    )
    auth_signin_base_delay: float = Field(
        2.0, gt=0, description="First lockout, seconds; doubles with each further failure."
    )
    auth_signin_max_delay: float = Field(900.0, gt=0, description="Longest lockout, seconds.")
    auth_trust_forwarded_for: bool = Field(
        False, description="Take the client address from X-Forwarded-For (behind the gateway)."
    )
    auth_argon2_time_cost: int = Field(3, ge=1, description="Argon2id iterations.")
    auth_argon2_memory_kib: int = Field(65536, ge=8, description="Argon2id memory, KiB.")
    auth_argon2_parallelism: int = Field(4, ge=1, description="Argon2id lanes.")
    auth_seed_admin_email: str = Field(
        "admin@mosaic.local", description="E-mail of the admin user `seed` creates."
    )
