"""The services `mosaic up` runs, in start order: the registry, `services.toml` beside this file.

Each one is a CLI following the service contract: `<cmd> migrate`, `<cmd> seed` (prints one JSON
object of secrets to keep), `<cmd> serve --host H --port P --instance-id I`, ready when
`GET /readyz` answers 200. Adding a service is one `[[service]]` entry (`mosaic new service`
writes it). Secrets a service needs but does not make itself (`secrets`) are generated once per
data folder and kept there.

A JSON file with the same fields (`--services FILE`) replaces the list, so the devstack can run
other builds of a service, or the fake service its own tests use.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REGISTRY = Path(__file__).with_name("services.toml")
_NAME = re.compile(r"[a-z][a-z0-9]*")
_SETTING = re.compile(r"[A-Z][A-Z0-9_]*")
# Names the devstack uses for its own processes and log files.
RESERVED = frozenset({"mosaic", "postgres", "nats", "gateway"})


class RegistryError(ValueError):
    pass


@dataclass(frozen=True)
class Service:
    name: str
    command: tuple[str, ...]
    """Program and leading arguments; a bare name is looked up next to the running Python first."""
    definition: str | None = None
    """`module:NAME` of its `ServiceDefinition`, for tools that read its settings or OpenAPI."""
    schema: str | None = None
    """PostgreSQL schema the service owns (passed as DB_SCHEMA)."""
    migrate: bool = True
    seed: bool = True
    replicas: int | None = None
    """Fixed replica count; None follows `mosaic up --replicas`."""
    ready_path: str = "/readyz"
    secrets: tuple[str, ...] = ()
    """Settings (environment variable names) that hold a secret `mosaic up` generates once per
    data folder, keeps there (`DataDir.secrets`) and passes to every step and replica, unless the
    environment of `mosaic up` sets them itself."""
    nats_consumes: tuple[str, ...] = ()
    """The services whose event streams it reads (durable consumers, followed feeds): its NATS
    user may create consumers on them and fetch from them (`mosaic_devstack.nats_auth`)."""
    nats_calls: tuple[str, ...] = ()
    """The NATS endpoints of other services it requests (exact subjects)."""
    nats_buckets: tuple[str, ...] = ()
    """The JetStream key-value buckets it keeps (its cache)."""

    def instance_names(self, default_replicas: int) -> list[str]:
        count = self.replicas if self.replicas is not None else default_replicas
        return [f"{self.name}-{i}" for i in range(1, count + 1)]

    def argv(self, *args: str) -> list[str]:
        return [resolve_program(self.command[0]), *self.command[1:], *args]

    def load_definition(self) -> Any:
        """The service's `ServiceDefinition`, imported (which loads the whole service)."""
        if self.definition is None:
            raise RegistryError(f"{self.name}: the registry names no 'definition'")
        module, _, attribute = self.definition.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            raise RegistryError(f"{self.name}: cannot load {self.definition}: {exc}") from exc


def openapi_documents(services: Sequence[Service]) -> dict[str, dict[str, Any]]:
    """Each service's OpenAPI document, built from its definition without running it (for the
    gateway configurations `mosaic compose` and `mosaic manifests` render); services with no
    `definition` have none."""
    documents: dict[str, dict[str, Any]] = {}
    for service in services:
        if service.definition is not None:
            definition = service.load_definition()
            documents[service.name] = definition.app(definition.settings()).openapi()
    return documents


def resolve_program(program: str) -> str:
    """Absolute path of `program`: the virtualenv's own scripts win over anything on PATH."""
    if "/" in program:
        if not Path(program).exists():
            raise RegistryError(f"{program} does not exist")
        return program
    beside = Path(sys.executable).parent / program
    if beside.exists():
        return str(beside)
    found = shutil.which(program)
    if found is None:
        raise RegistryError(
            f"{program} not found next to {sys.executable} nor on PATH "
            "(is it installed? try `uv sync`)"
        )
    return found


def load_registry(path: Path = REGISTRY) -> tuple[Service, ...]:
    """Read the registry: `[[service]]` tables with the fields of `Service`."""
    try:
        raw = tomllib.loads(path.read_text()).get("service")
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read the service registry {path}: {exc}") from exc
    return _services(raw, path, "a non-empty list of [[service]] tables")


def load_services(path: Path) -> tuple[Service, ...]:
    """Read a services file: a JSON list of objects with the fields of `Service`."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read services file {path}: {exc}") from exc
    return _services(raw, path, "a non-empty JSON list of services")


def _services(raw: Any, path: Path, expected: str) -> tuple[Service, ...]:
    if not isinstance(raw, list) or not raw:
        raise RegistryError(f"{path}: expected {expected}")
    services = tuple(_service_from_json(item, path) for item in raw)
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise RegistryError(f"{path}: service names must be unique, got {names}")
    return services


def _service_from_json(item: Any, path: Path) -> Service:  # a JSON object or a TOML table
    if not isinstance(item, dict):
        raise RegistryError(f"{path}: each service must be an object")
    name = item.get("name")
    # The name becomes instance names, log file names and a command-line filter.
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in RESERVED:
        raise RegistryError(f"{path}: service name must match {_NAME.pattern}, got {name!r}")
    replicas = item.get("replicas")
    if replicas is not None and (not isinstance(replicas, int) or replicas < 1):
        raise RegistryError(f"{path}: {name}: 'replicas' must be a positive integer")
    # Each becomes a file name in the data folder and an environment variable.
    secrets = item.get("secrets", [])
    if not isinstance(secrets, list) or not all(
        isinstance(s, str) and _SETTING.fullmatch(s) for s in secrets
    ):
        raise RegistryError(
            f"{path}: {name}: 'secrets' must be a list of names matching {_SETTING.pattern}"
        )
    nats = {key: _names(item.get(key, []), path, name, key) for key in _NATS_FIELDS}
    try:
        command = item["command"]
        if isinstance(command, str):
            command = [command]
        if not command or not all(isinstance(part, str) for part in command):
            raise RegistryError(f"{path}: 'command' must be a non-empty list of strings")
        return Service(
            name=name,
            command=tuple(command),
            definition=_definition(item.get("definition"), path, name),
            schema=item.get("schema"),
            migrate=bool(item.get("migrate", True)),
            seed=bool(item.get("seed", True)),
            replicas=replicas,
            ready_path=str(item.get("ready_path", "/readyz")),
            secrets=tuple(secrets),
            **nats,
        )
    except KeyError as exc:
        raise RegistryError(f"{path}: service is missing {exc}") from exc


_NATS_FIELDS = ("nats_consumes", "nats_calls", "nats_buckets")
# Service names, subjects, bucket names: each becomes a literal subject or part of one in the
# NATS server's permissions, so no wildcards and no spaces.
_NATS_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def _names(value: Any, path: Path, name: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and _NATS_NAME.fullmatch(v) for v in value
    ):
        raise RegistryError(
            f"{path}: {name}: {key!r} must be a list of names or subjects without wildcards"
        )
    return tuple(value)


def _definition(value: Any, path: Path, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[\w.]+:\w+", value):
        raise RegistryError(f"{path}: {name}: 'definition' must look like 'module:NAME'")
    return value


SERVICES: tuple[Service, ...] = load_registry()
