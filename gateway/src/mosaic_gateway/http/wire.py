"""HTTP/1.1 wire details shared by the server and the upstream client.

Everything here is bytes and precomputed, because it runs for every request.
"""

from __future__ import annotations

import os
import re
import time
from email.utils import formatdate
from http import HTTPStatus

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded. `proxy-connection` is
# non-standard but still sent by old clients. `te`/`trailer` because we re-frame bodies and
# drop trailers; `expect` because the gateway answers `100-continue` itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

STATUS_LINES: dict[int, bytes] = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("latin-1")
    for status in HTTPStatus
}

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"

_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+/=\-]{1,128}")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def is_chunked(transfer_encoding: bytes) -> bool:
    """Whether a Transfer-Encoding value makes the body chunked: its last coding is (RFC 9112
    6.3, as llhttp reads it); `xchunked` is not, and such a response is read to the close."""
    return transfer_encoding.rpartition(b",")[2].strip().lower() == b"chunked"


def connection_tokens(value: bytes) -> set[bytes]:
    """Lower-cased option names of a Connection header."""
    return {token.strip().lower() for token in value.split(b",") if token.strip()}


def status_line(status: int) -> bytes:
    """The status line with the standard reason phrase (an unknown status gets none)."""
    line = STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d \r\n" % status
    return line


class RequestIds:
    """Ids for requests that arrive without a usable `x-request-id`.

    A random per-process prefix plus a counter: unique across processes and restarts, and about
    ten times cheaper than a uuid4 per request. 32 hex digits, like a uuid without dashes.
    """

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(10).hex().encode("ascii")
        self._counter = 0

    def accept_or_new(self, offered: bytes | None) -> bytes:
        """The client's id if it is short and made of safe characters, else a new one."""
        if offered is not None and _SANE_REQUEST_ID.fullmatch(offered):
            return offered
        self._counter += 1
        return b"%b%012x" % (self._prefix, self._counter)


class DateHeader:
    """The `date:` header line, re-rendered at most once a second."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"date: " + formatdate(now, usegmt=True).encode("ascii") + CRLF
        return self._line
