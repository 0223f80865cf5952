"""The access log: one JSON line per request, written in batches.

The lines have the shape of the other log lines (`mosaic_kit.logging` with JSON output:
`timestamp`, `level`, `event`, `logger`, `service`, `worker_pid`) plus the request's fields,
but they do not go through structlog: its processor chain costs about 100 µs a line, ten times
the rest of a proxied request. A line is a dict rendered by orjson (a couple of µs), queued, and
the queue is written at most every `FLUSH_DELAY` or whenever `FLUSH_BYTES` are pending.

Writes to a pipe (standard error under a supervisor or a container runtime) are cut at line
boundaries into pieces of at most `PIPE_BUF` bytes, which the kernel writes whole, so the lines
of several workers never interleave mid-line; writes to a regular file are appends (`O_APPEND`),
whole too.

What is logged is listed in `observe.Observer.ended`: never a header, so never an API key, a
token or a cookie, and the path without its query string.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
import time

from mosaic_kit.logging import get_logger

_log = get_logger("mosaic_gateway.accesslog")

FLUSH_DELAY = 0.1
FLUSH_BYTES = 64 * 1024
PIPE_BUF = 4096


class AccessLog:
    def __init__(self, loop: asyncio.AbstractEventLoop, path: str | None) -> None:
        self.loop = loop
        self.path = path
        if path is None:
            self._fd = sys.stderr.fileno()
            self._owned = False
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._owned = True
        self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._pending: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._failed = False
        self._second = -1
        self._stamp = ""

    def timestamp(self, now: float) -> str:
        """`now` as ISO 8601 UTC with microseconds (like structlog's), the date part cached."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1_000_000):06d}Z"

    def write(self, line: bytes) -> None:
        """Queue one line (ending with a newline)."""
        self._pending.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = self.loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        pending = self._pending
        self._pending = []
        self._size = 0
        try:
            if self._regular:
                self._write_all(b"".join(pending))
                return
            piece: list[bytes] = []
            size = 0
            for line in pending:
                if size + len(line) > PIPE_BUF and piece:
                    self._write_all(b"".join(piece))
                    piece = []
                    size = 0
                piece.append(line)
                size += len(line)
            if piece:
                self._write_all(b"".join(piece))
        except OSError as exc:
            if not self._failed:  # say it once, not once per batch
                self._failed = True
                _log.error("access_log_write_failed", path=self.path, error=str(exc))

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def close(self) -> None:
        self.flush()
        if self._owned:
            with contextlib.suppress(OSError):
                os.close(self._fd)
