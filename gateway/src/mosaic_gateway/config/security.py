"""The `security` and `rate_limits` sections: how API keys and tokens are verified, and where
shared rate limits count. Routes say who may call them (routes.py); this is the machinery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from mosaic_gateway.config.base import Duration, Problem, Spec

if TYPE_CHECKING:
    from mosaic_gateway.config.document import GatewayConfig
    from mosaic_gateway.config.routes import RateLimitRuleSpec, RouteAuthSpec


class ApiKeysSpec(Spec):
    """`security.api_keys`: the cache of auth's answers to `auth.apikeys.verify`."""

    ttl: Duration = Field(300.0, gt=0, description="How long an accepted key is cached.")
    negative_ttl: Duration = Field(10.0, ge=0, description="How long a refused key is cached.")
    timeout: Duration = Field(2.0, gt=0, description="Wait for auth's answer at most.")
    max_entries: int = Field(10_000, ge=1)


class JwtSpec(Spec):
    """`security.jwt`: what a token must say, verified locally from auth's JWKS."""

    issuer: str = "mosaic-auth"
    audience: str = "mosaic"
    leeway: Duration = Field(5.0, ge=0, description="Clock skew tolerated on exp/iat.")
    max_token_ttl: Duration = Field(
        86_400.0, gt=0, description="At least auth's access-token lifetime (revocation memory)."
    )
    cache_size: int = Field(10_000, ge=0, description="Verified tokens remembered.")


class SecuritySpec(Spec):
    """`security`: API key and token verification."""

    api_keys: ApiKeysSpec = ApiKeysSpec()
    jwt: JwtSpec = JwtSpec()


class RateLimitsSpec(Spec):
    """`rate_limits`: where `shared: true` limits count across workers and replicas."""

    store: Literal["redis", "nats"] | None = Field(
        None, description="Where shared limits count; needed by `shared: true` rules."
    )
    redis_url: str | None = Field(None, description="With `store: redis`.")
    bucket: str = Field("gateway_rate_limits", description="With `store: nats`: the KV bucket.")
    timeout: Duration = Field(0.25, gt=0, description="Then fall back to a local limit.")


def check_security(config: GatewayConfig) -> list[Problem]:
    """API keys, tokens and shared limits need their stores configured."""
    problems: list[Problem] = []
    sections: list[tuple[tuple[str | int, ...], RouteAuthSpec | None, RateLimitRuleSpec | None]]
    sections = [(("defaults",), config.defaults.auth, config.defaults.rate_limit)]
    sections += [
        (("routes", index), route.auth, route.rate_limit)
        for index, route in enumerate(config.routes)
    ]
    for where, auth, limit in sections:
        if auth is not None and config.nats is None:
            uses = [
                name
                for name, value in (("api_key", auth.api_key), ("jwt", auth.jwt))
                if value not in (None, "off")
            ]
            if auth.roles:
                uses.append("roles")
            if auth.scopes is not None:
                uses.append("scopes")
            if uses:
                problems.append(
                    (
                        (*where, "auth", uses[0]),
                        "API keys and tokens are verified over NATS: add a `nats:` section",
                    )
                )
        if limit is not None and limit.shared:
            store = config.rate_limits.store
            if store is None:
                problems.append(
                    (
                        (*where, "rate_limit", "shared"),
                        "a shared limit needs `rate_limits.store` (redis or nats)",
                    )
                )
            elif store == "nats" and config.nats is None:
                problems.append(
                    ((*where, "rate_limit", "shared"), "`rate_limits.store: nats` needs `nats:`")
                )
    if config.rate_limits.store == "redis" and not config.rate_limits.redis_url:
        problems.append((("rate_limits", "redis_url"), "`store: redis` needs `redis_url`"))
    return problems
