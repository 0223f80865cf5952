"""Applying a changed configuration file while serving, without dropping a request.

A reload is asked for by SIGHUP or by the file changing on disk (`FileWatch`, polled every
`server.watch_interval`, a second by default: its bytes' digest, so an editor's rename-over or
a touch without change are handled).
The new file is validated whole first (`load_config`); a bad one is logged with its
`file:line:col` errors (`config_rejected`) and changes nothing.

A good one becomes a new `Runtime`, built and started (discovery's first round included) on the
worker's same `WorkerContext`, so NATS stays connected. It is then installed in one synchronous
step (`Worker.install`): the requests routed from then on use it. The requests that were routed
by the old runtime hold its routes, backends and pools; the old runtime is closed only once they
have all finished and none of its instances has a request outstanding, or after
`server.timeouts.shutdown_grace`.

What a running worker cannot change (its sockets and worker count: `server.listen`, `port`,
`workers`, `admin`; its NATS connection) keeps its old value, with a `config_restart_needed`
warning; the rest of the file applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from mosaic_gateway.config import ConfigError, GatewayConfig, load_config
from mosaic_gateway.handlers.forward import Forwarder
from mosaic_gateway.lifecycle.runtime import Runtime, build_runtime
from mosaic_kit.logging import get_logger

if TYPE_CHECKING:
    from mosaic_gateway.filters.context import WorkerContext
    from mosaic_gateway.http.server import Server

_log = get_logger("mosaic_gateway.lifecycle.reload")

# `server` fields bound at start: the sockets are made before the workers, the count is theirs.
RESTART_ONLY = ("listen", "port", "workers", "admin")
_RETIRE_POLL = 0.1


class FileWatch:
    """Tells whether a file's content changed since the last look (a missing file: no)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._digest = self._read()

    def _read(self) -> bytes | None:
        try:
            with open(self.path, "rb") as handle:
                return hashlib.sha256(handle.read()).digest()
        except OSError:
            return None

    def changed(self) -> bool:
        digest = self._read()
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        return True


def live_config(old: GatewayConfig, new: GatewayConfig) -> tuple[GatewayConfig, list[str]]:
    """`new` as a running gateway can apply it, and the fields it had to keep from `old`."""
    kept = [
        f"server.{name}"
        for name in RESTART_ONLY
        if getattr(old.server, name) != getattr(new.server, name)
    ]
    nats = new.nats
    if old.nats is not None and new.nats != old.nats:
        kept.append("nats")
        nats = old.nats
    # Read when a worker starts: its access log, metrics store, exporter and verifiers.
    for section in ("observability", "security"):
        if getattr(old, section) != getattr(new, section):
            kept.append(section)
    if not kept:
        return new, kept
    server = new.server.model_copy(
        update={name: getattr(old.server, name) for name in RESTART_ONLY}
    )
    update = {
        "server": server,
        "nats": nats,
        "observability": old.observability,
        "security": old.security,
    }
    return new.model_copy(update=update), kept


def summary(old: GatewayConfig, new: GatewayConfig) -> dict[str, object]:
    """What a reload changed, short enough for one log line."""
    added = sorted(set(new.backends) - set(old.backends))
    removed = sorted(set(old.backends) - set(new.backends))
    changed = sorted(
        name
        for name in set(new.backends) & set(old.backends)
        if new.backends[name] != old.backends[name]
    )
    old_routes = set(map(_route_key, old.routes))
    new_routes = set(map(_route_key, new.routes))
    return {
        "routes": len(new.routes),
        "routes_added": len(new_routes - old_routes),
        "routes_removed": len(old_routes - new_routes),
        "backends": len(new.backends),
        "backends_added": added,
        "backends_removed": removed,
        "backends_changed": changed,
    }


def _route_key(route: object) -> str:
    # Routes are frozen models: their JSON is a faithful key (a changed field: another route).
    return route.model_dump_json() if isinstance(route, BaseModel) else repr(route)


def rejected(file: str, issues: Iterable[object]) -> None:
    errors = [str(issue) for issue in issues]
    _log.error("config_rejected", file=file, errors=errors, kept="the running configuration")


class ReloadTarget(Protocol):
    """What a reload needs of a worker (worker.py)."""

    config: GatewayConfig
    context: WorkerContext
    runtime: Runtime | None
    server: Server
    forwarder: Forwarder

    def install(self, config: GatewayConfig, runtime: Runtime) -> None:
        """Make `runtime` the one new requests use; synchronous, so between two requests."""


class Reloader:
    """A worker's reloads: one at a time, requests arriving meanwhile coalesced into one more."""

    def __init__(self, worker: ReloadTarget, path: str | None, *, watch: bool) -> None:
        self.worker = worker
        self.path = path
        # Read now, at the worker's start: a change made while it starts is still noticed.
        self._file = FileWatch(path) if watch and path is not None else None
        self._ready = False
        self._wanted: str | None = None  # why a reload is due ("SIGHUP", "file changed")
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """The first runtime is installed: reloads may run (one asked for before runs now)."""
        self._ready = True
        if self._file is not None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(self._file))
        if self._wanted is not None:
            self._kick()

    def request(self, reason: str) -> None:
        if self.path is None:
            _log.warning("config_reload_impossible", reason="the configuration came from no file")
            return
        self._wanted = reason
        if self._ready:
            self._kick()

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._reload_all())

    async def _watch(self, watch: FileWatch) -> None:
        while True:
            # The running configuration's: a reload that changes it applies from the next look.
            await asyncio.sleep(self.worker.config.server.watch_interval)
            if watch.changed():
                self.request("file changed")

    async def _reload_all(self) -> None:
        while self._wanted is not None:
            reason = self._wanted
            self._wanted = None
            try:
                await self.reload(reason)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("config_reload_failed", reason=reason)

    async def reload(self, reason: str) -> bool:
        """Load, validate, build and install the file's configuration; False if rejected."""
        assert self.path is not None
        worker = self.worker
        try:
            new = load_config(self.path)
        except ConfigError as exc:
            rejected(self.path, exc.issues)
            return False
        old = worker.config
        config, kept = live_config(old, new)
        if kept:
            _log.warning("config_restart_needed", fields=kept, detail="kept their running values")
        runtime: Runtime | None = None
        try:
            await worker.context.open(config)  # a `nats:` section that was not there before
            runtime = build_runtime(config, worker.context, worker.forwarder, worker.runtime)
            await runtime.start()
        except asyncio.CancelledError:
            if runtime is not None:
                await runtime.close()
            raise
        except Exception as exc:
            _log.exception(
                "config_rejected", file=self.path, errors=[f"{type(exc).__name__}: {exc}"]
            )
            if runtime is not None:
                await runtime.close()
            return False
        previous = worker.runtime
        # Every request routed so far holds the previous runtime's routes: note them, then swap,
        # with no await in between.
        holders = _routed_exchanges(worker.server)
        worker.install(config, runtime)
        _log.info("config_reloaded", file=self.path, reason=reason, **summary(old, config))
        if previous is not None:
            grace = config.server.timeouts.shutdown_grace
            task = asyncio.get_running_loop().create_task(self._retire(previous, holders, grace))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return True

    async def _retire(self, runtime: Runtime, holders: list[_Routed], grace: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        try:
            # Polled: what is awaited is many exchanges finishing, each in its own way.
            while _in_use(runtime, holders) and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(_RETIRE_POLL)
        finally:
            await runtime.close()
            _log.info("runtime_retired", waited_for=len(holders))

    async def stop(self) -> None:
        """No more reloads (the worker stops); a reload half done is undone."""
        self._ready = False
        self._wanted = None
        for task in (self._watcher, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watcher = self._task = None

    async def close_retired(self) -> None:
        """Close the runtimes still draining (the server has drained: nothing holds them)."""
        tasks = list(self._retiring)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Routed(Protocol):
    finished: bool


def _routed_exchanges(server: Server) -> list[_Routed]:
    return [
        exchange
        for conn in server.connections
        for exchange in conn.queue
        if exchange.route is not None and not exchange.finished
    ]


def _in_use(runtime: Runtime, holders: list[_Routed]) -> bool:
    if any(not exchange.finished for exchange in holders):
        return True
    for backend in runtime.backends.values():
        for instance in backend.instances + backend.draining:
            if instance.outstanding:
                return True
    return False
