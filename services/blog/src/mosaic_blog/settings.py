"""Settings of the blog service (the shared ones come from `ServiceSettings`)."""

from __future__ import annotations

from pydantic import Field

from mosaic_kit.settings import ServiceSettings


class BlogSettings(ServiceSettings):
    service_name: str = Field("blog", description="Name used in logs, metrics, traces, NATS.")
    db_schema: str = Field("blog", description="PostgreSQL schema this service owns.")
    port: int = Field(8002, ge=0, le=65535, description="HTTP port (0 picks a free one).")

    blog_cache_ttl: float = Field(
        300.0, gt=0, description="Seconds a cached public read may live (writes invalidate sooner)."
    )
    blog_cache_namespace: str = Field(
        "blog", description="Prefix of this deployment's cache keys (Redis or NATS KV)."
    )
    blog_cache_bucket: str = Field(
        "mosaic_cache", description="NATS key-value bucket of the cache when REDIS_URL is unset."
    )
    blog_auth_timeout: float = Field(
        1.0, gt=0, description="Seconds to wait for auth.users.get when a profile is missing."
    )
    blog_jwt_issuer: str = Field("mosaic-auth", description="Expected `iss` of access tokens.")
    blog_jwt_audience: str = Field("mosaic", description="Expected `aud` of access tokens.")
    blog_authors_consumer: str = Field(
        "blog-authors", description="Durable JetStream consumer feeding the author read model."
    )
    blog_revocation_window: int = Field(
        960, ge=60, description="Seconds of revocation events replayed at start (>= token TTL)."
    )
