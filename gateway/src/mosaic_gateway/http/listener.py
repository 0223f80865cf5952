"""Listening sockets: bound once, shared by all the workers, taken from one connection at a time.

`bind_socket` binds without SO_REUSEPORT, so the port is ours alone: a second gateway (or
anything else) fails to bind it rather than silently taking a share of the connections. The
supervisor binds once and its workers inherit the socket (supervisor.py); `adopt_socket` takes one
bound by whoever started the gateway (`serve --listen-fd`, how `mosaic up` holds its port).

`Acceptor` serves such a socket in a worker. uvloop's own server accepts until the queue is
empty each time it wakes, so on a shared socket the first worker awake takes a whole burst of
new connections (measured: 64 opened at once split about 9 to 1) and one core ends up doing the
work of two for as long as those keep-alive connections last. An acceptor takes one connection
per turn of its event loop: every worker is woken, a busy one comes back later and so takes
fewer, and connections spread by how idle each worker is.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from mosaic_kit.logging import get_logger

_log = get_logger("mosaic_gateway.http.listener")

_PAUSE = 0.1  # after an accept error (EMFILE...), look again this much later


def bind_socket(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on `host:port` (0: a free port) that no other socket may join
    (no SO_REUSEPORT, see above); OSError (EADDRINUSE) when the port is taken."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # Connections of a previous run lingering in TIME_WAIT do not make the port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def adopt_socket(fd: int, *, backlog: int = 2048) -> socket.socket:
    """The listening TCP socket inherited as file descriptor `fd` (`serve --listen-fd`): bound
    by whoever started the gateway, so that the port stays held across restarts."""
    sock = socket.socket(fileno=fd)
    try:
        if sock.type != socket.SOCK_STREAM or sock.family not in (
            socket.AF_INET,
            socket.AF_INET6,
        ):
            raise OSError(f"file descriptor {fd} is not a TCP socket")
        sock.listen(backlog)  # already listening: this only sets the backlog
        sock.setblocking(False)
    except BaseException:
        sock.detach()  # not ours to close
        raise
    return sock


class Acceptor:
    """Serves one listening socket: `start()`, then `close()` and `wait_closed()` (the same
    two calls as an asyncio server's)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol_factory = protocol_factory
        self._fd = sock.fileno()
        self._reading = False
        self._closed = False
        self._resume: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._resume = None
        if not self._closed and not self._reading:
            self._reading = True
            self.loop.add_reader(self._fd, self._accept)

    def close(self) -> None:
        """Stop accepting and close this process's copy of the socket."""
        if self._closed:
            return
        self._closed = True
        self._stop_reading()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self.sock.close()

    async def wait_closed(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self._fd)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker was quicker, or the client gave up while queued
        except OSError as exc:
            # Out of file descriptors, or worse: the socket stays readable, so trying again at
            # once would spin.
            _log.warning("accept_paused", error=str(exc), seconds=_PAUSE)
            self._stop_reading()
            self._resume = self.loop.call_later(_PAUSE, self.start)
            return
        conn.setblocking(False)
        task = self.loop.create_task(self._serve(conn))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.protocol_factory, conn)
        except OSError:
            conn.close()  # the client left before its connection was set up
