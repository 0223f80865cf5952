"""The upstream connection pool's bookkeeping, driven directly (races the process tests cannot
time): idle stack order, sweeping, waiters, a paused connection returning to the pool, and the
rule that only a connection at a message boundary both ways is pooled."""

from __future__ import annotations

import asyncio

import pytest

from mosaic_gateway.upstream.connection import (
    BAD_RESPONSE,
    BODY_CHUNKED,
    Pool,
    UpstreamConnection,
    UpstreamError,
)


class RecordingTransport:
    """Stands in for the socket transport: records what the connection asks of it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def close(self) -> None:
        self.calls.append("close")

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


class Client:
    def __init__(self) -> None:
        self.got: list[tuple[UpstreamConnection, bool]] = []
        self.errors: list[UpstreamError] = []
        self.waiting = True

    @property
    def wants_connection(self) -> bool:
        return self.waiting and not self.got

    def attach(self, conn: UpstreamConnection, reused: bool) -> None:
        self.got.append((conn, reused))

    def connect_failed(self, error: UpstreamError) -> None:
        self.errors.append(error)


class Sink:
    head_only = False

    def __init__(self) -> None:
        self.ended = False
        self.failed: list[UpstreamError] = []

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        return False

    def response_body(self, data: bytes) -> None:
        pass

    def response_flush(self) -> None:
        pass

    def response_end(self) -> None:
        self.ended = True

    def upstream_failed(self, error: UpstreamError, partial: bool) -> None:
        self.failed.append(error)

    def request_paused(self) -> None:
        pass

    def request_resumed(self) -> None:
        pass


def make_pool(max_connections: int = 2) -> Pool:
    return Pool(
        asyncio.get_running_loop(),
        "127.0.0.1",
        9,
        max_connections=max_connections,
        idle_timeout=4.0,
        connect_timeout=1.0,
    )


def connected(pool: Pool) -> tuple[UpstreamConnection, RecordingTransport]:
    conn = UpstreamConnection(pool)
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    pool.open += 1
    return conn, transport


RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def test_a_connection_paused_when_its_response_completed_is_resumed_on_reuse() -> None:
    pool = make_pool()
    conn, transport = connected(pool)
    sink = Sink()
    conn.bind(sink)  # type: ignore[arg-type]
    conn.send_request(b"GET / HTTP/1.1\r\n\r\n", 0)
    # The client stopped reading just as the last bytes of the response came in.
    conn.pause_reading()
    conn.data_received(RESPONSE)
    assert sink.ended
    assert pool.idle == [conn]
    client = Client()
    pool.acquire(client)
    assert client.got == [(conn, True)]
    conn.bind(Sink())  # type: ignore[arg-type]
    assert transport.calls == ["pause", "resume"]


async def test_a_connection_is_pooled_only_after_a_complete_exchange() -> None:
    pool = make_pool()
    conn, transport = connected(pool)
    conn.bind(Sink())  # type: ignore[arg-type]
    # The response arrived before the request body was fully sent: never reuse that.
    conn.data_received(RESPONSE)
    assert pool.idle == []
    assert "close" in transport.calls


async def test_idle_connections_are_reused_newest_first_and_swept_oldest_first() -> None:
    pool = make_pool(max_connections=3)
    first, first_transport = connected(pool)
    second, _ = connected(pool)
    pool.release(first)
    pool.release(second)
    first.idle_since -= 10  # idle for longer than idle_timeout
    client = Client()
    pool.acquire(client)
    assert client.got == [(second, True)]
    pool.release(second)
    pool.sweep(asyncio.get_running_loop().time())
    assert pool.idle == [second]
    assert first_transport.calls == ["close"]


async def test_waiters_get_released_connections_in_order_skipping_those_gone() -> None:
    pool = make_pool(max_connections=1)
    conn, _ = connected(pool)
    gone, waiting = Client(), Client()
    pool.acquire(gone)  # the pool is full: both wait
    pool.acquire(waiting)
    assert list(pool.waiters) == [gone, waiting]
    gone.waiting = False  # e.g. timed out meanwhile
    pool.release(conn)
    assert gone.got == []
    assert waiting.got == [(conn, True)]


HEAD = b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n"


@pytest.mark.parametrize("end_body", [False, True])
async def test_a_connection_owing_body_bytes_is_closed_not_pooled(end_body: bool) -> None:
    pool = make_pool()
    conn, transport = connected(pool)
    sink = Sink()
    conn.bind(sink)  # type: ignore[arg-type]
    conn.send_request(HEAD, 5)
    conn.send_body(b"abc")  # two bytes short of what the head declared
    if end_body:
        # The instance would wait for the rest, or take it from the next request.
        conn.end_body()
        assert "close" in transport.calls
    conn.data_received(RESPONSE)  # answered without reading its body
    assert pool.idle == []
    assert "close" in transport.calls
    assert transport.written == [HEAD, b"abc"]


async def test_a_length_delimited_body_sent_whole_in_pieces_is_pooled() -> None:
    pool = make_pool()
    conn, transport = connected(pool)
    conn.bind(Sink())  # type: ignore[arg-type]
    conn.send_request(HEAD, 5)
    conn.send_body(b"abc")
    conn.send_body(b"de")
    conn.end_body()
    conn.data_received(RESPONSE)
    assert pool.idle == [conn]
    assert transport.written == [HEAD, b"abc", b"de"]


async def test_more_body_than_declared_is_never_written() -> None:
    pool = make_pool()
    conn, transport = connected(pool)
    conn.bind(Sink())  # type: ignore[arg-type]
    conn.send_request(HEAD, 5)
    conn.send_body(b"abcdef")  # the sixth byte would start the next request
    assert transport.written == [HEAD]
    assert "close" in transport.calls
    other, other_transport = connected(pool)
    other.bind(Sink())  # type: ignore[arg-type]
    other.send_request(HEAD, 5, b"abcdef")  # a whole body that does not match its head
    assert other_transport.written == []
    assert "close" in other_transport.calls


async def test_a_chunked_body_is_complete_only_with_its_last_chunk() -> None:
    pool = make_pool()
    conn, transport = connected(pool)
    conn.bind(Sink())  # type: ignore[arg-type]
    conn.send_request(HEAD, BODY_CHUNKED)
    conn.send_body(b"abc")
    conn.data_received(RESPONSE)  # answered before the last chunk went out
    assert pool.idle == []
    assert transport.written == [HEAD, b"3\r\nabc\r\n"]
    conn, transport = connected(pool)
    conn.bind(Sink())  # type: ignore[arg-type]
    conn.send_request(HEAD, BODY_CHUNKED, b"abc")
    conn.data_received(RESPONSE)
    assert pool.idle == [conn]
    assert transport.written == [HEAD + b"3\r\nabc\r\n0\r\n\r\n"]


@pytest.mark.parametrize("stray", [b"H", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", b"junk"])
async def test_bytes_after_a_response_in_the_same_read_keep_it_out_of_the_pool(
    stray: bytes,
) -> None:
    pool = make_pool()
    conn, transport = connected(pool)
    sink = Sink()
    conn.bind(sink)  # type: ignore[arg-type]
    conn.send_request(b"GET / HTTP/1.1\r\n\r\n", 0)
    conn.data_received(RESPONSE + stray)
    assert sink.ended  # the response itself was complete
    assert pool.idle == []
    assert "close" in transport.calls


async def test_a_switching_protocols_answer_is_a_bad_response() -> None:
    # The gateway never forwards Upgrade, so a 101 is the instance out of step.
    pool = make_pool()
    conn, transport = connected(pool)
    sink = Sink()
    conn.bind(sink)  # type: ignore[arg-type]
    conn.send_request(b"GET / HTTP/1.1\r\n\r\n", 0)
    conn.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n"
    )
    assert sink.failed == [BAD_RESPONSE]
    assert pool.idle == []
    assert "close" in transport.calls
