"""A route's chain (routing/chain.py) without sockets: filters in order, the synchronous path,
a filter that waits, a filter that answers, a client that leaves, a filter that fails."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator

import pytest
from wire_support import FakeTransport, problem_code

from mosaic_gateway.http.server import ClientConnection, Exchange, Server, ServerLimits, StateKey
from mosaic_gateway.routing.chain import Chain, Step

REQUEST = b"GET /x HTTP/1.1\r\nhost: h\r\n\r\n"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


class Recorder:
    """A filter that notes its name, then does what it is told."""

    def __init__(self, log: list[str], name: str, step: Step | None = None) -> None:
        self.log, self.name, self.step = log, name, step

    def on_request(self, exchange: Exchange) -> Step:
        self.log.append(self.name)
        if self.step is False:
            exchange.respond(403, b"no", b"text/plain")
        return True if self.step is None else self.step


class Terminal:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def start(self, exchange: Exchange) -> None:
        self.log.append("terminal")
        exchange.respond(200, b"ok", b"text/plain")


class Hook:
    def __init__(self) -> None:
        self.abandoned = False

    def head(self, status: int, headers: list[tuple[bytes, bytes]], out: list[bytes]) -> bool:
        return False

    def body(self, data: bytes) -> bool:
        return False

    def end(self) -> None:
        pass

    def abandon(self) -> None:
        self.abandoned = True


class Hooking:
    def __init__(self, hook: Hook) -> None:
        self.hook = hook

    def on_request(self, exchange: Exchange) -> bool:
        exchange.hook = self.hook
        return True


def serve(loop: asyncio.AbstractEventLoop, chain: Chain) -> FakeTransport:
    class Handler:
        def handle(self, exchange: Exchange) -> None:
            chain.run(exchange)

    server = Server(
        loop,
        ServerLimits(max_body_bytes=1024, max_header_bytes=8192, keep_alive=5, header_timeout=5),
    )
    conn = ClientConnection(server, Handler())
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.data_received(REQUEST)
    return transport


def settle(loop: asyncio.AbstractEventLoop) -> None:
    for _ in range(5):
        loop.run_until_complete(asyncio.sleep(0))


def test_filters_run_in_order_and_the_terminal_answers_in_the_same_call(
    loop: asyncio.AbstractEventLoop,
) -> None:
    log: list[str] = []
    chain = Chain(loop, [Recorder(log, "a"), Recorder(log, "b")], Terminal(log))
    transport = serve(loop, chain)
    assert log == ["a", "b", "terminal"]  # no loop turn was needed
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_filter_that_answers_ends_the_chain_and_an_earlier_hook_is_abandoned(
    loop: asyncio.AbstractEventLoop,
) -> None:
    log: list[str] = []
    hook = Hook()
    chain = Chain(
        loop, [Hooking(hook), Recorder(log, "a", False), Recorder(log, "b")], Terminal(log)
    )
    transport = serve(loop, chain)
    assert log == ["a"]
    assert transport.written.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert hook.abandoned


async def _later(result: bool) -> bool:
    await asyncio.sleep(0)
    return result


def test_a_filter_that_waits_resumes_the_chain_at_the_next_filter(
    loop: asyncio.AbstractEventLoop,
) -> None:
    log: list[str] = []
    waiting = Recorder(log, "a")
    chain = Chain(loop, [waiting, Recorder(log, "b")], Terminal(log))
    waiting.step = _later(True)
    transport = serve(loop, chain)
    assert log == ["a"]
    assert transport.written == b""
    settle(loop)
    assert log == ["a", "b", "terminal"]  # "a" is not asked again
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_wait_that_resolves_false_ends_the_chain(loop: asyncio.AbstractEventLoop) -> None:
    log: list[str] = []
    chain = Chain(loop, [Recorder(log, "a", _later(False)), Recorder(log, "b")], Terminal(log))
    serve(loop, chain)
    settle(loop)
    assert log == ["a"]


def test_a_client_gone_while_waiting_gets_nothing_more(loop: asyncio.AbstractEventLoop) -> None:
    log: list[str] = []
    gate: asyncio.Future[bool] = loop.create_future()
    chain = Chain(loop, [Recorder(log, "a", gate), Recorder(log, "b")], Terminal(log))

    class Handler:
        exchange: Exchange

        def handle(self, exchange: Exchange) -> None:
            self.exchange = exchange
            chain.run(exchange)

    server = Server(
        loop,
        ServerLimits(max_body_bytes=1024, max_header_bytes=8192, keep_alive=5, header_timeout=5),
    )
    handler = Handler()
    conn = ClientConnection(server, handler)
    conn.connection_made(FakeTransport())
    conn.data_received(REQUEST)
    conn.connection_lost(None)
    assert handler.exchange.finished
    gate.set_result(True)  # the answer comes after the client left
    settle(loop)
    assert log == ["a"]


async def _fails() -> bool:
    raise RuntimeError("a bug in a filter")


def test_a_filter_that_fails_while_waiting_is_a_500_problem(
    loop: asyncio.AbstractEventLoop,
) -> None:
    log: list[str] = []
    awaitable: Awaitable[bool] = _fails()
    chain = Chain(loop, [Recorder(log, "a", awaitable)], Terminal(log))
    transport = serve(loop, chain)
    settle(loop)
    assert log == ["a"]
    assert problem_code(bytes(transport.written)) == (500, "gateway.internal")


class Noting:
    """A filter that keeps per-request state under its own key, and reads a neighbour's."""

    def __init__(self, key: StateKey[str], value: str, seen: dict[str, str | None]) -> None:
        self.key, self.value, self.seen = key, value, seen

    def on_request(self, exchange: Exchange) -> bool:
        self.seen[self.value] = exchange.get(self.key)  # nothing stored yet under this key
        exchange.put(self.key, self.value)
        return True


def test_filter_state_is_kept_per_request_under_each_owners_key(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # Two modules naming their keys alike cannot read or overwrite each other's state.
    first, second = StateKey[str]("verdict"), StateKey[str]("verdict")
    seen: dict[str, str | None] = {}
    states: list[dict[object, object] | None] = []

    class Reading:
        def start(self, exchange: Exchange) -> None:
            states.append(exchange.state)
            assert exchange.get(first) == "one"
            assert exchange.get(second) == "two"
            exchange.respond(200, b"ok", b"text/plain")

    chain = Chain(loop, [Noting(first, "one", seen), Noting(second, "two", seen)], Reading())
    serve(loop, chain)
    serve(loop, chain)  # a second request starts with nothing stored
    assert seen == {"one": None, "two": None}
    assert len(states) == 2
    assert states[0] is not states[1]


def test_a_request_no_module_takes_notes_on_allocates_no_state(
    loop: asyncio.AbstractEventLoop,
) -> None:
    states: list[dict[object, object] | None] = []

    class Reading:
        def start(self, exchange: Exchange) -> None:
            states.append(exchange.state)
            assert exchange.get(StateKey[str]("anything")) is None
            exchange.respond(200, b"ok", b"text/plain")

    serve(loop, Chain(loop, [], Reading()))
    assert states == [None]
