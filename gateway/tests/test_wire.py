"""The server side's parsing and framing, sans-IO (wire_support.py): bytes into one client
connection, then what the handler was given and the exact bytes written back.

What only the server side decides is tested here: which requests reach the handler, and how;
which are refused before it, with what answer; in what order pipelined requests are answered;
when reading pauses and the connection closes. The socket-level suites (test_smuggling.py,
test_differential_parsing.py, test_streaming.py, test_lifecycle.py) keep a few of these cases
end to end, through a real gateway process and backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from wire_support import (
    Wire,
    event_loop,
    gateway_response,
    generated_id,
    problem_code,
    problem_response,
)

from mosaic_gateway.http import problems
from mosaic_gateway.http.problems import GatewayProblem

H = b"host: x\r\n"
CHUNKED_ABC = b"3\r\nabc\r\n0\r\n\r\n"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with event_loop() as made:
        yield made


def post(headers: bytes, body: bytes, target: bytes = b"/r/p", version: bytes = b"1.1") -> bytes:
    return b"POST %b HTTP/%b\r\n%b%b\r\n%b" % (target, version, H, headers, body)


def ok(wire: Wire, request_id: bytes, *, close: bool = False) -> bytes:
    return gateway_response(wire, 200, b"ok", b"text/plain", request_id, close=close)


# --- what the handler is given ----------------------------------------------------------------


def test_a_head_is_handed_over_parsed_and_answered_in_the_bytes_respond_makes(
    loop: asyncio.AbstractEventLoop,
) -> None:
    wire = Wire(loop)
    wire.feed(
        b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: api.test\r\nX-Dup: 1\r\nx-dup: 2\r\n"
        b"X-Request-Id: req-1\r\nTraceparent: tp\r\n\r\n"
    )
    (call,) = wire.calls
    exchange = call.exchange
    assert (exchange.method, exchange.path, exchange.query) == (b"GET", b"/a/b", b"x=1&y=2")
    # Names lower-cased, values as sent, duplicates kept in arrival order.
    assert exchange.headers == [
        (b"host", b"api.test"),
        (b"x-dup", b"1"),
        (b"x-dup", b"2"),
        (b"x-request-id", b"req-1"),
        (b"traceparent", b"tp"),
    ]
    assert (exchange.host, exchange.request_id, exchange.traceparent) == (
        b"api.test",
        b"req-1",
        b"tp",
    )
    assert exchange.http11
    assert exchange.keep_alive
    assert not exchange.has_body
    assert call.ended
    assert wire.take() == b""  # nothing is written before the handler answers
    call.ok()
    assert wire.take() == ok(wire, b"req-1")
    assert not wire.closed()
    assert wire.reading()


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/r/f", b"/r/f", None),
        (b"/r/f?", b"/r/f", b""),
        (b"/r/f#frag", b"/r/f", None),
        (b"/r/f#?admin=1", b"/r/f", None),
        (b"/r/f#a?b=1", b"/r/f", None),
        (b"/r/f?q=1#frag?x=2", b"/r/f", b"q=1"),
        (b"http://elsewhere.test/r/abs?q=1", b"/r/abs", b"q=1"),
        (b"http://elsewhere.test", b"/", None),
        (b"*", b"*", None),
    ],
)
def test_the_target_splits_into_path_and_query_and_a_fragment_is_dropped_whole(
    loop: asyncio.AbstractEventLoop, target: bytes, path: bytes, query: bytes | None
) -> None:
    wire = Wire(loop).feed(b"GET %b HTTP/1.1\r\nhost: x\r\n\r\n" % target)
    (call,) = wire.calls
    assert (call.exchange.path, call.exchange.query) == (path, query)


def test_headers_named_in_connection_are_dropped_but_host_and_framing_stay(
    loop: asyncio.AbstractEventLoop,
) -> None:
    wire = Wire(loop).feed(
        b"POST /r HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, X-Private, host\r\n"
        b"Connection: content-length, te\r\nx-private: secret\r\nte: trailers\r\n"
        b"x-kept: yes\r\ncontent-length: 2\r\n\r\nhi"
    )
    (call,) = wire.calls
    assert [name for name, _ in call.exchange.headers] == [
        b"host",
        b"connection",
        b"connection",
        b"x-kept",
        b"content-length",
    ]
    assert call.body == b"hi"


@pytest.mark.parametrize(
    ("offered", "kept"),
    [
        (b"req-7f3a", True),
        (b"a.b_c:d+e/f=g", True),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"has spaces", False),
        (b'quote"d', False),
        (b"", False),
    ],
)
def test_a_sane_request_id_is_kept_and_any_other_replaced(
    loop: asyncio.AbstractEventLoop, offered: bytes, kept: bool
) -> None:
    wire = Wire(loop, auto=True).feed(
        b"GET / HTTP/1.1\r\nhost: x\r\nx-request-id: %b\r\n\r\n" % offered
    )
    (call,) = wire.calls
    if kept:
        assert call.exchange.request_id == offered
    else:
        assert call.exchange.request_id == generated_id(wire.take())


# --- refused before the handler ---------------------------------------------------------------

BAD = problems.BAD_REQUEST
TE = problems.BAD_TRANSFER_ENCODING

# (Moved here from test_differential_parsing.py's corpus, where a few stay end to end.)
REFUSED: list[tuple[str, bytes, GatewayProblem]] = [
    ("cl-duplicate-same", post(b"content-length: 3\r\ncontent-length: 3\r\n", b"abc"), BAD),
    ("cl-duplicate-differ", post(b"content-length: 3\r\ncontent-length: 5\r\n", b"abcde"), BAD),
    ("cl-list", post(b"content-length: 3, 3\r\n", b"abc"), BAD),
    ("cl-plus", post(b"content-length: +3\r\n", b"abc"), BAD),
    ("cl-negative", post(b"content-length: -1\r\n", b""), BAD),
    ("cl-hex", post(b"content-length: 0x3\r\n", b"abc"), BAD),
    ("cl-empty", post(b"content-length: \r\n", b""), BAD),
    ("cl-overflow", post(b"content-length: 99999999999999999999999\r\n", b""), BAD),
    ("cl-space-before-colon", post(b"content-length : 3\r\n", b"abc"), BAD),
    ("cl-te", post(b"content-length: 3\r\ntransfer-encoding: chunked\r\n", CHUNKED_ABC), BAD),
    ("te-cl", post(b"transfer-encoding: chunked\r\ncontent-length: 3\r\n", CHUNKED_ABC), BAD),
    (
        "te-cl-http10",
        post(b"transfer-encoding: chunked\r\ncontent-length: 3\r\n", b"abc", version=b"1.0"),
        BAD,
    ),
    ("te-tabs", post(b"transfer-encoding:\tchunked\t\r\n", CHUNKED_ABC), TE),
    ("te-chunked-identity", post(b"transfer-encoding: chunked, identity\r\n", CHUNKED_ABC), BAD),
    ("te-identity-chunked", post(b"transfer-encoding: identity, chunked\r\n", CHUNKED_ABC), TE),
    ("te-gzip-chunked", post(b"transfer-encoding: gzip, chunked\r\n", CHUNKED_ABC), TE),
    (
        "te-two-headers",
        post(b"transfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n", CHUNKED_ABC),
        TE,
    ),
    (
        "te-chunked-twice",
        post(b"transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n", CHUNKED_ABC),
        BAD,
    ),
    ("te-xchunked", post(b"transfer-encoding: xchunked\r\n", CHUNKED_ABC), TE),
    ("te-chunkedx", post(b"transfer-encoding: chunkedx\r\n", CHUNKED_ABC), TE),
    ("te-identity", post(b"transfer-encoding: identity\r\n", b"abc"), TE),
    ("te-http10", post(b"transfer-encoding: chunked\r\n", CHUNKED_ABC, version=b"1.0"), TE),
    ("te-space-before-colon", post(b"transfer-encoding : chunked\r\n", CHUNKED_ABC), BAD),
    ("te-obs-fold", post(b"transfer-encoding: identity\r\n chunked\r\n", CHUNKED_ABC), BAD),
    ("bare-lf", b"GET /r/x HTTP/1.1\nhost: x\n\n", BAD),
    ("bare-lf-in-header", b"GET /r/x HTTP/1.1\r\nhost: x\nx-a: b\r\n\r\n", BAD),
    ("bare-cr", b"GET /r/x HTTP/1.1\r\nhost: x\rx-a: b\r\n\r\n", BAD),
    ("bare-cr-in-value", b"GET /r/x HTTP/1.1\r\nhost: x\r\nx-a: a\rb\r\n\r\n", BAD),
    ("obs-fold", b"GET /r/x HTTP/1.1\r\nhost: x\r\nx-a: a\r\n b\r\n\r\n", BAD),
    ("nul-in-value", b"GET /r/x HTTP/1.1\r\nhost: x\r\nx-a: a\x00b\r\n\r\n", BAD),
    ("nul-in-name", b"GET /r/x HTTP/1.1\r\nhost: x\r\nx-\x00a: b\r\n\r\n", BAD),
    ("ctl-in-value", b"GET /r/x HTTP/1.1\r\nhost: x\r\nx-a: a\x01b\r\n\r\n", BAD),
    ("del-in-value", b"GET /r/x HTTP/1.1\r\nhost: x\r\nx-a: a\x7fb\r\n\r\n", BAD),
    ("space-before-colon", b"GET /r/x HTTP/1.1\r\nhost: x\r\nx-a : b\r\n\r\n", BAD),
    ("tab-before-colon", b"GET /r/x HTTP/1.1\r\nhost\t: x\r\n\r\n", BAD),
    ("header-without-colon", b"GET /r/x HTTP/1.1\r\nhost: x\r\nx-a\r\n\r\n", BAD),
    ("empty-header-name", b"GET /r/x HTTP/1.1\r\nhost: x\r\n: b\r\n\r\n", BAD),
    ("space-before-first-header", b"GET /r/x HTTP/1.1\r\n host: x\r\n\r\n", BAD),
    ("lower-case-method", b"get /r/x HTTP/1.1\r\nhost: x\r\n\r\n", BAD),
    ("control-in-target", b"GET /r/\x01 HTTP/1.1\r\nhost: x\r\n\r\n", BAD),
    ("raw-nul-in-target", b"GET /files/a\x00b HTTP/1.1\r\nhost: x\r\n\r\n", BAD),
    ("http09", b"GET /r/x HTTP/0.9\r\n\r\n", problems.BAD_VERSION),
    ("http20", b"GET /r/x HTTP/2.0\r\nhost: x\r\n\r\n", problems.BAD_VERSION),
    ("http12", b"GET /r/x HTTP/1.2\r\nhost: x\r\n\r\n", BAD),
    (
        "upgrade-cl",
        b"GET /r/u HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
        b"content-length: 5\r\n\r\nabcde",
        problems.UPGRADE_WITH_BODY,
    ),
    (
        "upgrade-cl-early",
        b"POST /early/u HTTP/1.1\r\nhost: x\r\nupgrade: h2c\r\n"
        b"connection: Upgrade, HTTP2-Settings\r\ncontent-length: 40\r\n\r\n",
        problems.UPGRADE_WITH_BODY,
    ),
    (
        "upgrade-chunked",
        b"POST /r/u HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
        b"transfer-encoding: chunked\r\n\r\n" + CHUNKED_ABC,
        problems.UPGRADE_WITH_BODY,
    ),
    (
        "connect",
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nhost: 127.0.0.1:22\r\n\r\n",
        problems.CONNECT_REFUSED,
    ),
    (
        "connect-origin-form",
        b"CONNECT /r/x HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc",
        problems.CONNECT_REFUSED,
    ),
]


@pytest.mark.parametrize("split", ["whole", "bytewise"])
@pytest.mark.parametrize(("raw", "problem"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_an_unusable_request_is_refused_before_the_handler_and_the_connection_closes(
    loop: asyncio.AbstractEventLoop, raw: bytes, problem: GatewayProblem, split: str
) -> None:
    wire = Wire(loop, auto=True)
    # Whatever follows on the connection is never parsed as a request.
    raw += b"GET /r/after HTTP/1.1\r\nhost: x\r\n\r\n"
    if split == "whole":
        wire.feed(raw)
    else:
        wire.feed(*(raw[at : at + 1] for at in range(len(raw))))
    assert wire.calls == []
    written = wire.take()
    assert written == problem_response(wire, problem, generated_id(written))
    assert wire.closed()


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        (b"authorization: Bearer a\r\nauthorization: Bearer b\r\n", problems.DUPLICATE_CREDENTIALS),
        (
            b"Authorization: Bearer a\r\nx-other: 1\r\nAUTHORIZATION: Basic b\r\n",
            problems.DUPLICATE_CREDENTIALS,
        ),
        (b"x-api-key: one\r\nX-Api-Key: two\r\n", problems.DUPLICATE_CREDENTIALS),
        (b"x-api-key: same\r\nx-api-key: same\r\n", problems.DUPLICATE_CREDENTIALS),
        (b"host: y\r\n", problems.DUPLICATE_HOST),
        (b"Host: x\r\n", problems.DUPLICATE_HOST),
    ],
)
def test_a_header_read_once_sent_twice_is_refused_and_the_connection_stays_in_step(
    loop: asyncio.AbstractEventLoop, headers: bytes, problem: GatewayProblem
) -> None:
    """(Moved here from test_smuggling.py, which keeps one case per route end to end.)"""
    wire = Wire(loop, auto=True).feed(
        b"GET /any/path HTTP/1.1\r\nhost: x\r\n%bx-request-id: twice\r\n\r\n"
        b"GET /after HTTP/1.1\r\nhost: x\r\nx-request-id: next\r\n\r\n" % headers
    )
    # The refused request never reaches the handler; the one after it does.
    assert [call.exchange.path for call in wire.calls] == [b"/after"]
    assert wire.take() == (
        problem_response(wire, problem, b"twice", instance=b"/any/path", close=False)
        + ok(wire, b"next")
    )
    assert not wire.closed()


def test_one_of_each_credential_goes_through(loop: asyncio.AbstractEventLoop) -> None:
    wire = Wire(loop, auto=True).feed(
        b"GET /r HTTP/1.1\r\nhost: x\r\nauthorization: Bearer a\r\nx-api-key: k\r\n\r\n"
    )
    (call,) = wire.calls
    assert (b"authorization", b"Bearer a") in call.exchange.headers
    assert (b"x-api-key", b"k") in call.exchange.headers
    # The values the credential filters read, found while parsing (no filter scans for them).
    assert call.exchange.authorization == b"Bearer a"
    assert call.exchange.api_key == b"k"


@pytest.mark.parametrize("named", [b"x-api-key", b"authorization", b"X-Api-Key, Authorization"])
def test_a_credential_the_client_made_hop_by_hop_is_gone_for_the_filters_too(
    loop: asyncio.AbstractEventLoop, named: bytes
) -> None:
    # What `Connection` names is dropped before any filter looks, so the credential filters
    # must not see it either: a key that reaches no backend cannot be the one that was checked.
    wire = Wire(loop, auto=True).feed(
        b"GET /r HTTP/1.1\r\nhost: x\r\nauthorization: Bearer a\r\nx-api-key: k\r\n"
        b"connection: " + named + b"\r\n\r\n"
    )
    (call,) = wire.calls
    exchange = call.exchange
    names = {name for name, _ in exchange.headers}
    for header, seen in (
        (b"x-api-key", exchange.api_key),
        (b"authorization", exchange.authorization),
    ):
        if header in named.lower():
            assert header not in names
            assert seen is None
        else:
            assert header in names
            assert seen is not None


def test_a_refused_request_with_a_body_closes_the_connection(
    loop: asyncio.AbstractEventLoop,
) -> None:
    wire = Wire(loop, auto=True).feed(
        post(
            b"authorization: a\r\nauthorization: b\r\nx-request-id: r\r\ncontent-length: 3\r\n", b""
        )
    )
    assert wire.calls == []
    # Answered at once, with its body still owed: it cannot be skipped, so the connection ends.
    assert wire.take() == problem_response(
        wire, problems.DUPLICATE_CREDENTIALS, b"r", instance=b"/r/p", close=True
    )
    assert wire.closed()


@pytest.mark.parametrize("split", [1, 100, 10_000])
def test_headers_over_the_limit_are_a_431(loop: asyncio.AbstractEventLoop, split: int) -> None:
    wire = Wire(loop, auto=True, max_header_bytes=1024)
    raw = b"GET /r HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 2000 + b"\r\n\r\n"
    wire.feed(*(raw[at : at + split] for at in range(0, len(raw), split)))
    assert wire.calls == []
    written = wire.take()
    assert written == problem_response(wire, problems.HEADERS_TOO_LARGE, generated_id(written))
    assert wire.closed()


def test_an_endless_header_line_is_refused_within_a_read_of_the_limit(
    loop: asyncio.AbstractEventLoop,
) -> None:
    wire = Wire(loop, auto=True, max_header_bytes=4096)
    wire.feed(b"GET /r HTTP/1.1\r\nhost: x\r\nx-big: ")
    fed = 0
    while not wire.closed():
        wire.feed(b"a" * 1000)
        fed += 1000
        assert fed <= 4096 + 1000, "still reading past the limit"
    assert problem_code(wire.take()) == (431, "gateway.headers_too_large")


def test_the_header_limit_counts_the_target_and_each_header_as_name_value_and_4(
    loop: asyncio.AbstractEventLoop,
) -> None:
    head = b"GET /r HTTP/1.1\r\nhost: x\r\nx-big: "
    value = b"a" * (1024 - len(b"/r") - (4 + 1 + 4) - (5 + 4))
    wire = Wire(loop, auto=True, max_header_bytes=1024).feed(head + value + b"\r\n\r\n")
    assert len(wire.calls) == 1
    wire = Wire(loop, auto=True, max_header_bytes=1024).feed(head + value + b"a\r\n\r\n")
    assert wire.calls == []
    assert problem_code(wire.take()) == (431, "gateway.headers_too_large")


# --- bodies -----------------------------------------------------------------------------------


def test_a_body_goes_to_the_sink_as_it_arrives(loop: asyncio.AbstractEventLoop) -> None:
    wire = Wire(loop)
    wire.feed(post(b"content-length: 10\r\nx-request-id: b\r\n", b"abc"))
    (call,) = wire.calls
    assert (call.chunks, call.ended) == ([b"abc"], False)
    wire.feed(b"defg", b"hij")
    assert (call.chunks, call.ended) == ([b"abc", b"defg", b"hij"], True)
    call.ok()
    assert wire.take() == ok(wire, b"b")
    assert not wire.closed()


def test_a_chunked_body_is_dechunked_and_its_trailers_dropped(
    loop: asyncio.AbstractEventLoop,
) -> None:
    wire = Wire(loop, auto=True).feed(
        post(
            b"transfer-encoding: chunked\r\n",
            b'1;a=b\r\na\r\n2\r\nbc\r\nA\r\n0123456789\r\n0;last="yes"\r\nx-trailer: t\r\n\r\n',
        )
    )
    (call,) = wire.calls
    assert call.exchange.chunked
    assert call.ended
    assert call.body == b"abc0123456789"
    assert [name for name, _ in call.exchange.headers] == [b"host", b"transfer-encoding"]


def test_an_answer_before_the_body_is_read_closes_the_connection(
    loop: asyncio.AbstractEventLoop,
) -> None:
    wire = Wire(loop).feed(post(b"content-length: 1000\r\nx-request-id: e\r\n", b"the-beginning"))
    (call,) = wire.calls
    call.ok()
    assert wire.take() == ok(wire, b"e", close=True)
    assert wire.closed()


def test_a_chunked_body_broken_midway_aborts_the_exchange_being_answered(
    loop: asyncio.AbstractEventLoop,
) -> None:
    wire = Wire(loop).feed(post(b"transfer-encoding: chunked\r\n", b"3\r\nabc\r\n"))
    (call,) = wire.calls
    wire.feed(b"zz\r\n")
    # Part of the body may be upstream already: the client learns it from the close alone.
    assert wire.take() == b""
    assert wire.closed()
    assert call.exchange.finished
    assert not call.ended


def test_a_body_over_the_server_limit_is_a_413(loop: asyncio.AbstractEventLoop) -> None:
    wire = Wire(loop, max_body_bytes=100)
    wire.feed(post(b"transfer-encoding: chunked\r\nx-request-id: big\r\n", b"40\r\n" + b"a" * 64))
    (call,) = wire.calls
    wire.feed(b"\r\n40\r\n" + b"b" * 64 + b"\r\n0\r\n\r\n")
    assert call.body == b"a" * 64  # what came within the limit, and nothing after it
    assert wire.take() == problem_response(
        wire, problems.BODY_TOO_LARGE, b"big", instance=b"/r/p", close=True
    )
    assert wire.closed()


@pytest.mark.parametrize(("version", "interim"), [(b"1.1", True), (b"1.0", False)])
def test_expect_100_continue_is_answered_to_http11_clients_once_the_body_is_wanted(
    loop: asyncio.AbstractEventLoop, version: bytes, interim: bool
) -> None:
    """(The HTTP/1.0 half moved here from test_differential_parsing.py.)"""
    wire = Wire(loop)
    wire.feed(
        post(
            b"expect: 100-continue\r\ncontent-length: 3\r\nx-request-id: c\r\n",
            b"",
            version=version,
        )
    )
    (call,) = wire.calls
    # An HTTP/1.0 client would read an interim answer as its response.
    assert wire.take() == (b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b"")
    wire.feed(b"abc")
    assert call.body == b"abc"
    call.ok()
    assert wire.take() == ok(wire, b"c", close=version == b"1.0")


def test_a_request_refused_unread_gets_no_100_continue(loop: asyncio.AbstractEventLoop) -> None:
    class Refuse:
        def handle(self, exchange: object) -> None:
            from mosaic_gateway.http.server import Exchange

            assert isinstance(exchange, Exchange)
            exchange.send_problem(problems.BODY_TOO_LARGE)

    wire = Wire(loop)
    wire.conn.handler = Refuse()
    wire.feed(post(b"expect: 100-continue\r\ncontent-length: 3\r\nx-request-id: n\r\n", b""))
    assert wire.take() == problem_response(
        wire, problems.BODY_TOO_LARGE, b"n", instance=b"/r/p", close=True
    )
    assert wire.closed()


# --- pipelining and connection management -----------------------------------------------------


def test_pipelined_requests_are_answered_one_at_a_time_in_order(
    loop: asyncio.AbstractEventLoop,
) -> None:
    wire = Wire(loop)
    wire.feed(
        b"GET /p/1 HTTP/1.1\r\nhost: x\r\nx-request-id: one\r\n\r\n"
        + post(b"content-length: 5\r\nx-request-id: two\r\n", b"hello", b"/p/2")
        + b"GET /p/3 HTTP/1.1\r\nhost: x\r\nx-request-id: three\r\n\r\n"
    )
    # Only the first is handed over; reading pauses while the others wait.
    assert [call.exchange.path for call in wire.calls] == [b"/p/1"]
    assert not wire.reading()
    wire.calls[0].ok(b"1")
    assert [call.exchange.path for call in wire.calls] == [b"/p/1", b"/p/2"]
    assert wire.calls[1].body == b"hello"
    assert wire.calls[1].ended
    wire.calls[1].ok(b"2")
    wire.calls[2].ok(b"3")
    assert not wire.closed()
    assert wire.reading()
    expected = [
        gateway_response(wire, 200, body, b"text/plain", rid, close=False)
        for body, rid in ((b"1", b"one"), (b"2", b"two"), (b"3", b"three"))
    ]
    assert wire.take() == b"".join(expected)
    # Still open for more.
    wire.feed(b"GET /p/4 HTTP/1.1\r\nhost: x\r\n\r\n")
    assert wire.calls[3].exchange.path == b"/p/4"


def test_nothing_behind_connection_close_is_answered(loop: asyncio.AbstractEventLoop) -> None:
    wire = Wire(loop, auto=True).feed(
        b"GET /r/1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-request-id: c\r\n\r\n"
        b"GET /r/2 HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    assert [call.exchange.path for call in wire.calls] == [b"/r/1"]
    assert wire.take() == ok(wire, b"c", close=True)
    assert wire.closed()


@pytest.mark.parametrize(
    ("head", "close"),
    [
        (b"GET /r HTTP/1.0\r\nhost: x\r\n", True),
        (b"GET /r HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n", False),
        (b"GET /r HTTP/1.1\r\nhost: x\r\nconnection: Close\r\n", True),
        (b"GET /r HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\n", False),
    ],
)
def test_keep_alive_follows_the_version_and_connection_header(
    loop: asyncio.AbstractEventLoop, head: bytes, close: bool
) -> None:
    wire = Wire(loop, auto=True).feed(head + b"x-request-id: k\r\n\r\n")
    assert wire.take() == ok(wire, b"k", close=close)
    assert wire.closed() == close


def test_a_broken_request_behind_others_is_answered_after_them(
    loop: asyncio.AbstractEventLoop,
) -> None:
    wire = Wire(loop)
    wire.feed(
        b"GET /r/1 HTTP/1.1\r\nhost: x\r\nx-request-id: one\r\n\r\n"
        + post(b"content-length: 3\r\nx-request-id: two\r\n", b"abc", b"/r/2")
        + post(b"content-length: 3\r\ncontent-length: 4\r\n", b"abcd")
    )
    assert wire.take() == b""  # the refusal waits its turn
    wire.calls[0].ok()
    wire.calls[1].ok()
    written = wire.take()
    answered = ok(wire, b"one") + ok(wire, b"two")
    assert written.startswith(answered)
    refusal = written.removeprefix(answered)
    assert refusal == problem_response(wire, problems.BAD_REQUEST, generated_id(refusal))
    assert len(wire.calls) == 2
    assert wire.closed()


def test_a_body_crossing_the_limit_while_waiting_is_refused_in_its_turn(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """(Moved here from test_streaming.py.) The refused body is read to its end, so the
    connection stays in step for the request after it."""
    wire = Wire(loop, max_body_bytes=100)
    wire.feed(
        b"GET /first HTTP/1.1\r\nhost: x\r\nx-request-id: 1\r\n\r\n"
        b"POST /second HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nx-request-id: 2\r\n\r\n"
        b"c8\r\n" + b"z" * 200 + b"\r\n0\r\n\r\n"
        b"GET /third HTTP/1.1\r\nhost: x\r\nx-request-id: 3\r\n\r\n"
    )
    assert [call.exchange.path for call in wire.calls] == [b"/first"]
    wire.calls[0].ok()
    # The second never reaches the handler: refused in its turn, then the third is handed over.
    assert [call.exchange.path for call in wire.calls] == [b"/first", b"/third"]
    wire.calls[1].ok()
    assert wire.take() == (
        ok(wire, b"1")
        + problem_response(wire, problems.BODY_TOO_LARGE, b"2", instance=b"/second", close=False)
        + ok(wire, b"3")
    )
    assert not wire.closed()


def test_an_upgrade_without_a_body_is_answered_as_plain_http_and_parsing_goes_on(
    loop: asyncio.AbstractEventLoop,
) -> None:
    wire = Wire(loop, auto=True).feed(
        b"GET /r/u HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
        b"x-request-id: u\r\n\r\nGET /r/after HTTP/1.1\r\nhost: x\r\nx-request-id: a\r\n\r\n"
    )
    assert [call.exchange.path for call in wire.calls] == [b"/r/u", b"/r/after"]
    assert wire.take() == ok(wire, b"u") + ok(wire, b"a")


def test_leading_empty_lines_before_a_request_are_skipped(loop: asyncio.AbstractEventLoop) -> None:
    wire = Wire(loop, auto=True).feed(b"\r\n\r\nGET /r/x HTTP/1.1\r\nhost: x\r\n\r\n")
    assert [call.exchange.path for call in wire.calls] == [b"/r/x"]


def test_an_upstream_that_cannot_take_the_body_pauses_reading_from_the_client(
    loop: asyncio.AbstractEventLoop,
) -> None:
    wire = Wire(loop).feed(post(b"content-length: 10\r\n", b"abc"))
    (call,) = wire.calls
    call.exchange.pause_body()
    assert not wire.reading()
    call.exchange.resume_body()
    assert wire.reading()
    wire.feed(b"defghij")
    assert call.ended


# --- timers -----------------------------------------------------------------------------------


def test_an_idle_keep_alive_connection_closes_after_its_timeout(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """(Moved here from test_lifecycle.py, which keeps the sweep's timer end to end.)"""
    wire = Wire(loop, auto=True, keep_alive=2.0, header_timeout=30.0)
    wire.feed(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
    idle_since = wire.conn.last_activity
    wire.conn.sweep(idle_since + 1.9)
    assert not wire.closed()
    wire.conn.sweep(idle_since + 2.1)
    assert wire.closed()


def test_a_connection_that_never_sends_a_request_gets_the_head_timeout(
    loop: asyncio.AbstractEventLoop,
) -> None:
    wire = Wire(loop, keep_alive=60.0, header_timeout=1.0)
    opened = wire.conn.last_activity
    wire.conn.sweep(opened + 0.9)
    assert not wire.closed()
    wire.conn.sweep(opened + 1.1)
    assert wire.closed()
    assert wire.take() == b""


def test_a_head_that_never_completes_gets_a_408(loop: asyncio.AbstractEventLoop) -> None:
    wire = Wire(loop, keep_alive=60.0, header_timeout=1.0)
    wire.feed(b"GET /x HTTP/1.1\r\nhost: x\r\nx-slow: ")
    began = wire.conn.last_activity
    wire.conn.sweep(began + 0.9)
    assert wire.take() == b""
    wire.conn.sweep(began + 1.1)
    wire.settle()
    assert wire.calls == []
    written = wire.take()
    assert written == problem_response(wire, problems.REQUEST_TIMEOUT, generated_id(written))
    assert wire.closed()


def test_a_slow_body_is_not_timed_by_the_server(loop: asyncio.AbstractEventLoop) -> None:
    wire = Wire(loop, keep_alive=1.0, header_timeout=1.0)
    wire.feed(post(b"content-length: 10\r\n", b"abc"))
    wire.conn.sweep(wire.conn.last_activity + 100)
    assert not wire.closed()
    assert wire.take() == b""
    wire.feed(b"defghij")
    assert wire.calls[0].ended
