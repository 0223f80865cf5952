"""The upstream connection pool's bookkeeping, driven directly (races the process tests cannot
time): idle stack order, sweeping, waiters, and a paused connection returning to the pool."""

from __future__ import annotations

import asyncio

from mosaic_gateway.upstream import Pool, UpstreamConnection, UpstreamError


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

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        return False

    def response_body(self, data: bytes) -> None:
        pass

    def response_flush(self) -> None:
        pass

    def response_end(self) -> None:
        self.ended = True

    def upstream_failed(self, error: UpstreamError, partial: bool) -> None:
        pass

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
    conn.request_sent = True
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
