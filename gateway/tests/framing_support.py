"""A recording backend and a raw client for the request-framing tests (test_smuggling.py,
test_differential_parsing.py).

The backend keeps every byte each connection received and parses them with h11, an HTTP/1.1
parser independent of the gateway's (llhttp), answering each request with a small fixed 200 that
carries the request's sequence number (`x-seq`). Under `/early/` it answers as soon as the head
has arrived, before reading the body, like a route with no body parameter: a backend of that kind
takes whatever bytes follow the head as the body it was promised, so an upstream connection
carrying fewer (or more) body bytes than declared shows up as a smuggled or mangled request.

The client side sends raw bytes and parses what comes back with h11 too.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h11

EARLY_PREFIX = b"/early/"


@dataclass
class BackendRequest:
    seq: int
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    complete: bool = False  # the whole body arrived
    ended: bool = False  # its connection is closed

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class BackendConnection:
    received: bytearray = field(default_factory=bytearray)
    requests: list[BackendRequest] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class RecordingBackend:
    """Keep-alive HTTP/1.1 server on a thread per connection; see the module docstring."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.connections: list[BackendConnection] = []
        self._lock = threading.Lock()
        self._seq = 0
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def seq(self) -> int:
        with self._lock:
            return self._seq

    def requests_after(self, seq: int) -> list[BackendRequest]:
        with self._lock:
            found = [r for conn in self.connections for r in conn.requests if r.seq > seq]
        return sorted(found, key=lambda r: r.seq)

    def settled_after(self, seq: int, count: int) -> bool:
        """At least `count` complete requests after `seq` (an early answer is sent before the
        body is read, so a client can see it before the backend is done with the request)."""
        return sum(r.complete for r in self.requests_after(seq)) >= count

    def take_errors(self) -> list[str]:
        """Protocol errors seen since the last call."""
        with self._lock:
            errors = [error for conn in self.connections for error in conn.errors]
            for conn in self.connections:
                conn.errors.clear()
        return errors

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)

    # --- internals --------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            record = BackendConnection()
            with self._lock:
                self.connections.append(record)
                self._sockets.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock, record), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _serve(self, sock: socket.socket, record: BackendConnection) -> None:
        try:
            self._serve_requests(sock, record)
        finally:
            with self._lock:
                for request in record.requests:
                    request.ended = True

    def _serve_requests(self, sock: socket.socket, record: BackendConnection) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        current: BackendRequest | None = None
        answered = False
        with sock:
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                with self._lock:
                    record.received += data
                conn.receive_data(data)
                try:
                    while True:
                        event = conn.next_event()
                        if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                            break
                        if event is h11.PAUSED:
                            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                                conn.start_next_cycle()
                                continue
                            break
                        if isinstance(event, h11.Request):
                            current = BackendRequest(
                                self._next_seq(),
                                bytes(event.method),
                                bytes(event.target),
                                [(bytes(n), bytes(v)) for n, v in event.headers],
                            )
                            with self._lock:
                                record.requests.append(current)
                            answered = False
                            if current.target.startswith(EARLY_PREFIX):
                                self._answer(sock, conn, current)
                                answered = True
                        elif isinstance(event, h11.Data):
                            assert current is not None
                            with self._lock:
                                current.body += bytes(event.data)
                        elif isinstance(event, h11.EndOfMessage):
                            assert current is not None
                            with self._lock:
                                current.complete = True
                            if not answered:
                                self._answer(sock, conn, current)
                            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                                conn.start_next_cycle()
                except (h11.RemoteProtocolError, h11.LocalProtocolError) as exc:
                    if not data:
                        return  # closed mid-request: that request stays incomplete
                    with self._lock:
                        record.errors.append(f"{type(exc).__name__}: {exc}")
                    with contextlib.suppress(OSError):
                        sock.sendall(
                            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n"
                            b"connection: close\r\n\r\n"
                        )
                    return
                if not data or conn.our_state is h11.MUST_CLOSE:
                    return

    @staticmethod
    def _answer(sock: socket.socket, conn: h11.Connection, request: BackendRequest) -> None:
        data = conn.send(
            h11.Response(
                status_code=200,
                headers=[("content-length", "2"), ("x-seq", str(request.seq))],
            )
        )
        data = data or b""
        if request.method != b"HEAD":
            data += conn.send(h11.Data(data=b"ok")) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        with contextlib.suppress(OSError):
            sock.sendall(data)


# --- the client side --------------------------------------------------------------------------


@dataclass
class ClientResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def seq(self) -> int | None:
        """The backend's sequence number: None for a response the gateway made itself."""
        value = self.header(b"x-seq")
        return None if value is None else int(value)


def send_and_read(
    port: int, data: bytes, *, methods: list[bytes] | None = None, timeout: float = 5.0
) -> tuple[list[ClientResponse], bool]:
    """Send `data` on a new connection and read until the gateway closes it.

    Returns the responses (parsed with h11; `methods`, in order, for HEAD requests) and
    whether the connection did close in time (False: still open after `timeout`)."""
    received = bytearray()
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    return parse_responses(bytes(received), methods or []), closed


_INTERIM_ONLY = re.compile(rb"(?:HTTP/1\.1 1\d\d [^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n)+")


def parse_responses(data: bytes, methods: list[bytes]) -> list[ClientResponse]:
    """Every complete response in `data` (the whole stream up to the connection's end)."""
    responses: list[ClientResponse] = []
    while data:
        method = methods[len(responses)] if len(responses) < len(methods) else b"GET"
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(data)
        conn.receive_data(b"")
        response: ClientResponse | None = None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if _INTERIM_ONLY.fullmatch(data):
                    return responses  # `100 Continue`, then the end: an aborted request
                raise AssertionError(f"not a valid response ({exc}): {data!r}") from None
            if isinstance(event, h11.Response):
                response = ClientResponse(
                    event.status_code, [(bytes(n), bytes(v)) for n, v in event.headers], b""
                )
            elif isinstance(event, h11.Data):
                assert response is not None
                response.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                responses.append(response)
                break
            elif isinstance(event, h11.InformationalResponse):
                continue
            else:
                raise AssertionError(f"incomplete response in {data!r}: {event!r}")
        data = conn.trailing_data[0]
    return responses


def wait_for(check: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll `check()` until true or `timeout` (the caller asserts what it expects after)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not check():
        time.sleep(0.01)
