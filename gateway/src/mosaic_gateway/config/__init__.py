"""The gateway's declarative configuration: one YAML file, validated before anything serves.

Models are strict (`extra="forbid"`), so a misspelt field is an error, not a silently ignored
setting. Each section holds only what the gateway implements; later features add their own
sections (security per route, traffic control, caching, aggregation) next to these.
`load_config` reports every problem at once, each as `file:line:column: field: message`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mosaic_gateway.config.units import parse_duration, parse_size
from mosaic_gateway.config.yaml_source import YamlSourceError, load_yaml
from mosaic_gateway.routing.router import (
    RouteConflictError,
    Router,
    RouteSpec,
    TemplateError,
    parse_template,
)

Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]

_METHOD = re.compile(r"[A-Z]+")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_PREFIX = re.compile(r"(/[A-Za-z0-9\-._~!$&'()+,;=:@%]+)+")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Model):
    connect: Duration = Field(2.0, gt=0, description="Default upstream connect timeout.")
    request: Duration = Field(
        30.0, gt=0, description="Default time from forwarding a request to its response headers."
    )
    keep_alive: Duration = Field(60.0, gt=0, description="Idle client connections close after.")
    header: Duration = Field(10.0, gt=0, description="A request's head must arrive within.")
    shutdown_grace: Duration = Field(10.0, ge=0, description="In-flight requests finish within.")


class Limits(_Model):
    max_body_bytes: ByteSize = Field(
        1024 * 1024, description="Default request body limit; 0 = none."
    )
    max_header_bytes: ByteSize = Field(32 * 1024, gt=0, description="Request line + headers.")


class Admin(_Model):
    listen: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)


class Server(_Model):
    listen: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    workers: int | None = Field(None, ge=1, le=256, description="Processes; default CPU count.")
    trust_forwarded_headers: bool = Field(
        False,
        description="Append to a client's X-Forwarded-For (behind a trusted proxy) "
        "instead of replacing it.",
    )
    admin: Admin | None = None
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()


def _instance_shorthand(value: object) -> object:
    return {"url": value} if isinstance(value, str) else value


class Instance(_Model):
    url: str
    weight: int = Field(1, ge=1, le=1000)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError("instances are plain http:// URLs")
        if not parts.hostname:
            raise ValueError("the URL names no host")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("an instance URL is scheme://host:port only")
        if parts.path not in ("", "/"):
            raise ValueError("an instance URL carries no path (use a route's rewrite)")
        try:
            parts.port  # noqa: B018 - raises on an out-of-range port
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return url

    @property
    def host(self) -> str:
        host = urlsplit(self.url).hostname
        assert host is not None
        return host

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80


class Pool(_Model):
    max_connections: int = Field(
        512, ge=1, description="Per instance and worker; more requests wait for a free one."
    )
    idle_timeout: Duration = Field(
        4.0,
        gt=0,
        description="Close pooled connections idle this long; keep it below the backends' "
        "keep-alive timeout (uvicorn: 5 s).",
    )


class HealthCheck(_Model):
    path: str = "/readyz"
    interval: Duration = Field(5.0, gt=0)
    timeout: Duration = Field(1.0, gt=0)
    unhealthy_after: int = Field(2, ge=1, description="Consecutive failed checks to take out.")
    healthy_after: int = Field(1, ge=1, description="Consecutive good checks to bring back.")

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        if not path.startswith("/") or any(c in path for c in " \r\n"):
            raise ValueError("a health check path starts with '/' and holds no spaces")
        return path


class Ejection(_Model):
    consecutive_failures: int = Field(
        3, ge=1, description="Failures in a row (connect errors, timeouts, statuses) to eject."
    )
    duration: Duration = Field(10.0, gt=0, description="How long an ejected instance rests.")
    statuses: tuple[int, ...] = Field(
        (502, 503, 504), description="Upstream statuses counted as failures."
    )

    @field_validator("statuses")
    @classmethod
    def _check_statuses(cls, statuses: tuple[int, ...]) -> tuple[int, ...]:
        for status in statuses:
            if not 500 <= status <= 599:
                raise ValueError(f"{status} is not a 5xx status")
        return statuses


class _RetryRules(_Model):
    """When a request is retried: a backend's `retries`, or a route's changes to them."""

    attempts: int = Field(
        1, ge=0, le=5, description="Retries after the first try (0 turns retrying off)."
    )
    on: tuple[str | int, ...] = Field(
        ("connect_error", 503),
        description="`connect_error` (refused, connect timeout, or a connection lost before any "
        "response byte) and/or 5xx statuses that are retried.",
    )
    per_try_timeout: Duration | None = Field(
        None,
        gt=0,
        description="A try of an idempotent request that has had no response byte after this "
        "long is given up and retried on another instance (while a retry is left and the budget "
        "allows), within the route's timeout; the last try waits for the route's timeout. "
        "None: each try may take the whole route timeout.",
    )

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads an unquoted `on:` key as the boolean true; the field is
        # spelt that way in the documentation, so take it back.
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data

    @field_validator("on")
    @classmethod
    def _check_on(cls, on: tuple[str | int, ...]) -> tuple[str | int, ...]:
        for item in on:
            if isinstance(item, str) and item != "connect_error":
                raise ValueError(f"unknown retry condition {item!r} (connect_error or a 5xx)")
            if isinstance(item, int) and not 500 <= item <= 599:
                raise ValueError(f"{item} is not a 5xx status")
        return on


class Retries(_RetryRules):
    budget: float = Field(
        0.2, gt=0, le=1, description="Retries allowed per request, over time (token bucket)."
    )
    min_per_second: int = Field(
        10, ge=0, description="Retries always allowed per second, so low traffic can retry."
    )


class RouteRetries(_RetryRules):
    """A route's changes to its backend's `retries`: the fields given replace the backend's,
    the others are inherited (see `overlay`)."""

    @model_validator(mode="before")
    @classmethod
    def _no_budget(cls, data: Any) -> Any:
        # Said here rather than as "extra inputs": the budget protects the backend from all its
        # routes together, so one route cannot have a budget of its own.
        if isinstance(data, dict):
            for key in ("budget", "min_per_second"):
                if key in data:
                    raise ValueError(
                        f"`{key}` is the backend's retry budget, shared by all its routes: "
                        "set it under `backends.<name>.retries`"
                    )
        return data


class Breaker(_Model):
    failure_threshold: int = Field(
        5, ge=1, description="Failures in a row (as counted for ejection) that open the breaker."
    )
    open_for: Duration = Field(1.0, gt=0, description="First open time; grows on failed probes.")
    max_open_for: Duration = Field(60.0, gt=0, description="Cap on the growing open time.")
    backoff: float = Field(2.0, ge=1, description="Open time factor after a failed probe.")
    half_open_probes: int = Field(1, ge=1, description="Probes at a time while half-open.")


_Settings = TypeVar("_Settings", bound=BaseModel)


def overlay(base: _Settings, override: BaseModel | None) -> _Settings:
    """`base` with the fields that `override` was given (in the file) put over it: a route's
    `retries` or `breaker` over its backend's. A field given as `null` counts as given
    (`per_try_timeout: null` turns the backend's off for the route)."""
    if override is None:
        return base
    return base.model_copy(
        update={name: getattr(override, name) for name in override.model_fields_set}
    )


# --- a backend's instances from discovery (DNS or NATS `$SRV.INFO`) ------------------------------

_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
_MICRO_NAME = re.compile(r"[A-Za-z0-9_-]+")


class DnsDiscovery(_Model):
    name: str = Field(description="Host name resolved (A/AAAA); each address is an instance.")
    port: int = Field(ge=1, le=65535, description="The instances' HTTP port.")
    interval: Duration = Field(5.0, gt=0, description="Resolve again every interval.")
    family: Literal["any", "ipv4", "ipv6"] = Field(
        "any", description="Which addresses to use (`localhost` often resolves to both)."
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if len(name) > 253 or not _HOSTNAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a host name")
        return name


class NatsDiscovery(_Model):
    service: str = Field(description="The `nats.micro` service name asked with `$SRV.INFO`.")
    interval: Duration = Field(2.0, gt=0, description="Ask again every interval.")
    timeout: Duration = Field(
        0.5, gt=0, description="How long each round gathers replies (below `interval`)."
    )
    missing_rounds: int = Field(
        3, ge=1, description="Rounds an instance may miss before it is taken out."
    )

    @field_validator("service")
    @classmethod
    def _check_service(cls, service: str) -> str:
        if not _MICRO_NAME.fullmatch(service):
            raise ValueError("a nats.micro service name is letters, digits, '_' and '-'")
        return service

    @model_validator(mode="after")
    def _check_timeout(self) -> NatsDiscovery:
        if self.timeout >= self.interval:
            raise ValueError("timeout must be shorter than interval")
        return self


class Discovery(_Model):
    dns: DnsDiscovery | None = None
    nats: NatsDiscovery | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Discovery:
        if (self.dns is None) == (self.nats is None):
            raise ValueError("give exactly one of `dns` and `nats`")
        return self


class Backend(_Model):
    instances: list[Annotated[Instance, BeforeValidator(_instance_shorthand)]] | None = Field(
        None, description="A static list; or `discovery` (exactly one of the two)."
    )
    discovery: Discovery | None = None
    balancing: Literal["round_robin", "least_outstanding"] = "round_robin"
    connect_timeout: Duration | None = Field(None, gt=0, description="Overrides the default.")
    pool: Pool = Pool()
    health_check: HealthCheck | None = None
    ejection: Ejection = Ejection()
    retries: Retries = Retries()
    breaker: Breaker = Breaker()

    @field_validator("instances")
    @classmethod
    def _check_instances(cls, instances: list[Instance] | None) -> list[Instance] | None:
        if instances is None:
            return None
        if not instances:
            raise ValueError("a backend needs at least one instance")
        seen: set[tuple[str, int]] = set()
        for instance in instances:
            key = (instance.host, instance.port)
            if key in seen:
                raise ValueError(f"instance {instance.url} is listed twice")
            seen.add(key)
        return instances


class Rewrite(_Model):
    strip_prefix: str | None = Field(None, description="Removed from the start of the path.")
    add_prefix: str | None = Field(None, description="Put in front of the (stripped) path.")

    @field_validator("strip_prefix", "add_prefix")
    @classmethod
    def _check_prefix(cls, prefix: str | None) -> str | None:
        if prefix is not None and not _PREFIX.fullmatch(prefix):
            raise ValueError("a prefix is '/segment[/segment...]' with no trailing '/'")
        return prefix


# --- security and traffic control per route (security.py) ------------------------------------

Switch = Literal["required", "optional", "off"]
_HEADER = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_ROLE = re.compile(r"[A-Z][A-Z0-9_]*")


class RouteAuth(_Model):
    """Who may call a route. Unset fields come from `defaults.auth`, then `off`."""

    api_key: Switch | None = Field(
        None, description="`x-api-key`, verified over NATS `auth.apikeys.verify` (cached)."
    )
    jwt: Switch | None = Field(
        None, description="`Authorization: Bearer`, verified locally from auth's JWKS."
    )
    roles: list[str] | None = Field(
        None, description="Any one of these roles admits (implies `jwt: required`)."
    )

    @field_validator("roles")
    @classmethod
    def _check_roles(cls, roles: list[str] | None) -> list[str] | None:
        for role in roles or ():
            if not _ROLE.fullmatch(role):
                raise ValueError(f"{role!r} is not a role name (upper-case, e.g. AUTHOR)")
        return roles


class AllowList(_Model):
    allow: list[str] = Field(
        default_factory=list, description="Names forwarded; `*` forwards all (deny by default)."
    )


class HeaderAllowList(AllowList):
    @field_validator("allow")
    @classmethod
    def _check_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if name != "*" and not _HEADER.fullmatch(name):
                raise ValueError(f"{name!r} is not a header name")
        return [name.lower() for name in names]


class Cors(_Model):
    origins: list[str] = Field(description="Exact origins (`https://app.example`) or `*`.")
    methods: list[str] = Field(["GET", "HEAD", "POST"], description="Allowed methods, or `*`.")
    headers: list[str] = Field(default_factory=list, description="Allowed request headers, or `*`.")
    expose_headers: list[str] = Field(default_factory=list)
    max_age: Duration | None = Field(600.0, ge=0, description="Preflight cache time.")
    credentials: bool = False


class RateLimitRule(_Model):
    requests: int = Field(ge=1, description="Requests allowed per `per`.")
    per: Duration = Field(gt=0)
    by: Literal["api_key", "user", "address"] = Field(
        "address",
        description="Whose budget: the API key's id, the token's user, or the client address "
        "(a request without that identity falls back to its address).",
    )
    burst: int | None = Field(None, ge=1, description="Local limits only: requests at once.")
    shared: bool = Field(
        False, description="Count across workers and replicas in `rate_limits.store`."
    )


Claims = dict[str, str]


class RouteDefaults(_Model):
    """Per-route settings that routes inherit unless they set their own."""

    auth: RouteAuth | None = None
    headers: HeaderAllowList | None = None
    query: AllowList | None = None
    claims: Claims | None = None
    cors: Cors | None = None
    rate_limit: RateLimitRule | None = None


class ApiKeySettings(_Model):
    ttl: Duration = Field(300.0, gt=0, description="How long an accepted key is cached.")
    negative_ttl: Duration = Field(10.0, ge=0, description="How long a refused key is cached.")
    timeout: Duration = Field(2.0, gt=0, description="Wait for auth's answer at most.")
    max_entries: int = Field(10_000, ge=1)


class JwtSettings(_Model):
    issuer: str = "mosaic-auth"
    audience: str = "mosaic"
    leeway: Duration = Field(5.0, ge=0, description="Clock skew tolerated on exp/iat.")
    max_token_ttl: Duration = Field(
        86_400.0, gt=0, description="At least auth's access-token lifetime (revocation memory)."
    )
    cache_size: int = Field(10_000, ge=0, description="Verified tokens remembered.")


class Security(_Model):
    api_keys: ApiKeySettings = ApiKeySettings()
    jwt: JwtSettings = JwtSettings()


class RateLimits(_Model):
    store: Literal["redis", "nats"] | None = Field(
        None, description="Where shared limits count; needed by `shared: true` rules."
    )
    redis_url: str | None = Field(None, description="With `store: redis`.")
    bucket: str = Field("gateway_rate_limits", description="With `store: nats`: the KV bucket.")
    timeout: Duration = Field(0.25, gt=0, description="Then fall back to a local limit.")


# --- the response cache for GET per route (cache.py) ---------------------------------------------

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


class RouteCache(_Model):
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
            if not _HEADER.fullmatch(name):
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


class CacheBounds(_Model):
    """Bounds of each worker's response cache (all routes together)."""

    max_entries: int = Field(10_000, ge=1, description="Entries kept, least recently used go.")
    max_bytes: ByteSize = Field(64 * 1024 * 1024, ge=1, description="Bytes kept (head + body).")
    max_entry_bytes: ByteSize = Field(
        1024 * 1024, ge=1, description="A bigger response is passed through, not kept."
    )

    @model_validator(mode="after")
    def _check_entry_size(self) -> CacheBounds:
        if self.max_entry_bytes > self.max_bytes:
            raise ValueError("max_entry_bytes cannot exceed max_bytes")
        return self


# --- aggregation, one route answered from several backends (aggregate.py) ------------------------

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PARAM_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\*")
_RESPONSE_REF = re.compile(r"resp([0-9]+)((?:\.[^.\s{}/?#&=]+)*)")
_DOT_PATH = re.compile(r"[^.\s]+(?:\.[^.\s]+)*")


@dataclass(frozen=True)
class Placeholder:
    """A `{...}` in an aggregate call's path: a route parameter (`{id}`, `{*}` for the
    wildcard) or a field of an earlier call's answer (`{resp0.author.id}`)."""

    text: str
    param: str | None  # the route parameter's name; None for an answer's field
    response: int  # the index of the answer read; -1 for a parameter
    field: tuple[str, ...]
    in_query: bool


def parse_call_path(path: str) -> tuple[str | Placeholder, ...]:
    """Split an aggregate call's path into literal text and placeholders (ValueError if bad)."""
    if not path.startswith("/"):
        raise ValueError("a call path starts with '/'")
    if any(char in path for char in " \t\r\n#\\") or not path.isascii():
        raise ValueError("a call path holds no spaces, '#', '\\' or non-ASCII characters")
    parts: list[str | Placeholder] = []
    end = 0
    for match in _PLACEHOLDER.finditer(path):
        literal = path[end : match.start()]
        if "{" in literal or "}" in literal:
            raise ValueError("unbalanced '{' or '}'")
        if literal:
            parts.append(literal)
        end = match.end()
        inner = match.group(1)
        in_query = "?" in path[: match.start()]
        response = _RESPONSE_REF.fullmatch(inner)
        if response:
            field = tuple(response.group(2).split(".")[1:])
            parts.append(Placeholder(match.group(0), None, int(response.group(1)), field, in_query))
        elif _PARAM_REF.fullmatch(inner):
            parts.append(Placeholder(match.group(0), inner, -1, (), in_query))
        else:
            raise ValueError(
                f"placeholder {match.group(0)!r}: use a route parameter ({{id}}, {{*}}) "
                "or a field of an earlier answer ({resp0.author.id})"
            )
    rest = path[end:]
    if "{" in rest or "}" in rest:
        raise ValueError("unbalanced '{' or '}'")
    if rest:
        parts.append(rest)
    return tuple(parts)


def _check_dot_path(path: str) -> str:
    if not _DOT_PATH.fullmatch(path):
        raise ValueError(f"{path!r} is not a dot path (e.g. author.name)")
    return path


class AggregateCall(_Model):
    backend: str = Field(description="A name under `backends`.")
    path: str = Field(
        description="Upstream path (and query); `{param}` of the route, `{respN.field}` of an "
        "earlier answer (sequential only)."
    )
    group: str | None = Field(None, min_length=1, description="Nest the answer under this key.")
    target: str | None = Field(None, description="Take this field (dot path) of the answer.")
    allow: list[str] | None = Field(None, description="Keep only these fields (dot paths).")
    deny: list[str] | None = Field(None, description="Drop these fields (dot paths).")
    mapping: dict[str, str] = Field(
        default_factory=dict, description="Rename top-level fields: {old: new}."
    )
    required: bool = Field(False, description="Its failure fails the whole response.")
    forward_query: bool = Field(True, description="Append the request's (allowed) query.")

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        parse_call_path(path)
        return path

    @field_validator("target")
    @classmethod
    def _check_target(cls, target: str | None) -> str | None:
        return None if target is None else _check_dot_path(target)

    @field_validator("allow", "deny")
    @classmethod
    def _check_fields(cls, paths: list[str] | None) -> list[str] | None:
        for path in paths or ():
            _check_dot_path(path)
        return paths

    @field_validator("mapping")
    @classmethod
    def _check_mapping(cls, mapping: dict[str, str]) -> dict[str, str]:
        for old, new in mapping.items():
            if not old or not new or "." in old or "." in new:
                raise ValueError(f"{old!r}: {new!r}: mapping renames top-level fields (no dots)")
        if len(set(mapping.values())) != len(mapping):
            raise ValueError("two fields are renamed to the same name")
        return mapping

    @model_validator(mode="after")
    def _allow_or_deny(self) -> AggregateCall:
        if self.allow is not None and self.deny is not None:
            raise ValueError("give `allow` or `deny`, not both")
        return self

    @property
    def parts(self) -> tuple[str | Placeholder, ...]:
        return parse_call_path(self.path)


class Aggregate(_Model):
    sequential: bool = Field(
        False, description="Call in order; later paths may use earlier answers."
    )
    timeout: Duration | None = Field(
        None, gt=0, description="For all the calls together; else the route's timeout."
    )
    max_response_bytes: ByteSize = Field(
        1024 * 1024, gt=0, description="Largest answer read from one call."
    )
    backends: list[AggregateCall] = Field(min_length=1, max_length=32)


class Route(_Model):
    path: str
    methods: list[str]
    backend: str | None = None  # required unless `aggregate` is given
    aggregate: Aggregate | None = None
    rewrite: Rewrite | None = None
    timeout: Duration | None = Field(None, gt=0, description="Overrides timeouts.request.")
    retries: RouteRetries | None = Field(
        None, description="Fields given override the backend's `retries` (not its budget)."
    )
    breaker: Breaker | None = Field(
        None,
        description="Fields given override the backend's `breaker`; the route then has a "
        "breaker of its own per instance.",
    )
    max_body_bytes: ByteSize | None = Field(None, description="Overrides limits.max_body_bytes.")
    auth: RouteAuth | None = None
    headers: HeaderAllowList | None = None
    query: AllowList | None = None
    claims: Claims | None = Field(
        None, description="Claims forwarded as headers, e.g. {sub: x-user-id}."
    )
    cors: Cors | None = None
    rate_limit: RateLimitRule | None = None
    cache: RouteCache | None = None

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        try:
            parse_template(path)
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
        return path

    @field_validator("methods", mode="before")
    @classmethod
    def _normalise_methods(cls, methods: Any) -> Any:
        if isinstance(methods, list):
            return [m.upper() if isinstance(m, str) else m for m in methods]
        return methods

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, methods: list[str]) -> list[str]:
        if not methods:
            raise ValueError("list at least one method")
        for method in methods:
            if not _METHOD.fullmatch(method):
                raise ValueError(f"{method!r} is not an HTTP method")
        if len(set(methods)) != len(methods):
            raise ValueError("a method is listed twice")
        return methods


class Nats(_Model):
    url: str = Field(
        description="NATS server(s), comma-separated: API key checks, JWKS, revocations, "
        "discovery, cache invalidation and shared rate limits go through it."
    )
    connect_timeout: Duration = Field(2.0, gt=0)
    max_wait: Duration = Field(
        30.0, gt=0, description="How long a starting worker retries its first connection."
    )


# --- observability (access log, metrics, tracing) and the merged OpenAPI documents ---------------

_DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class AccessLog(_Model):
    enabled: bool = Field(False, description="One JSON line per request.")
    path: str | None = Field(
        None, description="Append the lines to this file; default: standard error, with the logs."
    )


class MetricsSettings(_Model):
    enabled: bool = Field(
        True, description="Prometheus text at `/metrics` on the admin listener (needs `admin`)."
    )
    buckets: tuple[float, ...] = Field(
        _DEFAULT_BUCKETS, description="Upper bounds (seconds) of the request duration histogram."
    )

    @field_validator("buckets")
    @classmethod
    def _check_buckets(cls, buckets: tuple[float, ...]) -> tuple[float, ...]:
        if not buckets or len(buckets) > 30:
            raise ValueError("give 1 to 30 bucket bounds")
        if any(bound <= 0 for bound in buckets) or list(buckets) != sorted(set(buckets)):
            raise ValueError("bucket bounds are positive and strictly increasing")
        return buckets


class Tracing(_Model):
    enabled: bool = Field(
        False,
        description="A span per request: the upstream gets the gateway's span as parent. Off: "
        "an incoming `traceparent` is forwarded unchanged.",
    )
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of new traces recorded (a caller's decision wins)."
    )
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP collector base URL; spans are exported only when set."
    )
    service_name: str = Field("mosaic-gateway", min_length=1)

    @field_validator("otlp_endpoint")
    @classmethod
    def _check_endpoint(cls, endpoint: str | None) -> str | None:
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("an OTLP/HTTP endpoint is an http:// or https:// URL")
        return endpoint

    @model_validator(mode="after")
    def _endpoint_needs_enabled(self) -> Tracing:
        if self.otlp_endpoint is not None and not self.enabled:
            raise ValueError("`otlp_endpoint` is set but tracing is not `enabled`")
        return self


class Observability(_Model):
    access_log: AccessLog = AccessLog()
    metrics: MetricsSettings = MetricsSettings()
    tracing: Tracing = Tracing()


class Docs(_Model):
    path: str = Field("/docs", description="Swagger UI here, the merged document below it.")
    title: str = Field("Mosaic API", min_length=1)
    sources: dict[str, str] = Field(
        description="Backend name: path of its OpenAPI (JSON) document on its instances."
    )
    refresh: Duration = Field(300.0, gt=0, description="Fetch the documents again every.")
    timeout: Duration = Field(5.0, gt=0, description="For fetching one document.")

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        try:
            template = parse_template(path)
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
        if path == "/" or path.endswith("/") or not template.is_literal:
            raise ValueError("a literal path like /docs (no parameter, no trailing '/')")
        return path

    @field_validator("sources")
    @classmethod
    def _check_sources(cls, sources: dict[str, str]) -> dict[str, str]:
        for name, path in sources.items():
            if not path.startswith("/") or any(c in path for c in " \r\n#"):
                raise ValueError(f"{name}: {path!r} is not a path (starts with '/', no spaces)")
        return sources


class GatewayConfig(_Model):
    server: Server = Server()
    nats: Nats | None = Field(None, description="Needed by every NATS-backed feature.")
    security: Security = Security()
    rate_limits: RateLimits = RateLimits()
    defaults: RouteDefaults = RouteDefaults()
    cache: CacheBounds = CacheBounds()
    observability: Observability = Observability()
    docs: Docs | None = None
    backends: dict[str, Backend]
    routes: list[Route]

    @field_validator("backends")
    @classmethod
    def _check_backend_names(cls, backends: dict[str, Backend]) -> dict[str, Backend]:
        for name in backends:
            if not _NAME.fullmatch(name):
                raise ValueError(f"backend name {name!r}: use lower-case letters, digits, '_.-'")
        return backends

    def worker_count(self) -> int:
        if self.server.workers is not None:
            return self.server.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int | None
    column: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.column}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ConfigError(Exception):
    """The file cannot be used; `issues` lists every problem found."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def _field_name(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read, parse and validate a configuration file, or raise ConfigError."""
    file = os.fspath(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(file, None, None, "", f"cannot read: {exc}")]) from None
    return parse_config(text, file)


def parse_config(text: str, file: str = "<config>") -> GatewayConfig:
    """Validate configuration text; `file` only names the source in error messages."""
    try:
        document = load_yaml(text)
    except YamlSourceError as exc:
        line = exc.position.line if exc.position else None
        column = exc.position.column if exc.position else None
        raise ConfigError([ConfigIssue(file, line, column, "", exc.message)]) from None

    def issue(path: Sequence[str | int], message: str) -> ConfigIssue:
        position, _ = document.position_of(path)
        return ConfigIssue(
            file,
            position.line if position else None,
            position.column if position else None,
            _field_name(path),
            message,
        )

    if not isinstance(document.data, dict):
        raise ConfigError([issue((), "the file must hold a mapping with 'backends' and 'routes'")])
    try:
        config = GatewayConfig.model_validate(document.data)
    except ValidationError as exc:
        issues = []
        for error in exc.errors(include_url=False):
            # Pydantic appends "[key]" when a dict key (not its value) failed.
            loc = [part for part in error["loc"] if part != "[key]"]
            message = error["msg"]
            if message.startswith("Value error, "):
                message = message[len("Value error, ") :]
            issues.append(issue(loc, message))
        raise ConfigError(issues) from None
    problems = _cross_check(config)
    if problems:
        raise ConfigError([issue(path, message) for path, message in problems])
    return config


def _check_security(config: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """API keys, tokens and shared limits need their stores configured."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    sections: list[tuple[tuple[str | int, ...], RouteAuth | None, RateLimitRule | None]] = [
        (("defaults",), config.defaults.auth, config.defaults.rate_limit)
    ]
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


def _cross_check(config: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Rules that span fields: references between sections and route conflicts."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    problems += _check_instance_sources(config)
    problems += _check_security(config)
    problems += _check_caches(config)
    problems += _check_docs(config)
    problems += _check_resilience(config)
    for index, route in enumerate(config.routes):
        if route.aggregate is not None or route.backend is None:
            problems += _check_aggregate(config, index, route)
        elif route.backend not in config.backends:
            known = ", ".join(sorted(config.backends)) or "none"
            problems.append(
                (
                    ("routes", index, "backend"),
                    f"unknown backend {route.backend!r} (known: {known})",
                )
            )
        strip = route.rewrite.strip_prefix if route.rewrite else None
        if strip is not None:
            literal = parse_template(route.path).literal_prefix()
            if not (literal == strip or literal.startswith(strip + "/")):
                problems.append(
                    (
                        ("routes", index, "rewrite", "strip_prefix"),
                        f"{strip!r} is not a leading run of literal segments of {route.path!r}",
                    )
                )
    try:
        Router.compile(
            RouteSpec(parse_template(route.path), route.methods, index)
            for index, route in enumerate(config.routes)
        )
    except RouteConflictError as exc:
        problems.append((("routes", exc.index, "path"), str(exc)))
    return problems


def _check_resilience(config: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """A route's own `per_try_timeout` must be able to cut a try before the route gives up.

    Only one the route gives: a backend's serves routes of different timeouts, and is simply
    not used where it is not shorter."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for index, route in enumerate(config.routes):
        retries = route.retries
        if retries is None or retries.per_try_timeout is None:
            continue
        timeout = route.timeout or config.server.timeouts.request
        bound = "timeout"
        if route.aggregate is not None and route.aggregate.timeout is not None:
            timeout, bound = route.aggregate.timeout, "aggregate.timeout"
        if retries.per_try_timeout >= timeout:
            problems.append(
                (
                    ("routes", index, "retries", "per_try_timeout"),
                    f"{retries.per_try_timeout:g}s is not below the route's {bound} "
                    f"({timeout:g}s): no try would ever be cut short",
                )
            )
    return problems


def _check_instance_sources(config: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """DISCO: each backend lists its instances or discovers them, and discovery over NATS needs
    the `nats:` section."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for name, backend in config.backends.items():
        if backend.instances is None and backend.discovery is None:
            problems.append(
                (("backends", name), "give `instances` (a static list) or `discovery` (dns/nats)")
            )
        elif backend.instances is not None and backend.discovery is not None:
            problems.append(
                (
                    ("backends", name, "discovery"),
                    "give `instances` or `discovery`, not both",
                )
            )
        elif backend.discovery is not None and backend.discovery.nats and config.nats is None:
            problems.append(
                (
                    ("backends", name, "discovery", "nats"),
                    "discovery over NATS needs the top-level `nats:` section",
                )
            )
    return problems


def _check_caches(config: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """CACHE: only GET responses are cached, and invalidation events arrive over NATS."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
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


def _check_aggregate(
    config: GatewayConfig, index: int, route: Route
) -> list[tuple[tuple[str | int, ...], str]]:
    """AGG: a route has `backend` or `aggregate`; an aggregate's calls name known backends and
    use only the route's parameters and earlier answers."""
    where: tuple[str | int, ...] = ("routes", index)
    aggregate = route.aggregate
    if aggregate is None:
        return [((*where, "backend"), "Field required")]
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if route.backend is not None:
        problems.append(((*where, "aggregate"), "give `backend` or `aggregate`, not both"))
    if set(route.methods) - {"GET", "HEAD"}:
        problems.append(((*where, "methods"), "an aggregate route serves GET (and HEAD) only"))
    if route.rewrite is not None:
        problems.append(((*where, "rewrite"), "an aggregate route's calls give their own paths"))
    template = parse_template(route.path)
    params = {value for kind, value in template.segments if kind != "literal"}
    groups: set[str] = set()
    for number, call in enumerate(aggregate.backends):
        at = (*where, "aggregate", "backends", number)
        if call.backend not in config.backends:
            known = ", ".join(sorted(config.backends)) or "none"
            problems.append(
                ((*at, "backend"), f"unknown backend {call.backend!r} (known: {known})")
            )
        if call.group is not None:
            if call.group in groups:
                problems.append(((*at, "group"), f"group {call.group!r} is used twice"))
            groups.add(call.group)
        for part in call.parts:
            if isinstance(part, str):
                continue
            if part.param is not None:
                if part.param not in params:
                    problems.append(
                        ((*at, "path"), f"{part.text}: {route.path!r} has no such parameter")
                    )
            elif not aggregate.sequential:
                problems.append(
                    (
                        (*at, "path"),
                        f"{part.text}: answers can be used only with `sequential: true`",
                    )
                )
            elif part.response >= number:
                problems.append(
                    (
                        (*at, "path"),
                        f"{part.text}: call {number} can use only earlier answers "
                        f"(resp0..resp{number - 1})"
                        if number
                        else f"{part.text}: the first call has no earlier answer to use",
                    )
                )
    return problems


def _check_docs(config: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """OBS: the documents come from known backends, and the docs paths are free."""
    docs = config.docs
    if docs is None:
        return []
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for name in docs.sources:
        if name not in config.backends:
            known = ", ".join(sorted(config.backends)) or "none"
            problems.append((("docs", "sources", name), f"unknown backend (known: {known})"))
    specs = [
        RouteSpec(parse_template(route.path), route.methods, index)
        for index, route in enumerate(config.routes)
    ]
    specs += [
        RouteSpec(parse_template(path), ["GET"], -1)
        for path in (docs.path, docs.path + "/openapi.json")
    ]
    try:
        Router.compile(specs)
    except RouteConflictError as exc:
        if exc.index >= len(config.routes):
            problems.append((("docs", "path"), f"{exc}: choose another docs path"))
    return problems
