"""Running N worker processes on one port.

The supervisor binds the listening socket once (and the admin one), before forking, and every
worker serves that same socket, inherited: the port is ours alone. There is no SO_REUSEPORT, so
a second gateway (or anything else) on the port fails to bind instead of silently taking a
share of the connections; a port that cannot be bound is reported once, up front, and the
gateway exits (`port 127.0.0.1:N is in use`). `port: 0` resolves to one real port. With
`serve --listen-fd` / `--admin-fd` the sockets come bound already from whoever started the
gateway (`mosaic up`, which holds the port from its check on and across gateway restarts).
The supervisor keeps its copy of the sockets while running: if a worker dies, the others and
then its replacement accept what arrives meanwhile. On SIGTERM/SIGINT it closes its copy (so the
workers' closing really stops the listening), forwards the signal, and waits for the workers to
drain; stragglers are killed after the grace period.

With an admin listener, the supervisor also makes a private temporary directory where the
workers share their metrics (metrics.py: each writes its counters there, a scrape sums them)
and removes it when the gateway stops.

Reloads: on SIGHUP, or when the configuration file's content changes (polled every
`server.watch_interval`), the supervisor validates the file; a bad one is logged
(`config_rejected`) and the workers are not disturbed. A good one becomes the configuration
later workers are forked with (minus what needs a restart, see reload.py), and every worker is
sent SIGHUP to load it (each one swaps its runtime between requests and drains the old one).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from types import FrameType

from mosaic_gateway.config import ConfigError, GatewayConfig, load_config
from mosaic_gateway.http.listener import adopt_socket, bind_socket
from mosaic_gateway.lifecycle.reload import FileWatch, live_config, rejected
from mosaic_gateway.lifecycle.worker import run_worker
from mosaic_kit.logging import get_logger

_log = get_logger("mosaic_gateway.lifecycle.supervisor")

_RESPAWN_DELAY = 0.5
_QUICK_DEATH = 2.0  # a worker dying sooner than this after start is "crash looping"
_MAX_QUICK_DEATHS = 5


class ListenError(Exception):
    """A listening socket could not be had; the message says which and why."""


def _bind(host: str, port: int) -> socket.socket:
    try:
        return bind_socket(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"port {host}:{port} is in use") from None
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _adopt(fd: int, host: str, port: int) -> socket.socket:
    try:
        sock = adopt_socket(fd)
    except OSError as exc:
        raise ListenError(f"inherited file descriptor {fd}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    if port not in (0, bound):
        sock.close()
        raise ListenError(f"inherited file descriptor {fd} listens on port {bound}, not {port}")
    return sock


def bind_all(
    config: GatewayConfig, *, listen_fd: int | None = None, admin_fd: int | None = None
) -> tuple[socket.socket, socket.socket | None]:
    """The proxy's listening socket and the admin one (if configured), shared by all workers;
    taken from the inherited descriptors when given."""
    server = config.server
    if listen_fd is not None:
        sock = _adopt(listen_fd, server.listen, server.port)
    else:
        sock = _bind(server.listen, server.port)
    admin: socket.socket | None = None
    try:
        if server.admin is not None:
            if admin_fd is not None:
                admin = _adopt(admin_fd, server.admin.listen, server.admin.port)
            else:
                admin = _bind(server.admin.listen, server.admin.port)
    except BaseException:
        sock.close()
        raise
    return sock, admin


def serve(
    config: GatewayConfig,
    workers: int,
    config_path: str | None = None,
    *,
    watch: bool = True,
    listen_fd: int | None = None,
    admin_fd: int | None = None,
) -> int:
    """Serve with `workers` processes (in this process when 1); returns the exit code.

    SIGHUP (and, with `watch`, a change of the file) reloads `config_path`."""
    # Until a handler is installed a SIGHUP must not kill the gateway (its default action).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        sock, admin = bind_all(config, listen_fd=listen_fd, admin_fd=admin_fd)
    except ListenError as exc:
        _log.error(
            "bind_failed", host=config.server.listen, port=config.server.port, error=str(exc)
        )
        # Also said plainly: whoever started the gateway reads this, not a JSON log.
        print(f"mosaic-gateway: {exc}", file=sys.stderr, flush=True)
        return 2
    _log.info(
        "gateway_listening",
        host=config.server.listen,
        port=sock.getsockname()[1],
        admin_port=admin.getsockname()[1] if admin else None,
        workers=workers,
    )
    if workers == 1:
        return run_worker(config, sock, admin, config_path=config_path, watch=watch)
    return _Supervisor(config, workers, sock, admin, config_path, watch=watch).run()


class _Supervisor:
    def __init__(
        self,
        config: GatewayConfig,
        workers: int,
        sock: socket.socket,
        admin: socket.socket | None,
        config_path: str | None = None,
        *,
        watch: bool = False,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.file_watch = FileWatch(config_path) if watch and config_path else None
        self.next_poll = time.monotonic() + config.server.watch_interval
        self.reload_wanted: str | None = None  # why (SIGHUP, the file changed); see _watch
        self.workers = workers
        self.sock = sock
        self.admin = admin
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (worker index, start time)
        self.stopping = False
        self.stop_signal: int | None = None  # set by the signal handler, acted on by _watch
        self.quick_deaths = 0
        self.exit_code = 0
        self.metrics_dir: str | None = None

    def run(self) -> int:
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        if self.admin is not None:  # where the workers share their metrics (mode 0700)
            self.metrics_dir = tempfile.mkdtemp(prefix="mosaic-gateway-metrics-")
        try:
            for index in range(self.workers):
                self._spawn(index)
            self._watch()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._close_sockets()
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return self.exit_code

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only note it: logging or signalling from inside a handler can deadlock on a lock
        # the interrupted code holds.
        if signum == signal.SIGHUP:
            self.reload_wanted = "SIGHUP"
        else:
            self.stop_signal = signum

    # Reload

    def _poll_reload(self) -> None:
        now = time.monotonic()
        if self.file_watch is not None and now >= self.next_poll:
            self.next_poll = now + self.config.server.watch_interval
            if self.file_watch.changed():
                self.reload_wanted = "file changed"
        if self.reload_wanted is not None and not self.stopping:
            reason = self.reload_wanted
            self.reload_wanted = None
            self._reload(reason)

    def _reload(self, reason: str) -> None:
        if self.config_path is None:
            _log.warning("config_reload_impossible", reason="the configuration came from no file")
            return
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            rejected(self.config_path, exc.issues)
            return
        self.config, kept = live_config(self.config, new)
        if kept:
            _log.warning("config_restart_needed", fields=kept, detail="kept their running values")
        _log.info(
            "config_forwarded", file=self.config_path, reason=reason, workers=len(self.children)
        )
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    def _stop(self, signum: int) -> None:
        if self.stopping:
            return
        self.stopping = True
        _log.info("gateway_stopping", signal=signal.Signals(signum).name)
        self._close_sockets()
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _close_sockets(self) -> None:
        self.sock.close()
        if self.admin is not None:
            self.admin.close()

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, signal.SIG_DFL)
                # Ignored until the worker's loop handles it: this worker starts from the
                # supervisor's latest configuration anyway.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                code = run_worker(
                    self.config,
                    self.sock,
                    self.admin,
                    config_path=self.config_path,
                    index=index,
                    metrics_dir=self.metrics_dir,
                    supervisor_pid=os.getppid(),
                )
            except BaseException:
                _log.exception("worker_crashed", worker=index)
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        self.children[pid] = (index, time.monotonic())
        _log.info("worker_spawned", worker=index, pid=pid)

    def _watch(self) -> None:
        deadline: float | None = None
        while self.children:
            if self.stop_signal is not None and not self.stopping:
                self._stop(self.stop_signal)
            self._poll_reload()
            if self.stopping and deadline is None:
                deadline = time.monotonic() + self.config.server.timeouts.shutdown_grace + 5.0
            if deadline is not None and time.monotonic() > deadline:
                for pid in list(self.children):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 3600
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.1)
                continue
            index, started = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                _log.info("worker_exited", worker=index, pid=pid, code=code)
                continue
            _log.error("worker_died", worker=index, pid=pid, code=code)
            if time.monotonic() - started < _QUICK_DEATH:
                self.quick_deaths += 1
            else:
                self.quick_deaths = 0
            if self.quick_deaths >= _MAX_QUICK_DEATHS:
                _log.error("workers_crash_looping", deaths=self.quick_deaths)
                self.exit_code = 1
                self._stop(signal.SIGTERM)
                continue
            time.sleep(_RESPAWN_DELAY)
            if not self.stopping:
                self._spawn(index)
