"""The access log: one JSON line per request, written in batches.

The lines have the shape of the other log lines (`mosaic_kit.logging` with JSON output:
`timestamp`, `level`, `event`, `logger`, `service`, `worker_pid`) plus the request's fields,
but they do not go through structlog: its processor chain costs about 100 µs a line, ten times
the rest of a proxied request. A line is one bytes template filled in (`record`): the fields
the gateway made or validated itself (ids, numbers, the method, addresses) go in as they are,
the route's fields are rendered once per route, and only what a client chose freely (the path,
the user id, the client application id) goes through orjson for escaping. Lines are queued, and the queue is written at
most every `FLUSH_DELAY` or whenever `FLUSH_BYTES` are pending.

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
from typing import TYPE_CHECKING

import orjson

from mosaic_kit.logging import get_logger

if TYPE_CHECKING:
    from mosaic_gateway.http.server import Exchange

_log = get_logger("mosaic_gateway.observe.accesslog")

FLUSH_DELAY = 0.1
FLUSH_BYTES = 64 * 1024
PIPE_BUF = 4096

_LINE = (
    b'{"timestamp":"%b","level":"info","event":"access","logger":"mosaic_gateway.access",'
    b'"service":"gateway","worker_pid":%d,"method":"%b","path":%b,"status":%d,'
    b'"duration_ms":%.3f,"bytes":%d,%b,"instance":%b,"cache":%b,"request_id":"%b",'
    b'"trace_id":%b,"span_id":%b,"user_id":%b,"client_id":%b,"client":"%b","aborted":%b}\n'
)
_NULL = b"null"
_CACHE = {None: _NULL, "HIT": b'"HIT"', "MISS": b'"MISS"', "BYPASS": b'"BYPASS"'}
_QUOTED_MAX = 4096


def route_fields(template: str | None, backend: str | None) -> bytes:
    """The `route` and `backend` fields of a route's lines (rendered once per route)."""
    return b'"route":%b,"backend":%b' % (orjson.dumps(template), orjson.dumps(backend or None))


UNROUTED = route_fields(None, None)


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
        self._stamp = b""
        self._pid = os.getpid()
        self._quoted: dict[str, bytes] = {}  # instance URLs as JSON strings

    def timestamp(self, now: float) -> bytes:
        """`now` as ISO 8601 UTC with microseconds (like structlog's), the date part cached."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        return b"%b.%06dZ" % (self._stamp, int((now - second) * 1_000_000))

    def record(
        self,
        exchange: Exchange,
        status: int,
        duration: float,
        route: bytes,
        aborted: bool,
        trace_id: bytes | None,
        span_id: bytes | None,
        instance: str | None,
        cache: str | None,
        user_id: str | None,
        client_id: str | None,
    ) -> None:
        """Log one request; `route` comes from `route_fields`, the ids are hex digits; the rest
        is what the route's filters and handler found out (lifecycle/observer.py reads it).
        Positional: keyword arguments cost the one caller ~150 instructions a request."""
        if instance is None:
            instance_json = _NULL
        else:
            instance_json = self._quoted.get(instance) or self._quote(instance)
        line = _LINE % (
            self.timestamp(time.time()),
            self._pid,
            exchange.method,  # a known method (the parser takes no other)
            orjson.dumps(exchange.path.decode("latin-1")),
            status,
            duration * 1000,
            exchange.bytes_out,
            route,
            instance_json,
            _CACHE.get(cache) or orjson.dumps(cache),
            exchange.request_id,  # checked by RequestIds: [A-Za-z0-9._:+/=-]
            _NULL if trace_id is None else b'"%b"' % trace_id,
            _NULL if span_id is None else b'"%b"' % span_id,
            _NULL if user_id is None else orjson.dumps(user_id),
            _NULL if client_id is None else orjson.dumps(client_id),
            exchange.conn.peer,  # an IP address
            b"true" if aborted else b"false",
        )
        # Queued, written with others (a write per line would be a syscall per request).
        self._pending.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = self.loop.call_later(FLUSH_DELAY, self.flush)

    def _quote(self, text: str) -> bytes:
        if len(self._quoted) >= _QUOTED_MAX:
            self._quoted.clear()
        quoted = self._quoted[text] = orjson.dumps(text)
        return quoted

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
