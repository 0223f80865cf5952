"""`mosaic up`'s engine: start servers, migrate, seed, run replicas, restart crashes, stop in order.

Start: PostgreSQL and NATS together (or the ones given by DATABASE_URL / NATS_URL), then every
service at once: migrate, seed, then its replicas in parallel until each answers /readyz; then
the gateway in front of them, until it routes.
Stop (signal, or a failed start): the gateway, then services in reverse start order (SIGTERM,
grace, SIGKILL), then NATS, then PostgreSQL. Each part is signalled once the one before it exited
or after a short head start, so a part that hangs costs one grace period in all, not one per part.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from mosaic_devstack import nats_auth
from mosaic_devstack.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    ServerError,
    cluster_url,
    free_port,
    nats_cluster,
    wait_jetstream,
)
from mosaic_devstack.gateway import GatewayInstance, hold_port
from mosaic_devstack.gateway_config import (
    IDENTITY,
    GatewayConfigError,
    GatewaySettings,
    gateway_config,
    render,
)
from mosaic_devstack.instance import HOST, Instance, NotReadyError
from mosaic_devstack.output import Console
from mosaic_devstack.procs import ProcessRef
from mosaic_devstack.provision import StepError, parse_seed_output, run_step
from mosaic_devstack.report import credentials_text, gateway_text, stack_table
from mosaic_devstack.services import RegistryError, Service
from mosaic_devstack.state import (
    DataDir,
    ServerInfo,
    State,
    StateError,
    kept_secrets,
    merge_credentials,
    read_credentials,
    write_private_json,
    write_private_text,
    write_state,
)
from mosaic_devstack.streams import LineSink, tail_text

T = TypeVar("T")

# An instance that stayed up this long has recovered; its next crash starts the count afresh.
STABLE_AFTER = 30.0
MAX_BACKOFF = 10.0
# How long a stopping part has alone before the next one is signalled too. Parts that stop
# promptly still stop in order (callers before callees); one that hangs (say, on a frozen NATS)
# delays the next by this much rather than by its whole grace period.
STOP_HEAD_START = 1.0


class StartupError(RuntimeError):
    pass


# Failures that end `mosaic up` with a message rather than a traceback.
EXPECTED = (StartupError, StepError, NotReadyError, RegistryError, ServerError, GatewayConfigError)

# The gateway's port when none is asked for, if it is free: a URL that stays the same from one
# run to the next is easier to work with than the free ports everything else gets.
PREFERRED_GATEWAY_PORT = 8080


@dataclass
class UpOptions:
    data: DataDir
    services: tuple[Service, ...]
    replicas: int = 2
    ready_timeout: float = 60.0
    grace: float = 10.0
    max_restarts: int = 5
    quiet: bool = False
    """Do not echo the services' output (it still goes to the log files)."""
    gateway: bool = True
    """Run the gateway in front of the services (when the registry has auth and blog)."""
    gateway_port: int | None = None
    """None: PREFERRED_GATEWAY_PORT if free, else any free port; 0: any free port."""
    gateway_workers: int = 2
    nats_cluster: int = 1
    """Embedded NATS servers; more than 1 makes them a JetStream cluster, streams replicated
    on every node."""
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


async def first_failure(coros: Iterable[Coroutine[Any, Any, Any]]) -> None:
    """Run concurrently; on the first error cancel the others, wait for them, and raise it."""
    tasks = [asyncio.create_task(coro) for coro in coros]
    if not tasks:
        return
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


class Supervisor:
    def __init__(self, opts: UpOptions, console: Console) -> None:
        self.opts = opts
        self.data = opts.data
        self.console = console
        self.env = dict(opts.environ)
        self.sinks: dict[str, LineSink] = {}
        self.ports: set[int] = set()
        # Every prefix has the same width from the first line on, so the columns line up.
        names = ["mosaic", "gateway"]
        for service in opts.services:
            names += [f"{service.name}-migrate", *service.instance_names(opts.replicas)]
        console.width = max(console.width, *(len(name) for name in names))
        self.log = self._sink("mosaic", echo=True)
        self.pg: EmbeddedPostgres | None = None
        self.nats_nodes: list[EmbeddedNats] = []
        """The embedded NATS servers: one, or the nodes of `--nats-cluster N`."""
        self.database_url = ""
        self.nats_url = ""
        self.nats_passwords: dict[str, str] = {}
        """Per NATS user, when the stack runs its own NATS (with authorization)."""
        self.instances: list[Instance] = []
        self.gateway: GatewayInstance | None = None
        self.gateway_port: int | None = None
        self.gateway_sockets: list[socket.socket] = []  # held from the port check on
        self.state: State | None = None
        try:
            self.credentials = read_credentials(self.data)
        except StateError as exc:
            self.say(f"warning: {exc}; starting with no recorded credentials")
            self.credentials = {}
        self.stop_requested = asyncio.Event()
        self.force = asyncio.Event()
        self.stopping = False
        self.threads: list[asyncio.Future[Any]] = []
        self.watchers: list[asyncio.Task[None]] = []
        self.http = httpx.AsyncClient(trust_env=False)  # probes go to 127.0.0.1, never a proxy
        self.started = time.monotonic()

    def _port(self) -> int:
        # The OS may hand the same free port out twice when asked in quick succession, and
        # nothing listens on ours yet when the next one is picked.
        while (port := free_port()) in self.ports:
            pass
        self.ports.add(port)
        return port

    def say(self, message: str) -> None:
        self.log.write(f"{now_iso()} {message}".encode())

    def _sink(self, name: str, *, echo: bool | None = None) -> LineSink:
        if name not in self.sinks:
            show = (not self.opts.quiet) if echo is None else echo
            self.sinks[name] = LineSink(name, self.data.log(name), self.console if show else None)
        return self.sinks[name]

    # ---- the whole run -------------------------------------------------------------------

    async def run(self) -> int:
        self._install_signals()
        code = 0
        startup = asyncio.create_task(self._start())
        stop = asyncio.create_task(self.stop_requested.wait())
        try:
            await asyncio.wait({startup, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not startup.done():
                startup.cancel()
                await asyncio.wait({startup})
            if startup.cancelled():
                self.say("start-up interrupted")
            elif isinstance(startup.exception(), EXPECTED):
                self.say(f"error: {startup.exception()}")
                code = 1
            else:
                startup.result()  # re-raises anything unexpected
                self._announce()
                await stop
        finally:
            stop.cancel()
            await self._shutdown()
        return code

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            # Under nohup SIGHUP is ignored on purpose; keep it that way.
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.stop_requested.is_set():
            self.say(f"{sig.name} received: stopping (send it again to skip the grace period)")
            self.stop_requested.set()
        elif not self.force.is_set():
            self.say(f"{sig.name} received again: killing the services now")
            self.force.set()

    # ---- start-up ------------------------------------------------------------------------

    async def _start(self) -> None:
        self.say(f"starting the stack in {self.data.root}")
        # Written first thing so `mosaic down` can stop a stack that is still starting.
        self.state = State(
            supervisor_pid=os.getpid(),
            supervisor_started=ProcessRef.of(os.getpid()).started,
            started_at=now_iso(),
            data_dir=str(self.data.root),
            credentials_file=str(self.data.credentials_file),
            logs_dir=str(self.data.logs),
        )
        self._write_state()
        for service in self.opts.services:
            service.argv()  # a missing program fails here, before anything is started
        if self._wants_gateway():
            self.gateway_port = self._pick_gateway_port()
        await self._start_servers()
        await first_failure(self._bring_up(service) for service in self.opts.services)
        if self.gateway_port is not None:
            await self._bring_up_gateway(self.gateway_port)
        assert self.state is not None
        self.state.status = "ready"
        self.state.ready_at = now_iso()
        self._write_state()
        self.say(f"ready in {time.monotonic() - self.started:.1f}s")

    async def _start_servers(self) -> None:
        jobs: list[Coroutine[Any, Any, Any]] = []
        self.database_url = self.env.get("DATABASE_URL", "")
        if self.database_url:
            self.say("PostgreSQL: using DATABASE_URL from the environment")
        else:
            pg = self.pg = EmbeddedPostgres(
                self.data.pg, self._port(), log=self.data.log("postgres")
            )
            jobs.append(self._server_thread("PostgreSQL", pg.start, pg.log_path))
            self.database_url = pg.url
        self.nats_url = self.env.get("NATS_URL", "")
        if self.nats_url:
            self.say("NATS: using NATS_URL from the environment")
        else:
            # One user per service and the gateway, each allowed its own subjects only.
            self.nats_passwords = nats_auth.write_server_config(self.data, self.opts.services)
            self.nats_nodes = nats_cluster(
                self.data.nats,
                self.opts.nats_cluster,
                self._port,
                self.data.logs,
                config=self.data.nats_config,
            )
            for node in self.nats_nodes:
                jobs.append(self._server_thread(self._nats_name(node), node.start, node.log_path))
            self.nats_url = cluster_url(self.nats_nodes)
            # Streams are created by the services' first start; tell them the cluster's size.
            self.env.setdefault("NATS_STREAM_REPLICAS", str(len(self.nats_nodes)))
        await first_failure(jobs)
        self._record_servers()
        if self.nats_nodes:
            # Listening is not enough: a cluster's JetStream answers once a leader is elected.
            try:
                await wait_jetstream(
                    self.nats_url,
                    timeout=30.0,
                    user=nats_auth.ADMIN,
                    password=self.nats_passwords[nats_auth.ADMIN],
                )
            except ServerError as exc:
                raise StartupError(f"NATS: {exc}") from None
            if len(self.nats_nodes) > 1:
                self.say(f"NATS cluster of {len(self.nats_nodes)} is up")
        if self.pg is not None:
            self.watchers.append(asyncio.create_task(self._watch_server("PostgreSQL", self.pg)))
        for node in self.nats_nodes:
            self.watchers.append(
                asyncio.create_task(self._watch_server(self._nats_name(node), node))
            )

    def _nats_name(self, node: EmbeddedNats) -> str:
        if len(self.nats_nodes) == 1:
            return "NATS"
        return f"NATS node {self.nats_nodes.index(node) + 1}"

    def _record_servers(self) -> None:
        """Write the servers' URLs and pids to the state file. A cluster is recorded as its
        list of URLs (what clients are given) under `nats`, each node under `nats_nodes`."""
        assert self.state is not None
        self.state.postgres = self._server_info(self.database_url, self.pg)
        nodes = [self._server_info(node.url, node) for node in self.nats_nodes]
        if len(nodes) == 1:
            self.state.nats = nodes[0]
        else:
            self.state.nats = ServerInfo(url=self.nats_url, embedded=bool(nodes))
            self.state.nats_nodes = nodes
        self._write_state()

    @staticmethod
    def _server_info(url: str, server: EmbeddedPostgres | EmbeddedNats | None) -> ServerInfo:
        if server is None or server.pid is None:
            return ServerInfo(url=url, embedded=False)
        ref = ProcessRef.of(server.pid)
        return ServerInfo(url=url, embedded=True, pid=ref.pid, pid_started=ref.started)

    async def _server_thread(self, what: str, start: Callable[[], object], log: Path) -> None:
        # The embedded servers start with blocking calls. The thread cannot be cancelled, so
        # shutdown waits for it (self.threads) before stopping what it started.
        future = asyncio.get_running_loop().run_in_executor(None, start)
        self.threads.append(future)
        try:
            await asyncio.shield(future)
        except ServerError as exc:
            raise StartupError(f"{what}: {exc}; last lines of {log}:\n{tail_text(log)}") from None
        self.say(f"{what} is up")

    async def _bring_up(self, service: Service) -> None:
        env = self._service_env(service)
        if service.migrate:
            await self._step(service, "migrate", env)
        instances = [
            Instance(service, name, self._port(), self._instance_env(env, name), self._sink(name))
            for name in service.instance_names(self.opts.replicas)
        ]
        self.instances.extend(instances)
        # The seed needs the migrated schema, not the instances, nor they the seed (auth's
        # replicas and its seed agree on the signing key under a lock): side by side, the seed
        # (an Argon2 hash, a process start) leaves the critical path of `mosaic up`.
        jobs = [self._start_instance(inst) for inst in instances]
        if service.seed:
            jobs.append(self._seed(service, env))
        await first_failure(jobs)

    async def _seed(self, service: Service, env: Mapping[str, str]) -> None:
        out = await self._step(service, "seed", env)
        self._keep_credentials(service, parse_seed_output(out, service.name))

    async def _step(self, service: Service, step: str, env: Mapping[str, str]) -> bytes:
        name = f"{service.name}-{step}"
        began = time.monotonic()
        out = await run_step(
            service,
            step,
            {**env, "INSTANCE_ID": name},
            self._sink(name),
            capture_stdout=step == "seed",  # the seed's stdout is secrets: kept, never logged
        )
        self.say(f"{service.name}: {step} done in {time.monotonic() - began:.1f}s")
        return out

    async def _start_instance(self, inst: Instance) -> None:
        began = time.monotonic()
        await inst.spawn()
        self._write_state()
        await inst.wait_ready(self.http, self.opts.ready_timeout)
        inst.info.state = "ready"
        self._write_state()
        self.say(f"{inst.name} ready in {time.monotonic() - began:.1f}s at {inst.url}")
        self.watchers.append(asyncio.create_task(self._watch(inst)))

    def _service_env(self, service: Service) -> dict[str, str]:
        env = dict(self.env)
        env["DATABASE_URL"] = self.database_url
        env["NATS_URL"] = self.nats_url
        env.setdefault("LOG_FORMAT", "json")
        if self.gateway_port is not None:
            # The gateway replaces a client's X-Forwarded-For with the address it saw, so auth
            # may take it (sign-in throttling per client address).
            env.setdefault("AUTH_TRUST_FORWARDED_FOR", "true")
            # The address clients are given: auth names its OAuth endpoints under it
            # (/.well-known/oauth-authorization-server).
            env.setdefault("AUTH_PUBLIC_URL", f"http://{HOST}:{self.gateway_port}")
        env["PYTHONUNBUFFERED"] = "1"  # lines reach the terminal as they are written
        if service.schema:
            env["DB_SCHEMA"] = service.schema
        env.update(kept_secrets(self.data, service.secrets, env))
        if self.nats_passwords:
            env.update(nats_auth.client_env(service.name, self.nats_passwords[service.name]))
        return env

    @staticmethod
    def _instance_env(service_env: Mapping[str, str], name: str) -> dict[str, str]:
        return {**service_env, "INSTANCE_ID": name, "HOST": HOST}

    def _keep_credentials(self, service: Service, seeded: Mapping[str, Any]) -> None:
        merged = merge_credentials(self.credentials, dict(seeded))
        if merged != self.credentials or (merged and not self.data.credentials_file.exists()):
            write_private_json(self.data.credentials_file, merged)
            self.credentials = merged
        for key, value in seeded.items():
            if value is None and key not in self.credentials:
                self.say(
                    f"{service.name} seed: {key!r} already existed and its secret is not in "
                    f"{self.data.credentials_file}; it cannot be shown"
                )

    # ---- the gateway ---------------------------------------------------------------------

    def _wants_gateway(self) -> bool:
        if not self.opts.gateway:
            self.say("gateway: off (--no-gateway); clients call the instances directly")
            return False
        if IDENTITY not in {service.name for service in self.opts.services}:
            self.say(
                f"gateway: not started, it verifies API keys and tokens with {IDENTITY} and the "
                f"service list has no {IDENTITY}"
            )
            return False
        GatewayInstance.check_installed()
        return True

    def _pick_gateway_port(self) -> int:
        """Bind the gateway's port now and hold it for the stack's life (see gateway.py)."""
        requested = self.opts.gateway_port
        port = PREFERRED_GATEWAY_PORT if requested is None else requested
        try:
            listener = hold_port(port)
        except OSError as exc:
            if requested is not None:
                raise StartupError(
                    f"gateway: port {port} is in use (try another --gateway-port)"
                    if exc.errno == errno.EADDRINUSE
                    else f"gateway: cannot listen on port {port}: {exc.strerror or exc}"
                ) from None
            self.say(f"gateway: port {port} is in use; using a free one")
            listener = hold_port(0)
        self.gateway_sockets.append(listener)
        bound: int = listener.getsockname()[1]
        self.ports.add(bound)
        return bound

    async def _openapi_documents(self) -> dict[str, dict[str, Any]]:
        """Each service's OpenAPI document, from its first instance: the routes it declares for
        the gateway (`x-mosaic-gateway`) are the gateway's routes. A service without a document
        (404) exposes nothing. Fetched side by side: each is built on its first request."""
        async with httpx.AsyncClient(timeout=10.0) as client:

            async def fetch(service: Service) -> dict[str, Any] | None:
                first = next((i for i in self.instances if i.service is service), None)
                if first is None:  # no replicas
                    return None
                url = first.url + "/openapi.json"
                try:
                    answer = await client.get(url)
                    if answer.status_code == 404:
                        self.say(f"gateway: {service.name} has no /openapi.json; no routes to it")
                        return None
                    answer.raise_for_status()
                    document: dict[str, Any] = answer.json()
                except (httpx.HTTPError, ValueError) as exc:
                    raise StartupError(f"gateway: cannot read {url}: {exc}") from None
                return document

            services = list(self.opts.services)
            found = await asyncio.gather(*(fetch(service) for service in services))
        return {
            service.name: document
            for service, document in zip(services, found, strict=True)
            if document is not None
        }

    async def _bring_up_gateway(self, port: int) -> None:
        began = time.monotonic()
        listener = self.gateway_sockets[0]
        admin_listener = hold_port(0)
        self.gateway_sockets.append(admin_listener)
        settings = GatewaySettings(
            listen=HOST,
            port=port,
            admin_port=admin_listener.getsockname()[1],
            workers=self.opts.gateway_workers,
            nats_url=self.nats_url,
            # Within the devstack's own grace, so the gateway drains before it would be killed.
            shutdown_grace=round(min(self.opts.grace / 2, 10.0), 3),
            jwt_issuer=self.env.get("AUTH_ISSUER"),
            jwt_audience=self.env.get("AUTH_AUDIENCE"),
            otlp_endpoint=self.env.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        )
        if self.nats_passwords:
            user = nats_auth.GATEWAY
            settings = dataclasses.replace(
                settings,
                nats_user=user,
                # The file the password is kept in: the configuration never holds it.
                nats_password_file=str(self.data.secrets / nats_auth.password_secret(user)),
                nats_inbox_prefix=nats_auth.inbox_prefix(user),
            )
        documents = await self._openapi_documents()
        path = self.data.gateway_config
        # Private like the state: an external NATS_URL may carry a password.
        write_private_text(path, render(gateway_config(settings, documents), str(path)))
        env = {**self.env, "NATS_URL": self.nats_url, "PYTHONUNBUFFERED": "1"}
        env.setdefault("LOG_FORMAT", "json")
        gateway = self.gateway = GatewayInstance(
            listener=listener,
            admin_listener=admin_listener,
            workers=settings.workers,
            config_file=path,
            env=env,
            sink=self._sink("gateway"),
        )
        await gateway.spawn()
        self._write_state()
        await gateway.wait_ready(self.http, self.opts.ready_timeout)
        gateway.info.state = "ready"
        self._write_state()
        self.say(
            f"gateway ready in {time.monotonic() - began:.1f}s at {gateway.url} "
            f"({settings.workers} workers; admin {gateway.admin_url}; config {path})"
        )
        self.watchers.append(asyncio.create_task(self._watch(gateway)))

    # ---- running -------------------------------------------------------------------------

    def _announce(self) -> None:
        assert self.state is not None
        self.console.say("")
        self.console.say(stack_table(self.state))
        self.console.say("")
        self.console.say(credentials_text(self.credentials, self.data.credentials_file))
        self.console.say("")
        self.console.say(gateway_text(self.state, self.credentials))
        self.console.say("")

    async def _watch(self, inst: Instance) -> None:
        """Restart `inst` when it dies, with growing delays, at most `max_restarts` in a row."""
        in_a_row = 0
        while True:
            code = await inst.wait_exit()
            if self.stopping:
                return
            if time.monotonic() - inst.spawned_at > STABLE_AFTER:
                in_a_row = 0
            in_a_row += 1
            if in_a_row > self.opts.max_restarts:
                inst.info.state = "failed"
                self._write_state()
                self.say(
                    f"{inst.name} died ({describe_exit(code)}) {in_a_row} times in a row; "
                    f"not restarting it again (see {inst.sink.path})"
                )
                return
            delay = min(0.5 * 2 ** (in_a_row - 1), MAX_BACKOFF)
            inst.info.state = "restarting"
            inst.info.restarts += 1
            self._write_state()
            self.say(
                f"{inst.name} died unexpectedly ({describe_exit(code)}); restarting it in "
                f"{delay:g}s (attempt {in_a_row}/{self.opts.max_restarts})"
            )
            await asyncio.sleep(delay)
            if not await self._restart(inst):
                return

    async def _watch_server(self, what: str, server: EmbeddedPostgres | EmbeddedNats) -> None:
        """Restart an embedded server that dies, on the same port and data, like an instance."""
        in_a_row = 0
        while True:
            process, began = server.process, time.monotonic()
            # A Popen offers no awaitable exit; a cheap poll beats a thread parked per server.
            while process is not None and process.poll() is None:  # noqa: ASYNC110
                await asyncio.sleep(0.5)
            if self.stopping or process is None:
                return
            if time.monotonic() - began > STABLE_AFTER:
                in_a_row = 0
            in_a_row += 1
            if in_a_row > self.opts.max_restarts:
                self.say(f"{what} died {in_a_row} times in a row; not restarting it again")
                return
            delay = min(0.5 * 2 ** (in_a_row - 1), MAX_BACKOFF)
            self.say(
                f"{what} died unexpectedly ({describe_exit(process.returncode)}); restarting it "
                f"in {delay:g}s (attempt {in_a_row}/{self.opts.max_restarts}); see {server.log_path}"
            )
            await asyncio.sleep(delay)
            try:
                await self._server_thread(what, server.start, server.log_path)
            except StartupError as exc:
                self.say(f"restart failed: {exc}")
                continue
            self._record_servers()

    async def _restart(self, inst: Instance) -> bool:
        """Start `inst` again; False when it cannot even be started (no point retrying)."""
        try:
            await inst.spawn()
        except (OSError, RegistryError) as exc:
            inst.info.state = "failed"
            self._write_state()
            self.say(f"cannot restart {inst.name}: {exc}")
            return False
        self._write_state()
        try:
            await inst.wait_ready(self.http, self.opts.ready_timeout)
        except NotReadyError as exc:
            self.say(f"restart failed: {exc}")
            await inst.stop(self.opts.grace, self.force)
            return True
        inst.info.state = "ready"
        self._write_state()
        self.say(f"{inst.name} is ready again (pid {inst.info.pid})")
        return True

    # ---- stopping ------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        self.stopping = True
        if self.state is not None:
            self.state.status = "stopping"
            self._write_state()
        for watcher in self.watchers:
            watcher.cancel()
        await asyncio.gather(*self.watchers, return_exceptions=True)
        stopping: list[asyncio.Task[None]] = []
        for sock in self.gateway_sockets:
            sock.close()  # the gateway holds its own copies until it has drained
        if self.gateway is not None:
            # First: clients stop getting in before the services behind it go.
            if self.gateway.running():
                self.say("stopping the gateway")
            await self._stop_stage([self.gateway], stopping)
        if any(inst.running() for inst in self.instances):
            self.say(f"stopping {len(self.instances)} service instance(s)")
        # Reverse start order, so a service that calls others (listed later) stops taking
        # requests before the services behind it go.
        for service in reversed(self.opts.services):
            group = [inst for inst in self.instances if inst.service is service]
            await self._stop_stage(group, stopping)
        # Nothing that needs NATS or PostgreSQL may outlive them.
        for result in await asyncio.gather(*stopping, return_exceptions=True):
            if isinstance(result, BaseException):
                self.say(f"error while stopping: {result!r}")
        if self.gateway is not None:
            self.gateway.info.state = "stopped"
        for inst in self.instances:
            inst.info.state = "stopped"
        await asyncio.gather(*self.threads, return_exceptions=True)
        await asyncio.gather(
            *(self._stop_server(self._nats_name(node), node) for node in self.nats_nodes)
        )
        await self._stop_server("PostgreSQL", self.pg)
        await self.http.aclose()
        self._remove_state()
        self.say("stopped")
        for sink in self.sinks.values():
            sink.close()

    async def _stop_stage(
        self, parts: Iterable[Instance], stopping: list[asyncio.Task[None]]
    ) -> None:
        """Start stopping `parts` (each: SIGTERM, its grace, SIGKILL) and give them a head start.

        Returns once they all exited or after `STOP_HEAD_START`; the stops go on in `stopping`.
        """
        started = [asyncio.create_task(part.stop(self.opts.grace, self.force)) for part in parts]
        stopping.extend(started)
        if started:
            await asyncio.wait(started, timeout=STOP_HEAD_START)

    async def _stop_server(self, what: str, server: EmbeddedPostgres | EmbeddedNats | None) -> None:
        if server is None or server.process is None:
            return
        self.say(f"stopping {what}")
        try:
            await asyncio.to_thread(server.stop)
        except Exception as exc:
            self.say(f"error while stopping {what}: {exc!r}")

    def _write_state(self) -> None:
        if self.state is None:
            return
        order = {service.name: i for i, service in enumerate(self.opts.services)}
        ordered = sorted(
            self.instances, key=lambda inst: (order[inst.service.name], len(inst.name), inst.name)
        )
        self.state.instances = [inst.info for inst in ordered]
        self.state.gateway = self.gateway.gateway_info if self.gateway else None
        write_state(self.data, self.state)

    def _remove_state(self) -> None:
        # Only this supervisor writes it (it holds the data folder's lock).
        self.data.state_file.unlink(missing_ok=True)
