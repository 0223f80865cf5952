"""Settings of the reco service (the shared ones come from `ServiceSettings`)."""

from __future__ import annotations

from pydantic import Field

from mosaic_kit.settings import ServiceSettings


class RecoSettings(ServiceSettings):
    service_name: str = Field("reco", description="Name used in logs, metrics, traces, NATS.")
    db_schema: str = Field("reco", description="PostgreSQL schema this service owns.")
    port: int = Field(8003, ge=0, le=65535, description="HTTP port (0 picks a free one).")

    reco_jwt_issuer: str = Field("mosaic-auth", description="Expected `iss` of access tokens.")
    reco_jwt_audience: str = Field("mosaic", description="Expected `aud` of access tokens.")
    reco_jwks_subject: str = Field(
        "auth.jwks.get", description="NATS subject answering the JWKS that signs access tokens."
    )
    reco_revocation_window: int = Field(
        960, ge=60, description="Seconds of revocation events replayed at start (>= token TTL)."
    )
    reco_blog_consumer: str = Field(
        "reco-blog", description="Durable JetStream consumer of the blog's events (its name)."
    )
    reco_authors_consumer: str = Field(
        "reco-authors", description="Durable JetStream consumer of auth's user events."
    )
    reco_trending_half_life: float = Field(
        72.0, gt=0, description="Hours after which a signal counts half towards trending."
    )
