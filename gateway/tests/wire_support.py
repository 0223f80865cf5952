"""A sans-IO harness for the server side of the gateway (`mosaic_gateway.http.server`).

One `ClientConnection` is driven with a fake transport: bytes go in through `data_received`,
and what the connection wrote back, whether it paused reading and whether it closed are read off
the transport. No socket, no running event loop: the loop given to the `Server` only tells the
time. A `RecordingHandler` stands in for the proxy: it keeps every exchange handed to it, with
the body chunks its sink received, and answers only when the test says so (or at once, when
told to), so pipelining and ordering can be stepped through exactly.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from mosaic_gateway.http import problems
from mosaic_gateway.http.problems import GatewayProblem
from mosaic_gateway.http.server import ClientConnection, Exchange, Server, ServerLimits
from mosaic_gateway.http.wire import STATUS_LINES, DateHeader


class FakeTransport(asyncio.Transport):
    """Records what a protocol does to its transport."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.pauses = 0  # how many times reading was paused

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default


@dataclass
class Call:
    """One exchange the handler was given, and what its body sink received."""

    exchange: Exchange
    auto: bool = False  # answer `200 ok` once the body has ended
    chunks: list[bytes] = field(default_factory=list)
    ended: bool = False

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def body_chunk(self, data: bytes) -> None:
        assert not self.ended, "a chunk after the body's end"
        self.chunks.append(data)

    def body_end(self) -> None:
        assert not self.ended, "the body ended twice"
        self.ended = True
        if self.auto:
            self.ok()

    def ok(self, body: bytes = b"ok") -> None:
        self.exchange.respond(200, body, b"text/plain")


class RecordingHandler:
    """Takes every body as it comes; answers `200 ok` by itself only when `auto` is set, once
    the body has ended."""

    def __init__(self, *, auto: bool = False) -> None:
        self.calls: list[Call] = []
        self.auto = auto

    def handle(self, exchange: Exchange) -> None:
        call = Call(exchange, self.auto)
        self.calls.append(call)
        exchange.accept_body(call)


class FixedDate(DateHeader):
    """The `date:` line of the moment it was made: the bytes a test expects, built after the
    gateway wrote its own, cannot fall into the next second."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__()
        self._line = super().line()

    def line(self) -> bytes:
        return self._line


class Wire:
    """One client connection of a `Server`, fed by hand."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        auto: bool = False,
        max_body_bytes: int = 1024 * 1024,
        max_header_bytes: int = 8 * 1024,
        keep_alive: float = 5.0,
        header_timeout: float = 5.0,
    ) -> None:
        limits = ServerLimits(
            max_body_bytes=max_body_bytes,
            max_header_bytes=max_header_bytes,
            keep_alive=keep_alive,
            header_timeout=header_timeout,
        )
        self.server = Server(loop, limits)
        self.server.date = FixedDate()
        self.handler = RecordingHandler(auto=auto)
        self.conn = ClientConnection(self.server, self.handler)
        self.transport = FakeTransport()
        self.conn.connection_made(self.transport)
        self._lost = False
        self._taken = 0

    @property
    def calls(self) -> list[Call]:
        return self.handler.calls

    # Methods, not properties: each call is a new look (mypy would narrow a property).
    def closed(self) -> bool:
        return self.transport.closed

    def reading(self) -> bool:
        return self.transport.reading

    def feed(self, *pieces: bytes) -> Wire:
        """Deliver each piece as one read, then the connection's loss once it closed its
        transport (asyncio calls `connection_lost` soon after `close`, never inside it)."""
        for piece in pieces:
            assert self.transport.reading or self.transport.closed, "fed while reading is paused"
            self.conn.data_received(piece)
            self.settle()
        return self

    def settle(self) -> None:
        if self.transport.closed and not self._lost:
            self._lost = True
            self.conn.connection_lost(None)

    def take(self) -> bytes:
        """What was written since the last `take`."""
        data = bytes(self.transport.written[self._taken :])
        self._taken = len(self.transport.written)
        return data


@contextmanager
def event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop that is never run: the server reads the time off it."""
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def gateway_response(
    wire: Wire,
    status: int,
    body: bytes,
    content_type: bytes,
    request_id: bytes,
    *,
    close: bool,
    extra: bytes = b"",
) -> bytes:
    """The exact bytes of a response the gateway makes itself (`Exchange.respond`)."""
    return b"".join(
        [
            STATUS_LINES[status],
            wire.server.date.line(),
            b"content-type: %b\r\ncontent-length: %d\r\n" % (content_type, len(body)),
            b"x-request-id: %b\r\n" % request_id,
            extra,
            b"connection: close\r\n" if close else b"",
            b"\r\n",
            body,
        ]
    )


def problem_response(
    wire: Wire,
    problem: GatewayProblem,
    request_id: bytes,
    *,
    instance: bytes | None = None,
    close: bool = True,
) -> bytes:
    """The exact bytes of `problem` as the gateway answers it."""
    body = problem.body(None if instance is None else instance.decode("latin-1"))
    return gateway_response(
        wire, problem.status, body, problems.PROBLEM_CONTENT_TYPE, request_id, close=close
    )


def problem_code(data: bytes) -> tuple[int, str]:
    """Status and problem code of the one response in `data` (a problem+json answer)."""
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json\r\n" in head, data
    status = int(head.split(b" ", 2)[1])
    document = orjson.loads(body)
    assert document["status"] == status
    return status, str(document["code"])


def generated_id(data: bytes) -> bytes:
    """The request id the gateway made up for the response in `data` (32 hex digits)."""
    head = data.partition(b"\r\n\r\n")[0]
    (line,) = [line for line in head.split(b"\r\n") if line.startswith(b"x-request-id: ")]
    value = line.removeprefix(b"x-request-id: ")
    assert re.fullmatch(rb"[0-9a-f]{32}", value), value
    return value
