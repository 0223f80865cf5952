"""A sans-IO harness for the whole request path: a client connection, the dispatcher, the route's
chain and forwarding, and the instances' connections, all over fake transports.

The runtime is the real one, compiled from a configuration (`build_runtime`); only the sockets
are replaced. Each instance's pool opens its connections through `FakeInstance.dial` instead of
`loop.create_connection`: the test then reads the bytes the gateway wrote upstream and feeds the
instance's answer back, byte-exactly, with no server and no running event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import yaml
from wire_support import FakeTransport

from mosaic_gateway.config import parse_config
from mosaic_gateway.filters.context import WorkerContext
from mosaic_gateway.handlers.forward import Forwarder
from mosaic_gateway.http.server import ClientConnection, Server, ServerLimits
from mosaic_gateway.lifecycle.runtime import Runtime, build_runtime
from mosaic_gateway.routing.dispatch import Dispatcher
from mosaic_gateway.upstream.connection import CONNECT_FAILED, PoolClient, UpstreamConnection


class Upstream:
    """One connection the gateway opened to an instance."""

    def __init__(self, conn: UpstreamConnection, transport: FakeTransport) -> None:
        self.conn = conn
        self.transport = transport
        self._taken = 0

    def take(self) -> bytes:
        """What the gateway wrote on this connection since the last `take`."""
        data = bytes(self.transport.written[self._taken :])
        self._taken = len(self.transport.written)
        return data

    def answer(self, *pieces: bytes) -> None:
        for piece in pieces:
            self.conn.data_received(piece)

    def reset(self) -> None:
        """The instance closes the connection (a crash, a keep-alive race)."""
        self.transport.closed = True
        self.conn.connection_lost(ConnectionResetError())


class FakeInstance:
    """An instance of a backend: its connections are fake, and may be refused."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connections: list[Upstream] = []
        self.refuse = False
        self.dialed = 0  # connections asked for, refused ones included

    def dial(self, client: PoolClient, pool: Any) -> None:
        self.dialed += 1
        if self.refuse:
            client.connect_failed(CONNECT_FAILED)
            return
        pool.open += 1
        conn = UpstreamConnection(pool)
        transport = FakeTransport()
        conn.connection_made(transport)
        self.connections.append(Upstream(conn, transport))
        client.attach(conn, False)

    @property
    def last(self) -> Upstream:
        return self.connections[-1]


class Client:
    """One client connection to the gateway."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.transport = FakeTransport()
        conn.connection_made(self.transport)
        self._taken = 0

    def send(self, *pieces: bytes) -> None:
        for piece in pieces:
            self.conn.data_received(piece)

    def received(self) -> bytes:
        """What this client was sent since the last call."""
        data = bytes(self.transport.written[self._taken :])
        self._taken = len(self.transport.written)
        return data


class Proxy:
    """A gateway worker's request path over fake transports; `send` and `received` are its
    first client connection's."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: dict[str, Any]) -> None:
        self.loop = loop
        self.config = parse_config(yaml.safe_dump(config), "<test>")
        self.forwarder = Forwarder(loop, trust_forwarded=False)
        self.runtime: Runtime = build_runtime(self.config, WorkerContext(loop), self.forwarder)
        self.dispatcher = Dispatcher(self.runtime.router)
        self.server = Server(
            loop,
            ServerLimits(
                max_body_bytes=1024 * 1024,
                max_header_bytes=8 * 1024,
                keep_alive=5.0,
                header_timeout=5.0,
            ),
        )
        self.instances: dict[str, FakeInstance] = {}
        for backend in self.runtime.backends.values():
            for instance in backend.instances:
                fake = FakeInstance(instance.url)
                self.instances[instance.url] = fake
                pool = instance.pool

                def open_for(
                    client: PoolClient, fake: FakeInstance = fake, pool: Any = pool
                ) -> None:
                    fake.dial(client, pool)

                pool._open_for = open_for  # type: ignore[method-assign]
        first = self.connect()
        self.transport = first.transport
        self.send = first.send
        self.received = first.received

    def connect(self) -> Client:
        """Another client connection to the same worker."""
        return Client(ClientConnection(self.server, self.dispatcher))

    def run(self, turns: int = 5) -> None:
        """Let tasks and callbacks scheduled by the request path run (a filter that waits)."""
        for _ in range(turns):
            self.loop.run_until_complete(asyncio.sleep(0))


def head_of(data: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """The first line, the headers (last value wins) and the rest of one message."""
    head, _, body = data.partition(b"\r\n\r\n")
    first, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b": ")
        headers[name.lower()] = value
    return first, headers, body
