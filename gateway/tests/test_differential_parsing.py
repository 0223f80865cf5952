"""Differential HTTP parsing: malformed and ambiguous requests, sent raw to one gateway process in
front of a recording backend (framing_support.py), whose received bytes are parsed by h11, a
parser independent of the gateway's llhttp.

The invariant, for every case: the backend's bytes parse into exactly the requests the gateway
answered for with the backend's response (matched by the backend's `x-seq`), each with the method,
target, body and headers the client sent; nothing else reaches the backend (no request smuggled
in a body or left over on a pooled connection, no protocol error), and what the gateway refuses
itself is a problem+json answer. A request whose body breaks off mid-way may leave one incomplete
request upstream (its connection closed), never a complete one.

A corpus of hand-written cases (each a regression test), then a hypothesis generator of valid
requests, pipelined, with one optional ambiguity, over the same invariant. One gateway and one
backend serve the whole module, so an upstream connection left out of step by one case would
corrupt a later one: that is part of what is tested.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
import pytest
from framing_support import (
    BackendRequest,
    ClientResponse,
    RecordingBackend,
    parse_responses,
    send_and_read,
    wait_for,
)
from gateway_support import Gateway, GatewayFactory, gateway_config
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(120)

_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
SENTINEL = b"GET /r/sentinel HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"


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
            {"path": "/r/*", "methods": _METHODS, "backend": "rec", "timeout": 3},
            {"path": "/early/*", "methods": _METHODS, "backend": "rec", "timeout": 3},
        ],
    )
    gw = factory(config, workers=1)
    yield gw
    gw.process.stop()


# --- expectations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fwd:
    """Forwarded, and answered by the backend: what the backend must have received."""

    method: bytes
    target: bytes
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()  # present, in this order, among the others
    absent: tuple[bytes, ...] = ()  # header names that must not be forwarded


@dataclass(frozen=True)
class Refused:
    """Answered by the gateway itself."""

    status: int
    code: str | None  # None: any (llhttp and the gateway refuse some ambiguities each their way)


Outcome = Fwd | Refused


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    expect: tuple[Outcome, ...]
    # The gateway closes the connection after these (else a sentinel request must be answered).
    closes: bool = False
    # A refusal that may or may not be answered (pipelined behind a response in progress).
    optional_refusal: Refused | None = None
    # The body broke off after the head went upstream: one incomplete request may be left.
    incomplete: int = 0
    methods: tuple[bytes, ...] = ()  # for HEAD responses


def run_case(
    gateway: Gateway,
    backend: RecordingBackend,
    raw: bytes,
    expect: list[Outcome],
    *,
    closes: bool,
    optional_refusal: Refused | None = None,
    incomplete: int = 0,
    methods: tuple[bytes, ...] = (),
    wait: float = 2.0,
) -> None:
    mark = backend.seq
    expect = list(expect)
    if not closes:
        raw += SENTINEL
        expect.append(Fwd(b"GET", b"/r/sentinel"))
    # (The connection's end is what is waited for: the timeout only matters when it stays open.)
    responses, closed = send_and_read(gateway.port, raw, methods=list(methods), timeout=5)
    assert closed, f"the connection stayed open after {responses} to {raw!r}"
    forwarded = sum(isinstance(outcome, Fwd) for outcome in expect)
    wait_for(lambda: backend.settled_after(mark, forwarded), wait)
    seen = backend.requests_after(mark)
    errors = backend.take_errors()
    assert errors == [], errors

    # What the client got, in order.
    if optional_refusal is not None and len(responses) == len(expect) + 1:
        expect.append(optional_refusal)
    assert len(responses) == len(expect), (raw, responses, expect, seen)
    by_seq = {request.seq: request for request in seen}
    answered: set[int] = set()
    for response, outcome in zip(responses, expect, strict=True):
        if isinstance(outcome, Refused):
            _check_refused(response, outcome)
            continue
        assert response.status == 200, (response, outcome)
        assert response.seq is not None, (response, outcome)
        request = by_seq.get(response.seq)
        assert request is not None, (response, seen)
        answered.add(response.seq)
        _check_forwarded(request, response, outcome)
    # And nothing else reached the backend: no extra, no smuggled request.
    complete = {request.seq for request in seen if request.complete}
    assert complete == answered, (seen, responses)
    assert len(seen) - len(complete) <= incomplete, seen
    if incomplete and len(seen) == len(complete):
        # The client may see its connection close before the broken request's head reaches the
        # backend (or it may never go): let it land now rather than in the next case's count.
        wait_for(lambda: len(backend.requests_after(mark)) > len(complete), 0.1)
    # A request left incomplete upstream had its connection closed at once, not at the timeout.
    wait_for(lambda: all(r.ended for r in backend.requests_after(mark) if not r.complete), wait)
    assert all(r.ended for r in backend.requests_after(mark) if not r.complete), seen


def _check_refused(response: ClientResponse, outcome: Refused) -> None:
    assert response.seq is None, response
    assert response.status == outcome.status, response
    assert response.header(b"content-type") == b"application/problem+json"
    code = orjson.loads(response.body)["code"]
    assert outcome.code in (None, code), response


def _check_forwarded(request: BackendRequest, response: ClientResponse, outcome: Fwd) -> None:
    assert request.complete, request
    assert (request.method, request.target, request.body) == (
        outcome.method,
        outcome.target,
        outcome.body,
    )
    assert request.header(b"x-request-id") == response.header(b"x-request-id")
    relevant = [(n, v) for n, v in request.headers if n in {name for name, _ in outcome.headers}]
    assert relevant == list(outcome.headers), request.headers
    for name in outcome.absent:
        assert request.header(name) is None, request.headers
    # One framing header at most, and the one that matches the body as received.
    framing = [n for n, _ in request.headers if n in (b"content-length", b"transfer-encoding")]
    assert len(framing) <= 1, request.headers


# --- the corpus -------------------------------------------------------------------------------

H = b"host: x\r\n"
BAD = Refused(400, "gateway.bad_request")
FRAMING = Refused(400, "gateway.bad_framing")


def post(headers: bytes, body: bytes, target: bytes = b"/r/p", version: bytes = b"1.1") -> bytes:
    return b"POST %b HTTP/%b\r\n%b%b\r\n%b" % (target, version, H, headers, body)


CHUNKED_ABC = b"3\r\nabc\r\n0\r\n\r\n"

# Requests the server side refuses alone, before anything is forwarded, are tested sans-IO in
# test_wire.py (`REFUSED`, with the exact bytes of each answer); a few of them stay here, end to
# end, with everything that does reach the backend.
CORPUS = [
    # Content-Length
    Case("cl", post(b"content-length: 3\r\n", b"abc"), (Fwd(b"POST", b"/r/p", b"abc"),)),
    Case("cl-zero", post(b"content-length: 0\r\n", b""), (Fwd(b"POST", b"/r/p"),)),
    Case(
        "cl-leading-zeros",
        post(b"content-length: 003\r\n", b"abc"),
        (Fwd(b"POST", b"/r/p", b"abc"),),
    ),
    Case(
        "cl-trailing-space",
        post(b"content-length: 3 \r\n", b"abc"),
        (Fwd(b"POST", b"/r/p", b"abc"),),
    ),
    Case(
        "cl-duplicate-differ",
        post(b"content-length: 3\r\ncontent-length: 5\r\n", b"abcde"),
        (BAD,),
        closes=True,
    ),
    Case(
        "get-with-body",
        b"GET /r/g HTTP/1.1\r\n" + H + b"content-length: 3\r\n\r\nabc",
        (Fwd(b"GET", b"/r/g", b"abc"),),
    ),
    # Content-Length with Transfer-Encoding
    Case(
        "cl-te",
        post(b"content-length: 3\r\ntransfer-encoding: chunked\r\n", CHUNKED_ABC),
        (BAD,),
        closes=True,
    ),
    Case(
        "te-chunked",
        post(b"transfer-encoding: chunked\r\n", CHUNKED_ABC),
        (Fwd(b"POST", b"/r/p", b"abc"),),
    ),
    Case(
        "te-uppercase",
        post(b"Transfer-Encoding: CHUNKED\r\n", CHUNKED_ABC),
        (Fwd(b"POST", b"/r/p", b"abc"),),
    ),
    Case(
        "te-leading-space",
        post(b"transfer-encoding:   chunked\r\n", CHUNKED_ABC),
        (Fwd(b"POST", b"/r/p", b"abc"),),
    ),
    Case(
        "te-trailing-space",
        post(b"transfer-encoding: chunked  \r\n", CHUNKED_ABC),
        (Fwd(b"POST", b"/r/p", b"abc"),),
    ),
    Case(
        "te-gzip-chunked",
        post(b"transfer-encoding: gzip, chunked\r\n", CHUNKED_ABC),
        (FRAMING,),
        closes=True,
    ),
    Case(
        "chunks-many",
        post(
            b"transfer-encoding: chunked\r\n", b"1\r\na\r\n2\r\nbc\r\nA\r\n0123456789\r\n0\r\n\r\n"
        ),
        (Fwd(b"POST", b"/r/p", b"abc0123456789"),),
    ),
    Case(
        "chunk-leading-zeros",
        post(b"transfer-encoding: chunked\r\n", b"0003\r\nabc\r\n0000\r\n\r\n"),
        (Fwd(b"POST", b"/r/p", b"abc"),),
    ),
    Case(
        "chunk-empty-body",
        post(b"transfer-encoding: chunked\r\n", b"0\r\n\r\n"),
        (Fwd(b"POST", b"/r/p"),),
    ),
    Case(
        "chunk-extensions",
        post(b"transfer-encoding: chunked\r\n", b'3;a=b;c\r\nabc\r\n0;last="yes"\r\n\r\n'),
        (Fwd(b"POST", b"/r/p", b"abc"),),
    ),
    Case(
        "chunk-trailers",
        post(b"transfer-encoding: chunked\r\n", b"3\r\nabc\r\n0\r\nx-trailer: t\r\n\r\n"),
        (Fwd(b"POST", b"/r/p", b"abc", absent=(b"x-trailer",)),),
    ),
    Case(
        "chunk-size-overflow",
        post(b"transfer-encoding: chunked\r\n", b"10000000000000003\r\nabc\r\n0\r\n\r\n"),
        (),
        closes=True,
        incomplete=1,
    ),
    Case(
        "chunk-size-negative",
        post(b"transfer-encoding: chunked\r\n", b"-3\r\nabc\r\n0\r\n\r\n"),
        (),
        closes=True,
        incomplete=1,
    ),
    Case(
        "chunk-size-space",
        post(b"transfer-encoding: chunked\r\n", b"3 \r\nabc\r\n0\r\n\r\n"),
        (),
        closes=True,
        incomplete=1,
    ),
    Case(
        "chunk-bare-lf",
        post(b"transfer-encoding: chunked\r\n", b"3\nabc\n0\n\n"),
        (),
        closes=True,
        incomplete=1,
    ),
    Case(
        "chunk-data-overrun",
        post(b"transfer-encoding: chunked\r\n", b"3\r\nabcdef\r\n0\r\n\r\n"),
        (),
        closes=True,
        incomplete=1,
    ),
    Case(
        "chunk-extension-crlf-in-quotes",
        post(b"transfer-encoding: chunked\r\n", b'3;a="b\r\nc"\r\nabc\r\n0\r\n\r\n'),
        (),
        closes=True,
        incomplete=1,
    ),
    # Line endings, whitespace and bytes in the head
    Case("bare-lf", b"GET /r/x HTTP/1.1\nhost: x\n\n", (BAD,), closes=True),
    Case("obs-fold", b"GET /r/x HTTP/1.1\r\nhost: x\r\nx-a: a\r\n b\r\n\r\n", (BAD,), closes=True),
    Case(
        "obs-text-value",
        b"GET /r/x HTTP/1.1\r\nhost: x\r\nx-a: a\xffb\tc\r\n\r\n",
        (Fwd(b"GET", b"/r/x", headers=((b"x-a", b"a\xffb\tc"),)),),
    ),
    Case(
        "leading-empty-lines",
        b"\r\n\r\nGET /r/x HTTP/1.1\r\nhost: x\r\n\r\n",
        (Fwd(b"GET", b"/r/x"),),
    ),
    Case(
        "header-values-kept",
        b'GET /r/x HTTP/1.1\r\nhost: x\r\nx-a: 1\r\nX-A: 2\r\nx-b: ,;="\r\n\r\n',
        (Fwd(b"GET", b"/r/x", headers=((b"x-a", b"1"), (b"x-a", b"2"), (b"x-b", b',;="'))),),
    ),
    # Versions
    Case(
        "http20",
        b"GET /r/x HTTP/2.0\r\nhost: x\r\n\r\n",
        (Refused(400, "gateway.bad_version"),),
        closes=True,
    ),
    Case("http10", b"GET /r/x HTTP/1.0\r\nhost: x\r\n\r\n", (Fwd(b"GET", b"/r/x"),), closes=True),
    Case(
        "http10-keep-alive",
        b"GET /r/a HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n"
        b"POST /r/b HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nhi",
        (Fwd(b"GET", b"/r/a", absent=(b"connection", b"keep-alive")), Fwd(b"POST", b"/r/b", b"hi")),
    ),
    # Upgrade and CONNECT
    Case(
        "upgrade-cl-early",
        b"POST /early/u HTTP/1.1\r\nhost: x\r\nupgrade: h2c\r\nconnection: Upgrade, HTTP2-Settings\r\ncontent-length: 40\r\n\r\n",
        (FRAMING,),
        closes=True,
    ),
    Case(
        "upgrade-without-body",
        b"GET /r/u HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
        b"GET /r/after HTTP/1.1\r\nhost: x\r\n\r\n",
        (Fwd(b"GET", b"/r/u", absent=(b"upgrade", b"connection")), Fwd(b"GET", b"/r/after")),
    ),
    Case(
        "upgrade-cl-zero",
        b"GET /r/u HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\ncontent-length: 0\r\n\r\n",
        (Fwd(b"GET", b"/r/u"),),
    ),
    Case(
        "upgrade-header-alone",
        b"POST /r/u HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\ncontent-length: 3\r\n\r\nabc",
        (Fwd(b"POST", b"/r/u", b"abc", absent=(b"upgrade",)),),
    ),
    Case(
        "connect",
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nhost: 127.0.0.1:22\r\n\r\n",
        (FRAMING,),
        closes=True,
    ),
    Case(
        "absolute-form",
        b"GET http://elsewhere.test/r/abs?q=1 HTTP/1.1\r\nhost: x\r\n\r\n",
        (Fwd(b"GET", b"/r/abs?q=1"),),
    ),
    Case("fragment", b"GET /r/f?q=1#frag HTTP/1.1\r\nhost: x\r\n\r\n", (Fwd(b"GET", b"/r/f?q=1"),)),
    Case(
        "asterisk-form",
        b"OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n",
        (Refused(404, "gateway.no_route"),),
    ),
    Case(
        "double-space-in-request-line",
        b"GET  /r/x HTTP/1.1\r\nhost: x\r\n\r\n",
        (Fwd(b"GET", b"/r/x"),),
    ),
    Case(
        "unknown-method",
        b"PURGE /r/x HTTP/1.1\r\nhost: x\r\n\r\n",
        (Refused(405, "gateway.method_not_allowed"),),
    ),
    Case(
        "head",
        b"HEAD /r/h HTTP/1.1\r\nhost: x\r\n\r\n",
        (Fwd(b"HEAD", b"/r/h"),),
        methods=(b"HEAD",),
    ),
    # Pipelining
    Case(
        "pipelined",
        b"GET /r/1 HTTP/1.1\r\nhost: x\r\n\r\n"
        + post(b"content-length: 3\r\n", b"abc", b"/r/2")
        + post(b"transfer-encoding: chunked\r\n", b"2\r\nde\r\n0\r\n\r\n", b"/early/3")
        + b"DELETE /r/4 HTTP/1.1\r\nhost: x\r\n\r\n",
        (
            Fwd(b"GET", b"/r/1"),
            Fwd(b"POST", b"/r/2", b"abc"),
            Fwd(b"POST", b"/early/3", b"de"),
            Fwd(b"DELETE", b"/r/4"),
        ),
    ),
    Case(
        "pipelined-then-ambiguous",
        b"GET /r/1 HTTP/1.1\r\nhost: x\r\n\r\n"
        + post(b"content-length: 3\r\ncontent-length: 4\r\n", b"abcd"),
        (Fwd(b"GET", b"/r/1"), BAD),
        closes=True,
    ),
    Case(
        "pipelined-then-broken-body",
        b"GET /r/1 HTTP/1.1\r\nhost: x\r\n\r\n"
        + post(b"content-length: 3\r\n", b"abc", b"/r/2")
        + post(b"transfer-encoding: chunked\r\n", b"zz\r\n"),
        (Fwd(b"GET", b"/r/1"), Fwd(b"POST", b"/r/2", b"abc"), BAD),
        closes=True,
    ),
    Case(
        "pipelined-behind-connection-close",
        b"GET /r/1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\nGET /r/2 HTTP/1.1\r\nhost: x\r\n\r\n",
        (Fwd(b"GET", b"/r/1"),),
        closes=True,
    ),
    Case(
        "early-answers-pipelined",
        post(b"content-length: 5\r\n", b"hello", b"/early/a")
        + post(b"transfer-encoding: chunked\r\n", CHUNKED_ABC, b"/early/b"),
        (Fwd(b"POST", b"/early/a", b"hello"), Fwd(b"POST", b"/early/b", b"abc")),
    ),
    # Expect
    Case(
        "expect-100-continue",
        post(b"expect: 100-continue\r\ncontent-length: 3\r\n", b"abc"),
        (Fwd(b"POST", b"/r/p", b"abc", absent=(b"expect",)),),
    ),
    Case(
        "expect-other",
        post(b"expect: something\r\ncontent-length: 3\r\n", b"abc"),
        (Fwd(b"POST", b"/r/p", b"abc", absent=(b"expect",)),),
    ),
    # Headers read once
    Case(
        "host-twice",
        b"GET /r/x HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        (Refused(400, "gateway.duplicate_host"),),
    ),
    Case(
        "authorization-twice",
        b"GET /r/x HTTP/1.1\r\nhost: x\r\nauthorization: a\r\nauthorization: b\r\n\r\n",
        (Refused(400, "gateway.duplicate_credentials"),),
    ),
    Case(
        "api-key-twice",
        b"GET /r/x HTTP/1.1\r\nhost: x\r\nx-api-key: a\r\nX-API-KEY: b\r\n\r\n",
        (Refused(400, "gateway.duplicate_credentials"),),
    ),
    Case(
        "refused-with-body-closes",
        post(b"authorization: a\r\nauthorization: b\r\ncontent-length: 3\r\n", b"abc"),
        (Refused(400, "gateway.duplicate_credentials"),),
        closes=True,
    ),
]


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_corpus(gateway: Gateway, backend: RecordingBackend, case: Case) -> None:
    run_case(
        gateway,
        backend,
        case.raw,
        list(case.expect),
        closes=case.closes,
        optional_refusal=case.optional_refusal,
        incomplete=case.incomplete,
        methods=case.methods,
    )


def test_expect_100_continue_is_answered_before_the_body_is_sent(
    gateway: Gateway, backend: RecordingBackend
) -> None:
    """(That an HTTP/1.0 client gets no interim answer is tested in test_wire.py.)"""
    mark = backend.seq
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(post(b"expect: 100-continue\r\ncontent-length: 3\r\n", b""))
        assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"abc")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if data.endswith(b"ok"):
                break
    (response,) = parse_responses(data, [])
    wait_for(lambda: backend.settled_after(mark, 1))
    (request,) = backend.requests_after(mark)
    assert (response.seq, request.body) == (request.seq, b"abc")


# --- generated requests -----------------------------------------------------------------------

_TOKEN = "abcdefghijklmnopqrstuvwxyz0123456789-"
_SEGMENT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_~"
_VALUE_EDGE = list(range(0x21, 0x7F)) + list(range(0x80, 0x100))
_VALUE_INNER = [*_VALUE_EDGE, 0x20, 0x09]

# Ambiguities in the head: refused (400) before anything goes upstream, connection closed.
HEAD_MUTATIONS = [
    "duplicate-cl",
    "cl-and-te",
    "te-variant",
    "upgrade-with-body",
    "obs-fold",
    "bare-lf",
    "nul",
    "space-before-colon",
    "connect",
    "version",
]
# Breaks in a chunked body: the connection closes; upstream, one incomplete request at most.
BODY_MUTATIONS = ["chunk-size-overflow", "chunk-size-garbage", "chunk-overrun"]


@dataclass
class Generated:
    raw: bytes
    outcome: Fwd | None  # None: mutated, refused or broken off
    keep_alive: bool
    mutation: str | None = None
    methods: list[bytes] = field(default_factory=list)


def _case(draw: st.DrawFn, name: str) -> bytes:
    return "".join(draw(st.sampled_from([c.lower(), c.upper()])) for c in name).encode()


@st.composite
def requests(draw: st.DrawFn) -> Generated:
    # One request in three carries an ambiguity.
    mutation = draw(
        st.one_of(st.none(), st.none(), st.sampled_from(HEAD_MUTATIONS + BODY_MUTATIONS))
    )
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH"]))
    # (An early answer to a body that breaks off later is the backend's to give.)
    prefix = b"/r/" if mutation in BODY_MUTATIONS else draw(st.sampled_from([b"/r/", b"/early/"]))
    segments = draw(st.lists(st.text(_SEGMENT, min_size=1, max_size=8), min_size=1, max_size=3))
    target = prefix + "/".join(segments).encode()
    if draw(st.booleans()):
        target += b"?" + draw(st.text(_SEGMENT + "=&", max_size=12)).encode()
    http11 = mutation in BODY_MUTATIONS or draw(st.integers(0, 4)) > 0
    framing = draw(st.sampled_from(["none", "length", "length", "chunked", "chunked"]))
    if mutation in BODY_MUTATIONS:
        framing = "chunked"
    elif framing == "chunked" and not http11:
        framing = "length"
    body = draw(st.binary(max_size=200)) if framing != "none" else b""
    names = draw(st.lists(st.text(_TOKEN, min_size=1, max_size=10), max_size=4))
    headers: list[tuple[bytes, bytes]] = []
    for name in names:
        value = draw(st.lists(st.sampled_from(_VALUE_INNER), max_size=12))
        edge = draw(st.lists(st.sampled_from(_VALUE_EDGE), min_size=1, max_size=2))
        encoded = bytes([edge[0], *value, edge[-1]]) if len(edge) > 1 else bytes(edge)
        headers.append((b"x-g-" + name.encode(), encoded))
    keep_alive = draw(st.integers(0, 5)) > 0
    if mutation in ("duplicate-cl", "cl-and-te", "upgrade-with-body") and not body:
        body = b"xyz"
        if framing == "none":
            framing = "length"

    lines = [b"%b: %b\r\n" % (_case(draw, "host"), b"x")]
    lines += [b"%b: %b\r\n" % (_case(draw, n.decode()), v) for n, v in headers]
    if not http11 and keep_alive:
        lines.append(b"connection: keep-alive\r\n")
    if http11 and not keep_alive:
        lines.append(b"connection: close\r\n")
    if framing != "none" and draw(st.booleans()):
        lines.append(b"expect: 100-continue\r\n")
    if framing == "length":
        lines.append(b"%b: %d\r\n" % (_case(draw, "content-length"), len(body)))
        encoded_body = body
    elif framing == "chunked":
        lines.append(b"%b: chunked\r\n" % _case(draw, "transfer-encoding"))
        encoded_body = _chunked(draw, body, mutation)
    else:
        encoded_body = b""
    draw_mutation = {
        "duplicate-cl": lambda: lines.append(b"content-length: %d\r\n" % (len(body) + 1)),
        "cl-and-te": lambda: lines.append(
            b"transfer-encoding: chunked\r\n" if framing == "length" else b"content-length: 3\r\n"
        ),
        "te-variant": lambda: lines.append(
            draw(
                st.sampled_from(
                    [
                        b"transfer-encoding: gzip, chunked\r\n",
                        b"transfer-encoding: xchunked\r\n",
                        b"transfer-encoding: identity\r\n",
                        b"transfer-encoding: chunked, identity\r\n",
                    ]
                )
            )
        ),
        "upgrade-with-body": lambda: lines.append(b"upgrade: websocket\r\nconnection: upgrade\r\n"),
        "obs-fold": lambda: lines.append(b"x-folded: a\r\n\tb\r\n"),
        "bare-lf": lambda: lines.append(b"x-lf: a\n"),
        "nul": lambda: lines.append(b"x-nul: a\x00b\r\n"),
        "space-before-colon": lambda: lines.append(b"x-space : a\r\n"),
    }
    if mutation in draw_mutation:
        draw_mutation[mutation]()
        at = draw(st.integers(1, len(lines) - 1))  # anywhere after Host
        lines.insert(at, lines.pop())
    request_line = b"%b %b HTTP/%b\r\n" % (method, target, b"1.1" if http11 else b"1.0")
    if mutation == "connect":
        request_line = b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n"
    elif mutation == "version":
        request_line = b"%b %b HTTP/%b\r\n" % (
            method,
            target,
            draw(st.sampled_from([b"2.0", b"0.9"])),
        )
    raw = request_line + b"".join(lines) + b"\r\n" + encoded_body
    outcome = None if mutation else Fwd(method, target, body, headers=tuple(headers))
    return Generated(raw, outcome, keep_alive, mutation, [method])


def _chunked(draw: st.DrawFn, body: bytes, mutation: str | None) -> bytes:
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    out = []
    for piece in pieces:
        if not piece:
            continue
        size = draw(st.sampled_from(["%x", "%X", "00%x"])) % len(piece)
        extension = draw(st.sampled_from(["", ";a=b", ';q="x y"']))
        out.append(b"%b%b\r\n%b\r\n" % (size.encode(), extension.encode(), piece))
    if mutation == "chunk-size-overflow":
        out.insert(0, b"1%s\r\nab\r\n" % (b"0" * 17))
    elif mutation == "chunk-size-garbage":
        out.insert(0, draw(st.sampled_from([b"-1\r\na\r\n", b"zz\r\n", b"1 \r\na\r\n"])))
    elif mutation == "chunk-overrun":
        out.insert(0, b"1\r\nabc\r\n")
    out.append(b"0\r\n\r\n")
    return b"".join(out)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(st.lists(requests(), min_size=1, max_size=3))
def test_generated_requests(
    gateway: Gateway, backend: RecordingBackend, batch: list[Generated]
) -> None:
    raw = b""
    expect: list[Outcome] = []
    methods: list[bytes] = []
    closes = False
    optional_refusal: Refused | None = None
    incomplete = 0
    for generated in batch:
        event(f"mutation: {generated.mutation}")
        raw += generated.raw
        methods += generated.methods
        if generated.outcome is None:
            # Refused in its turn (400), or, a body breaking off once forwarded, aborted.
            closes = True
            if generated.mutation in BODY_MUTATIONS:
                incomplete = 1
                optional_refusal = Refused(400, "gateway.bad_request")
            elif expect:
                optional_refusal = Refused(400, None)
            else:
                expect.append(Refused(400, None))
            break
        expect.append(generated.outcome)
        if not generated.keep_alive:
            closes = True
            break
    run_case(
        gateway,
        backend,
        raw,
        expect,
        closes=closes,
        optional_refusal=optional_refusal,
        incomplete=incomplete,
        methods=tuple(methods),
        wait=1.0,
    )
