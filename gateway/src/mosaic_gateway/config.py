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
from typing import Annotated, Any, Literal
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

from mosaic_gateway.router import (
    RouteConflictError,
    Router,
    RouteSpec,
    TemplateError,
    parse_template,
)
from mosaic_gateway.units import parse_duration, parse_size
from mosaic_gateway.yaml_source import YamlSourceError, load_yaml

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


class Retries(_Model):
    attempts: int = Field(
        1, ge=0, le=5, description="Retries after the first try (0 turns retrying off)."
    )
    on: tuple[str | int, ...] = Field(
        ("connect_error", 503),
        description="`connect_error` (refused, connect timeout, or a connection lost before any "
        "response byte) and/or 5xx statuses that are retried.",
    )
    budget: float = Field(
        0.2, gt=0, le=1, description="Retries allowed per request, over time (token bucket)."
    )
    min_per_second: int = Field(
        10, ge=0, description="Retries always allowed per second, so low traffic can retry."
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


class Breaker(_Model):
    failure_threshold: int = Field(
        5, ge=1, description="Failures in a row (as counted for ejection) that open the breaker."
    )
    open_for: Duration = Field(1.0, gt=0, description="First open time; grows on failed probes.")
    max_open_for: Duration = Field(60.0, gt=0, description="Cap on the growing open time.")
    backoff: float = Field(2.0, ge=1, description="Open time factor after a failed probe.")
    half_open_probes: int = Field(1, ge=1, description="Probes at a time while half-open.")


class Backend(_Model):
    instances: list[Annotated[Instance, BeforeValidator(_instance_shorthand)]]
    balancing: Literal["round_robin", "least_outstanding"] = "round_robin"
    connect_timeout: Duration | None = Field(None, gt=0, description="Overrides the default.")
    pool: Pool = Pool()
    health_check: HealthCheck | None = None
    ejection: Ejection = Ejection()
    retries: Retries = Retries()
    breaker: Breaker = Breaker()

    @field_validator("instances")
    @classmethod
    def _check_instances(cls, instances: list[Instance]) -> list[Instance]:
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


class Route(_Model):
    path: str
    methods: list[str]
    backend: str
    rewrite: Rewrite | None = None
    timeout: Duration | None = Field(None, gt=0, description="Overrides timeouts.request.")
    max_body_bytes: ByteSize | None = Field(None, description="Overrides limits.max_body_bytes.")

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


class GatewayConfig(_Model):
    server: Server = Server()
    nats: Nats | None = Field(None, description="Needed by every NATS-backed feature.")
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


def _cross_check(config: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Rules that span fields: references between sections and route conflicts."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for index, route in enumerate(config.routes):
        if route.backend not in config.backends:
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
