"""Requests the gateway and a backend could read differently, through a real gateway process in
front of a recording backend that answers before reading the body (framing_support.py).

- An `Upgrade` request declaring a body: llhttp treats what follows the head as another protocol
  and skips the body, so forwarding the declared `content-length` without those bytes left a
  pooled upstream connection owing a body, paid with the head of whichever request came next on
  it: a request smuggled past routing and admission, and responses handed to the wrong clients.
- Duplicated credentials: the gateway read the last `Authorization` / `X-Api-Key`, the services
  the first.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from framing_support import RecordingBackend, send_and_read, wait_for
from gateway_support import Gateway, GatewayFactory, gateway_config

pytestmark = pytest.mark.timeout(60)

_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE"]


@pytest.fixture(scope="module")
def backend() -> Iterator[RecordingBackend]:
    server = RecordingBackend()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(
    backend: RecordingBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    factory = GatewayFactory(tmp_path_factory.mktemp("gateway"))
    config = gateway_config(
        {"rec": {"instances": [backend.url]}},
        [
            {"path": "/early/*", "methods": _METHODS, "backend": "rec", "timeout": 3},
            {
                "path": "/limited/*",
                "methods": _METHODS,
                "backend": "rec",
                "timeout": 3,
                "rewrite": {"strip_prefix": "/limited", "add_prefix": "/early"},
                "rate_limit": {"requests": 1000, "per": 1},
            },
        ],
    )
    # One worker: every request goes through the same upstream pool, as it would under load.
    gw = factory(config, workers=1)
    yield gw
    gw.process.stop()


def _forwarded_head(backend: RecordingBackend, marker: bytes) -> bytes:
    """The head of the recorded request holding `marker`, as the backend received it."""
    for conn in backend.connections:
        at = conn.received.find(marker)
        if at >= 0:
            start = conn.received.rfind(b"\r\n\r\n", 0, at)
            start = 0 if start < 0 else start + 4
            end = conn.received.index(b"\r\n\r\n", at) + 4
            return bytes(conn.received[start:end])
    raise AssertionError(f"{marker!r} never reached the backend")


@pytest.mark.parametrize(
    "upgrade",
    [
        b"upgrade: websocket\r\nconnection: upgrade\r\n",
        b"upgrade: h2c\r\nconnection: keep-alive, Upgrade\r\n",
    ],
)
def test_an_upgrade_request_declaring_a_body_cannot_smuggle_a_request(
    gateway: Gateway, backend: RecordingBackend, upgrade: bytes
) -> None:
    smuggled = b"GET /internal/secret HTTP/1.1\r\nhost: x\r\n\r\n"

    def carrier(request_id: bytes) -> bytes:
        return (
            b"POST /early/public HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            b"x-request-id: %b\r\ncontent-length: %d\r\n\r\n%b"
            % (request_id, len(smuggled), smuggled)
        )

    # What the carrier's head looks like once forwarded: the attacker can work it out too.
    send_and_read(gateway.port, carrier(b"probe-0001"))
    owed = len(_forwarded_head(backend, b"x-request-id: probe-0001"))
    mark = backend.seq

    # The attack: a head declaring `owed` body bytes that never come...
    poison, poison_closed = send_and_read(
        gateway.port,
        b"GET /early/poison HTTP/1.1\r\nhost: x\r\n%bcontent-length: %d\r\n\r\n" % (upgrade, owed),
        timeout=2,
    )
    # ...paid with the carrier's head on the same pooled connection, leaving its body (a
    # request to a path with no route) to be read as the next request.
    carried, _ = send_and_read(gateway.port, carrier(b"carry-0001"))
    # An innocent client afterwards gets its own answer.
    victim, _ = send_and_read(
        gateway.port, b"GET /early/victim HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )

    wait_for(lambda: backend.settled_after(mark, 2))
    seen = backend.requests_after(mark)
    assert [r.target for r in seen] == [b"/early/public", b"/early/victim"], seen
    assert all(r.complete for r in seen)
    assert seen[0].body == smuggled  # the carrier's body stayed a body
    assert [r.seq for r in carried] == [seen[0].seq]
    assert [r.seq for r in victim] == [seen[1].seq]
    assert backend.take_errors() == []
    # The upgrade request itself is refused, and the connection closed.
    assert [r.status for r in poison] == [400]
    assert orjson.loads(poison[0].body)["code"] == "gateway.bad_framing"
    assert poison[0].header(b"connection") == b"close"
    assert poison_closed


# Each spelling of a duplicate is tested sans-IO in test_wire.py; here, one of each kind on
# every kind of route, end to end.
@pytest.mark.parametrize("path", [b"/early/open", b"/limited/x", b"/no/route"])
@pytest.mark.parametrize(
    "headers",
    [
        b"Authorization: Bearer a\r\nx-other: 1\r\nAUTHORIZATION: Basic b\r\n",
        b"x-api-key: one\r\nX-Api-Key: two\r\n",
    ],
)
def test_a_request_with_duplicated_credentials_is_refused_on_every_route(
    gateway: Gateway, backend: RecordingBackend, path: bytes, headers: bytes
) -> None:
    mark = backend.seq
    responses, _ = send_and_read(
        gateway.port,
        b"GET %b HTTP/1.1\r\nhost: x\r\n%b\r\n"
        b"GET /early/after HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n" % (path, headers),
    )
    assert [r.status for r in responses] == [400, 200]
    problem = orjson.loads(responses[0].body)
    assert problem["code"] == "gateway.duplicate_credentials"
    assert responses[0].header(b"content-type") == b"application/problem+json"
    # Nothing of the refused request went upstream; the connection stays usable.
    wait_for(lambda: backend.settled_after(mark, 1))
    assert [r.target for r in backend.requests_after(mark)] == [b"/early/after"]


def test_one_of_each_credential_goes_through(gateway: Gateway, backend: RecordingBackend) -> None:
    mark = backend.seq
    responses, _ = send_and_read(
        gateway.port,
        b"GET /early/one HTTP/1.1\r\nhost: x\r\nauthorization: Bearer a\r\n"
        b"x-api-key: k\r\nconnection: close\r\n\r\n",
    )
    assert [r.status for r in responses] == [200]
    (seen,) = backend.requests_after(mark)
    assert seen.header(b"authorization") == b"Bearer a"
    assert seen.header(b"x-api-key") == b"k"
