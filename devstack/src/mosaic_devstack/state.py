"""The data folder of a local stack and the two files other commands read from it.

Layout of the data folder (default `.mosaic`):

    pg/                  PostgreSQL cluster (embedded only)
    nats/                JetStream storage (embedded only; nats/node-<i>/ per node of a cluster)
    logs/<name>.log      one file per instance, plus mosaic.log, postgres.log, nats.log,
                         gateway.log and <service>-migrate.log / <service>-seed.log
    gateway.yaml         the gateway's configuration, written at every start
    nats.conf            the embedded NATS servers' authorization (users, permissions), written
                         at every start from the kept NATS passwords
    state.json           what the running supervisor started (removed when it stops)
    credentials.json     secrets the seeds returned the first time (kept across runs)
    secrets/<NAME>       secrets generated for the services (e.g. AUTH_SIGNING_KEY_SECRET) and
                         the NATS passwords (NATS_PASSWORD_<USER>), one file each, made at the
                         first start and reused by every later one
    supervisor.lock      held by the running supervisor

Both JSON files, nats.conf and the secrets are private (mode 0600, the secrets' folder 0700): they carry
passwords and URLs that may embed them.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mosaic_devstack.procs import ProcessRef

STATE_FORMAT = 1


class StateError(RuntimeError):
    pass


@dataclass(frozen=True)
class DataDir:
    root: Path

    @classmethod
    def at(cls, path: str | Path) -> DataDir:
        return cls(Path(path).expanduser().absolute())

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def credentials_file(self) -> Path:
        return self.root / "credentials.json"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def lock_file(self) -> Path:
        return self.root / "supervisor.lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def gateway_config(self) -> Path:
        return self.root / "gateway.yaml"

    @property
    def nats_config(self) -> Path:
        return self.root / "nats.conf"

    @property
    def pg(self) -> Path:
        return self.root / "pg"

    @property
    def nats(self) -> Path:
        return self.root / "nats"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def create(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)


@dataclass
class ServerInfo:
    url: str
    embedded: bool
    pid: int | None = None
    pid_started: float | None = None

    def process(self) -> ProcessRef | None:
        return ProcessRef(self.pid, self.pid_started) if self.embedded and self.pid else None


@dataclass
class InstanceInfo:
    service: str
    instance: str
    url: str
    port: int
    pid: int | None = None
    pid_started: float | None = None
    state: str = "starting"
    """starting | ready | restarting | failed | stopped"""
    restarts: int = 0
    ready_path: str = "/readyz"

    def process(self) -> ProcessRef | None:
        return ProcessRef(self.pid, self.pid_started) if self.pid else None


@dataclass
class GatewayInfo(InstanceInfo):
    """The gateway in front of the services: `url` is what clients call."""

    admin_url: str = ""
    """Loopback only: /healthz, /readyz, /admin/routes, /admin/backends."""
    config_file: str = ""
    workers: int = 1


@dataclass
class State:
    supervisor_pid: int
    supervisor_started: float | None
    started_at: str
    data_dir: str
    credentials_file: str
    logs_dir: str
    status: str = "starting"
    """starting | ready | stopping"""
    postgres: ServerInfo | None = None
    nats: ServerInfo | None = None
    instances: list[InstanceInfo] = field(default_factory=list)
    ready_at: str | None = None
    gateway: GatewayInfo | None = None
    nats_nodes: list[ServerInfo] = field(default_factory=list)
    """With `--nats-cluster N`: every node (then `nats` holds the list of URLs and no pid)."""

    def supervisor(self) -> ProcessRef:
        return ProcessRef(self.supervisor_pid, self.supervisor_started)

    def processes(self) -> list[ProcessRef]:
        """Every process this stack started, in the order to stop them: the gateway (clients
        stop getting in), the services, then the servers they use."""
        refs = [self.gateway.process() if self.gateway else None]
        refs += [inst.process() for inst in self.instances]
        refs += [self.nats.process() if self.nats else None]
        refs += [node.process() for node in self.nats_nodes]
        refs += [self.postgres.process() if self.postgres else None]
        return [ref for ref in refs if ref is not None]

    def to_json(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> State:
        if raw.get("format") != STATE_FORMAT:
            raise StateError(f"unknown state format {raw.get('format')!r}")
        data = {k: v for k, v in raw.items() if k != "format"}
        data["postgres"] = ServerInfo(**data["postgres"]) if data.get("postgres") else None
        data["nats"] = ServerInfo(**data["nats"]) if data.get("nats") else None
        data["nats_nodes"] = [ServerInfo(**item) for item in data.get("nats_nodes", [])]
        data["instances"] = [InstanceInfo(**item) for item in data.get("instances", [])]
        data["gateway"] = GatewayInfo(**data["gateway"]) if data.get("gateway") else None
        return cls(**data)


def write_private_text(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, in a file created 0600 (never readable by others)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_private_json(path: Path, data: Any) -> None:
    write_private_text(path, json.dumps(data, indent=2) + "\n")


def kept_secrets(data: DataDir, names: Iterable[str], env: Mapping[str, str]) -> dict[str, str]:
    """The secrets named, for those `env` does not set: read from the data folder, or generated
    there (0600) the first time. A secret that changed between runs would make what was stored
    with it unreadable (auth's signing keys), so it is made once and never replaced."""
    found: dict[str, str] = {}
    for name in names:
        if name in env:
            continue
        path = data.secrets / name
        try:
            value = path.read_text().strip()
        except FileNotFoundError:
            value = ""
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc}") from exc
        if not value:
            data.secrets.mkdir(mode=0o700, exist_ok=True)
            value = secrets.token_urlsafe(32)
            write_private_text(path, value + "\n")
        found[name] = value
    return found


def read_state(data: DataDir) -> State | None:
    try:
        raw = json.loads(data.state_file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {data.state_file}: {exc}") from exc
    try:
        return State.from_json(raw)
    except (TypeError, KeyError) as exc:
        raise StateError(f"{data.state_file} is not a mosaic state file: {exc}") from exc


def write_state(data: DataDir, state: State) -> None:
    write_private_json(data.state_file, state.to_json())


def read_credentials(data: DataDir) -> dict[str, Any]:
    try:
        raw = json.loads(data.credentials_file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {data.credentials_file}: {exc}") from exc
    return raw if isinstance(raw, dict) else {}


def merge_credentials(kept: dict[str, Any], seeded: dict[str, Any]) -> dict[str, Any]:
    """Fold what a seed returned into what is kept.

    A seed answers null for things that already existed (their secret cannot be recovered), so
    null keeps what we hold. A value means the seed has just created it, which makes it the one
    that works now (say the database was wiped but this file was not), so it replaces ours.
    """
    merged = dict(kept)
    merged.update({key: value for key, value in seeded.items() if value is not None})
    return merged
