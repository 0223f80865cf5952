"""The `backends` section: each backend's instances (listed, or found by DNS or NATS discovery),
how they are balanced, pooled, checked, ejected, retried and broken off."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    GetJsonSchemaHandler,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from mosaic_gateway.config.base import Duration, Problem, Spec

if TYPE_CHECKING:
    from mosaic_gateway.config.document import GatewayConfig

BACKEND_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")


class InstanceSpec(Spec):
    """An instance of a backend; a bare URL string is short for `{url: ...}`."""

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


def _instance_shorthand(value: object) -> object:
    return {"url": value} if isinstance(value, str) else value


class _OrUrlString:
    """The JSON Schema of an instance list item: the shorthand string as well as the mapping."""

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        url = {"type": "string", "description": "Short for `{url: ...}`."}
        return {"anyOf": [handler(schema), url]}


InstanceItem = Annotated[InstanceSpec, BeforeValidator(_instance_shorthand), _OrUrlString()]


class PoolSpec(Spec):
    """`pool`: the keep-alive connections to each instance."""

    max_connections: int = Field(
        512, ge=1, description="Per instance and worker; more requests wait for a free one."
    )
    idle_timeout: Duration = Field(
        4.0,
        gt=0,
        description="Close pooled connections idle this long; keep it below the backends' "
        "keep-alive timeout (uvicorn: 5 s).",
    )


class HealthCheckSpec(Spec):
    """`health_check`: active checks that take instances out and bring them back."""

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


class EjectionSpec(Spec):
    """`ejection`: passive outlier detection from the answers of real requests."""

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


class _RetryRulesSpec(Spec):
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


class RetriesSpec(_RetryRulesSpec):
    """`retries`: tries on another instance, within a budget."""

    budget: float = Field(
        0.2, gt=0, le=1, description="Retries allowed per request, over time (token bucket)."
    )
    min_per_second: int = Field(
        10, ge=0, description="Retries always allowed per second, so low traffic can retry."
    )


class RouteRetriesSpec(_RetryRulesSpec):
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


class BreakerSpec(Spec):
    """`breaker`: a circuit breaker per instance."""

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


_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
_MICRO_NAME = re.compile(r"[A-Za-z0-9_-]+")


class DnsDiscoverySpec(Spec):
    """`discovery.dns`: the instances are the addresses a host name resolves to."""

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


class NatsDiscoverySpec(Spec):
    """`discovery.nats`: the instances are the `nats.micro` services answering `$SRV.INFO`."""

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
    def _check_timeout(self) -> NatsDiscoverySpec:
        if self.timeout >= self.interval:
            raise ValueError("timeout must be shorter than interval")
        return self


class DiscoverySpec(Spec):
    """`discovery`: exactly one of `dns` and `nats`."""

    dns: DnsDiscoverySpec | None = None
    nats: NatsDiscoverySpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DiscoverySpec:
        if (self.dns is None) == (self.nats is None):
            raise ValueError("give exactly one of `dns` and `nats`")
        return self


class BackendSpec(Spec):
    """`backends.<name>`: a service behind the gateway."""

    instances: list[InstanceItem] | None = Field(
        None, description="A static list; or `discovery` (exactly one of the two)."
    )
    discovery: DiscoverySpec | None = None
    balancing: Literal["round_robin", "least_outstanding"] = "round_robin"
    connect_timeout: Duration | None = Field(None, gt=0, description="Overrides the default.")
    pool: PoolSpec = PoolSpec()
    health_check: HealthCheckSpec | None = None
    ejection: EjectionSpec = EjectionSpec()
    retries: RetriesSpec = RetriesSpec()
    breaker: BreakerSpec = BreakerSpec()

    @field_validator("instances")
    @classmethod
    def _check_instances(cls, instances: list[InstanceSpec] | None) -> list[InstanceSpec] | None:
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


def check_backend_name(name: str) -> str:
    if not BACKEND_NAME.fullmatch(name):
        raise ValueError(f"backend name {name!r}: use lower-case letters, digits, '_.-'")
    return name


def check_backends(config: GatewayConfig) -> list[Problem]:
    """Each backend lists its instances or discovers them, and discovery over NATS needs the
    `nats:` section."""
    problems: list[Problem] = []
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


def known_backends(config: GatewayConfig) -> str:
    """The configured backends' names, for a message about a reference to another."""
    return ", ".join(sorted(config.backends)) or "none"
