"""The response cache: a route's `cache` (what is kept, keyed on what, dropped on which events)
and the top-level `cache` bounds of each worker's store."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import Field, field_validator, model_validator

from mosaic_gateway.config.base import HEADER_NAME, ByteSize, Duration, Problem, Spec

if TYPE_CHECKING:
    from mosaic_gateway.config.document import GatewayConfig

# Statuses a cache may keep without explicit freshness (RFC 9110 15.1), minus 204 and 206.
CACHEABLE_STATUSES = frozenset({200, 203, 300, 301, 308, 404, 410})
# Request headers a key cannot vary on: per-hop or per-request, or what steers the cache itself.
_UNVARIABLE = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "content-length",
        "cache-control",
        "pragma",
        "x-request-id",
    }
)
_EVENT_TOKEN = re.compile(r"[a-z0-9_-]+")


class RouteCacheSpec(Spec):
    """`routes[].cache`: GET responses answered from memory."""

    ttl: Duration = Field(gt=0, description="How long a response is served from the cache.")
    vary_headers: list[str] = Field(
        default_factory=list,
        description="Request headers whose values are part of the key (`authorization`: a "
        "cache per token).",
    )
    invalidate_on: list[str] = Field(
        default_factory=list,
        description="Event types (NATS-style patterns: `*` one token, trailing `>` the rest) "
        "that drop the route's entries.",
    )
    statuses: list[int] = Field([200], description="Upstream statuses that are kept.")

    @field_validator("vary_headers")
    @classmethod
    def _check_vary(cls, names: list[str]) -> list[str]:
        lowered = [name.strip().lower() for name in names]
        for name in lowered:
            if not HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a header name")
            if name in _UNVARIABLE:
                raise ValueError(f"the key cannot vary on {name!r}")
        if len(set(lowered)) != len(lowered):
            raise ValueError("a header is listed twice")
        return lowered

    @field_validator("invalidate_on")
    @classmethod
    def _check_patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            parts = pattern.split(".")
            for position, part in enumerate(parts):
                if part == ">" and position == len(parts) - 1:
                    continue
                if part != "*" and not _EVENT_TOKEN.fullmatch(part):
                    raise ValueError(
                        f"{pattern!r} is not an event pattern: dot-separated lower-case tokens, "
                        "'*' for one token, '>' as the last token for the rest"
                    )
        if len(set(patterns)) != len(patterns):
            raise ValueError("a pattern is listed twice")
        return patterns

    @field_validator("statuses")
    @classmethod
    def _check_statuses(cls, statuses: list[int]) -> list[int]:
        if not statuses:
            raise ValueError("list at least one status")
        for status in statuses:
            if status not in CACHEABLE_STATUSES:
                known = ", ".join(str(s) for s in sorted(CACHEABLE_STATUSES))
                raise ValueError(f"{status} cannot be cached (cacheable: {known})")
        return statuses


class CacheBoundsSpec(Spec):
    """`cache`: bounds of each worker's response cache (all routes together)."""

    max_entries: int = Field(10_000, ge=1, description="Entries kept, least recently used go.")
    max_bytes: ByteSize = Field(64 * 1024 * 1024, ge=1, description="Bytes kept (head + body).")
    max_entry_bytes: ByteSize = Field(
        1024 * 1024, ge=1, description="A bigger response is passed through, not kept."
    )

    @model_validator(mode="after")
    def _check_entry_size(self) -> CacheBoundsSpec:
        if self.max_entry_bytes > self.max_bytes:
            raise ValueError("max_entry_bytes cannot exceed max_bytes")
        return self


def check_caches(config: GatewayConfig) -> list[Problem]:
    """Only GET responses are cached, and invalidation events arrive over NATS."""
    problems: list[Problem] = []
    for index, route in enumerate(config.routes):
        cache = route.cache
        if cache is None:
            continue
        if "GET" not in route.methods:
            problems.append(
                (("routes", index, "cache"), "only GET responses are cached: add GET to methods")
            )
        if route.aggregate is not None:
            problems.append((("routes", index, "cache"), "aggregated routes are not cached"))
        if cache.invalidate_on and config.nats is None:
            problems.append(
                (
                    ("routes", index, "cache", "invalidate_on"),
                    "invalidation events arrive over NATS: add the top-level `nats:` section",
                )
            )
        # A user's claims come with a token (Authorization: the cache is bypassed unless the key
        # varies on it); an API key's claims would differ per key on a shared entry.
        claims = route.claims if route.claims is not None else config.defaults.claims
        key_claims = sorted(claim for claim in claims or {} if claim.startswith("api_key."))
        if key_claims and "x-api-key" not in cache.vary_headers:
            problems.append(
                (
                    ("routes", index, "cache", "vary_headers"),
                    f"the route forwards API-key claims ({', '.join(key_claims)}): add x-api-key "
                    "to vary_headers, or one key's answer would be served to another",
                )
            )
    return problems
