"""Taking connections off the listening socket all the workers share.

Every worker serves the one socket the supervisor bound (supervisor.py). uvloop's own server
accepts until the queue is empty each time it wakes, so on a shared socket the first worker
awake takes a whole burst of new connections (measured: 64 opened at once split about 9 to 1)
and one core ends up doing the work of two for as long as those keep-alive connections last.
Here a worker takes one connection per turn of its event loop: every worker is woken, a busy
one comes back later and so takes fewer, and connections spread by how idle each worker is.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from mosaic_kit.logging import get_logger

_log = get_logger("mosaic_gateway.acceptor")

_PAUSE = 0.1  # after an accept error (EMFILE...), look again this much later


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
