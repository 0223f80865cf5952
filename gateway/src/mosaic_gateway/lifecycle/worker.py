"""One gateway worker: an event loop (uvloop) serving the proxy and the admin endpoints.

Several workers share one listening socket, bound once by the supervisor and inherited (the
kernel hands each new connection to whichever worker accepts first); each has its own router,
pools and balancing state. SIGTERM or SIGINT drains: the
listeners close, idle keep-alive connections close, requests in flight finish (within
`server.timeouts.shutdown_grace`), then the pools close. SIGHUP reloads the configuration file
(reload.py); a worker under a supervisor gets it from the supervisor, which watches the file, a
worker alone watches the file itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket

import uvloop

from mosaic_gateway.config import GatewayConfig
from mosaic_gateway.filters.context import WorkerContext
from mosaic_gateway.handlers.forward import Forwarder
from mosaic_gateway.http.server import Server, ServerLimits
from mosaic_gateway.lifecycle.admin import AdminHandler
from mosaic_gateway.lifecycle.observer import build_observer, runtime_gauges
from mosaic_gateway.lifecycle.reload import Reloader
from mosaic_gateway.lifecycle.runtime import Runtime, build_runtime
from mosaic_gateway.routing.dispatch import Dispatcher
from mosaic_kit.logging import bind_context, get_logger

_log = get_logger("mosaic_gateway.lifecycle.worker")


class Worker:
    def __init__(
        self,
        config: GatewayConfig,
        loop: asyncio.AbstractEventLoop,
        config_path: str | None = None,
        *,
        watch: bool = False,
        index: int = 0,
        metrics_dir: str | None = None,
    ) -> None:
        self.config = config
        self.loop = loop
        self.context = WorkerContext(loop)
        self.runtime: Runtime | None = None
        timeouts = config.server.timeouts
        limits = ServerLimits(
            max_body_bytes=config.server.limits.max_body_bytes,
            max_header_bytes=config.server.limits.max_header_bytes,
            keep_alive=timeouts.keep_alive,
            header_timeout=timeouts.header,
        )
        self.server = Server(loop, limits)
        self.admin_server = Server(loop, limits, self.server.request_ids)
        # Forwarding's shared state (the forwards in flight), for every runtime's routes.
        self.forwarder = Forwarder(loop, trust_forwarded=config.server.trust_forwarded_headers)
        self.dispatcher: Dispatcher | None = None
        # Access log, metrics and tracing hooks (observer.py)
        self.observer = build_observer(
            config.observability,
            loop,
            admin=config.server.admin is not None,
            index=index,
            metrics_dir=metrics_dir,
        )
        self.server.on_dispatch = self.observer.on_dispatch
        self.server.on_end = self.observer.on_end
        metrics = self.observer.metrics
        if metrics is not None:
            metrics.gauges = lambda: runtime_gauges(self.runtime, self.server)
        self.admin = AdminHandler(
            self._current_runtime,
            lambda: self.server.draining,
            metrics.render if metrics is not None else None,
        )
        self._sweeper: asyncio.TimerHandle | None = None
        self.reloader = Reloader(self, config_path, watch=watch)

    def _current_runtime(self) -> Runtime:
        assert self.runtime is not None
        return self.runtime

    # Reload

    def install(self, config: GatewayConfig, runtime: Runtime) -> None:
        """Serve new requests from `runtime` (a reload). No await: it happens between requests.

        Everything that belongs to a runtime or is read from the configuration per request is
        switched here; requests already routed keep the objects they hold."""
        assert self.dispatcher is not None
        self.config = config
        self.runtime = runtime
        self.dispatcher.router = runtime.router
        self.forwarder.trust_forwarded = config.server.trust_forwarded_headers
        limits = self.server.limits  # shared with the admin server
        timeouts = config.server.timeouts
        limits.max_body_bytes = config.server.limits.max_body_bytes
        limits.max_header_bytes = config.server.limits.max_header_bytes
        limits.keep_alive = timeouts.keep_alive
        limits.header_timeout = timeouts.header

    async def start(self, sock: socket.socket, admin_sock: socket.socket | None) -> None:
        # NATS first: the runtime's API key, JWKS and discovery parts are built on it.
        await self.context.open(self.config)
        self.runtime = build_runtime(self.config, self.context, self.forwarder)
        self.dispatcher = Dispatcher(self.runtime.router)
        self.forwarder.metrics = self.observer.metrics
        self.forwarder.note_instance = self.observer.reads_upstream_instance
        self.observer.start()
        await self.runtime.start()
        self.forwarder.start()
        await self.server.listen(sock, self.dispatcher)
        if admin_sock is not None:
            await self.admin_server.listen(admin_sock, self.admin)
        self._sweeper = self.loop.call_later(1.0, self._sweep)
        self.reloader.start()

    def _sweep(self) -> None:
        if self.runtime is not None:
            self.runtime.sweep(self.loop.time())
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    async def stop(self) -> None:
        await self.reloader.stop()  # no reload while draining
        grace = self.config.server.timeouts.shutdown_grace
        # The admin port keeps answering (readyz: 503) while the proxy drains.
        await self.server.shutdown(grace)
        await self.admin_server.shutdown(0)
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.forwarder.stop()
        await self.reloader.close_retired()  # runtimes replaced by reloads
        if self.runtime is not None:
            await self.runtime.close()
        self.observer.stop()  # the last access log lines, spans and metrics
        await self.context.close()


async def _serve(
    config: GatewayConfig,
    sock: socket.socket,
    admin_sock: socket.socket | None,
    config_path: str | None,
    watch: bool,
    *,
    index: int = 0,
    metrics_dir: str | None = None,
    supervisor_pid: int | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if supervisor_pid is not None:
        _watch_supervisor(loop, supervisor_pid, stop)
    worker = Worker(config, loop, config_path, watch=watch, index=index, metrics_dir=metrics_dir)
    loop.add_signal_handler(signal.SIGHUP, worker.reloader.request, "SIGHUP")
    await worker.start(sock, admin_sock)
    _log.info(
        "worker_started",
        port=sock.getsockname()[1],
        admin_port=admin_sock.getsockname()[1] if admin_sock else None,
        routes=len(config.routes),
        backends=len(config.backends),
    )
    await stop.wait()
    _log.info("worker_draining")
    await worker.stop()
    _log.info("worker_stopped")
    return 0


def _watch_supervisor(
    loop: asyncio.AbstractEventLoop, supervisor_pid: int, stop: asyncio.Event
) -> None:
    """Drain when the supervisor is gone (killed with SIGKILL, it cannot forward a signal):
    an orphaned worker would otherwise hold the port forever."""

    def check() -> None:
        if os.getppid() != supervisor_pid:
            _log.warning("supervisor_gone", supervisor_pid=supervisor_pid)
            stop.set()
            return
        loop.call_later(1.0, check)

    loop.call_later(1.0, check)


def run_worker(
    config: GatewayConfig,
    sock: socket.socket,
    admin_sock: socket.socket | None,
    *,
    config_path: str | None = None,
    watch: bool = False,
    index: int = 0,
    metrics_dir: str | None = None,
    supervisor_pid: int | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (or, with `supervisor_pid`, until that parent is gone);
    returns the process exit code. SIGHUP reloads `config_path`
    (and so does a change of the file, if `watch`). `index` numbers the worker under a
    supervisor; `metrics_dir` is where the workers share their metrics (metrics.py)."""
    # Every line this process logs says which worker wrote it.
    bind_context(worker_pid=os.getpid())
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(
            _serve(
                config,
                sock,
                admin_sock,
                config_path,
                watch,
                index=index,
                metrics_dir=metrics_dir,
                supervisor_pid=supervisor_pid,
            )
        )
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
