"""Header, query-string and CORS policies on the server's header representation."""

from __future__ import annotations

import asyncio

import pytest
from wire_support import Wire

from mosaic_gateway.filters.apikeys import ApiKeyIdentity
from mosaic_gateway.filters.caller import API_KEY, USER
from mosaic_gateway.filters.headers import (
    CorsPolicy,
    HeaderPolicy,
    QueryPolicy,
    cors_request,
    strip_hop_by_hop,
)
from mosaic_gateway.filters.upstream_headers import HeaderFilter
from mosaic_kit.tokens import Principal

Headers = list[tuple[bytes, bytes]]


def principal(**overrides: object) -> Principal:
    fields: dict[str, object] = {
        "user_id": "5f0c7e4e-1111-4c1c-9d0e-000000000001",
        "roles": frozenset({"LEARNER", "AUTHOR"}),
        "session_id": "sess-1",
        "issued_at": 1_700_000_000,
        "expires_at": 1_700_000_900,
    }
    fields.update(overrides)
    return Principal(**fields)  # type: ignore[arg-type]


CLIENT_HEADERS: Headers = [
    (b"host", b"api.example.com"),
    (b"accept", b"application/json"),
    (b"x-user-id", b"admin"),
    (b"X-User-Roles".lower(), b"ADMIN"),
    (b"content-type", b"application/json"),
    (b"connection", b"keep-alive, x-secret-hop"),
    (b"x-secret-hop", b"1"),
    (b"keep-alive", b"timeout=5"),
    (b"transfer-encoding", b"chunked"),
    (b"authorization", b"Bearer abc"),
    (b"cookie", b"a=1"),
    (b"x-trace-me", b"yes"),
    (b"accept", b"text/html"),
    (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
]


def names(headers: Headers) -> list[bytes]:
    return [name for name, _ in headers]


def test_allow_list_denies_by_default() -> None:
    policy = HeaderPolicy(allow=["Accept", "authorization"])
    kept = policy.filter_request(CLIENT_HEADERS)
    assert names(kept) == [
        b"host",
        b"accept",
        b"content-type",
        b"authorization",
        b"accept",
        b"traceparent",
    ]
    # Duplicates keep their values and order.
    assert [v for n, v in kept if n == b"accept"] == [b"application/json", b"text/html"]


def test_empty_allow_list_keeps_only_what_the_data_path_needs() -> None:
    kept = HeaderPolicy().filter_request(CLIENT_HEADERS)
    assert names(kept) == [b"host", b"content-type", b"traceparent"]


def test_client_identity_headers_are_stripped_even_when_everything_is_allowed() -> None:
    policy = HeaderPolicy(allow=["*"], strip=["x-user-id", "x-user-roles", "X-Tenant"])
    kept = policy.filter_request([*CLIENT_HEADERS, (b"x-tenant", b"evil")])
    assert b"x-user-id" not in names(kept)
    assert b"x-user-roles" not in names(kept)
    assert b"x-tenant" not in names(kept)
    assert b"cookie" in names(kept)
    assert b"x-trace-me" in names(kept)


def test_headers_claims_are_forwarded_as_cannot_be_sent_by_clients() -> None:
    policy = HeaderPolicy(allow=["*"], strip=[], forward_claims={"sid": "X-Session-Id"})
    kept = policy.filter_request([(b"x-session-id", b"forged"), (b"accept", b"*/*")])
    assert kept == [(b"accept", b"*/*")]


def test_hop_by_hop_headers_and_those_named_in_connection_are_removed() -> None:
    kept = HeaderPolicy(allow=["*"]).filter_request(CLIENT_HEADERS)
    for hop in (b"connection", b"keep-alive", b"transfer-encoding", b"x-secret-hop"):
        assert hop not in names(kept)
    response = strip_hop_by_hop(
        [
            (b"Content-Type", b"text/plain"),
            (b"Connection", b"X-Internal"),
            (b"X-Internal", b"1"),
            (b"Transfer-Encoding", b"chunked"),
            (b"ETag", b'"1"'),
        ]
    )
    assert names(response) == [b"Content-Type", b"ETag"]


def test_claims_rendered_as_headers_and_reused_per_principal() -> None:
    policy = HeaderPolicy(
        forward_claims={
            "sub": "X-User-Id",
            "roles": "X-User-Roles",
            "sid": "x-session-id",
            "api_key.id": "x-api-key-id",
        }
    )
    caller = principal()
    key = ApiKeyIdentity("k-1", "mobile app")
    headers = policy.identity_headers(caller, key)
    assert headers == (
        (b"x-user-id", b"5f0c7e4e-1111-4c1c-9d0e-000000000001"),
        (b"x-user-roles", b"AUTHOR,LEARNER"),
        (b"x-session-id", b"sess-1"),
        (b"x-api-key-id", b"k-1"),
    )
    assert policy.identity_headers(caller) is policy.identity_headers(caller)
    assert policy.identity_headers(None, key) == ((b"x-api-key-id", b"k-1"),)
    assert policy.identity_headers(None) == ()


def test_claim_values_that_could_split_headers_are_not_forwarded() -> None:
    policy = HeaderPolicy()
    sneaky = principal(roles=frozenset({"AUTHOR\r\nx-user-id: admin"}))
    assert policy.identity_headers(sneaky) == (
        (b"x-user-id", b"5f0c7e4e-1111-4c1c-9d0e-000000000001"),
    )


def test_policy_configuration_errors() -> None:
    with pytest.raises(ValueError, match="unknown claims"):
        HeaderPolicy(forward_claims={"email": "x-email"})
    with pytest.raises(ValueError, match="header name"):
        HeaderPolicy(allow=["bad header"])


def test_query_allow_list() -> None:
    policy = QueryPolicy(["limit", "cursor", "tag[]"])
    assert policy.filter(None) is None
    query = b"limit=10&cursor=abc"
    assert policy.filter(query) is query, "nothing removed: the same bytes, no copy"
    assert policy.filter(b"limit=10&debug=1&cursor=x&limit=20") == b"limit=10&cursor=x&limit=20"
    assert policy.filter(b"debug=1&admin") is None
    assert policy.filter(b"tag%5B%5D=a&tag[]=b&other%5B%5D=c") == b"tag%5B%5D=a&tag[]=b"
    assert QueryPolicy().filter(b"limit=1") is None, "deny by default"
    everything = b"a=1&b=2"
    assert QueryPolicy(["*"]).filter(everything) is everything


def test_cors_request_reads_the_three_headers() -> None:
    headers: Headers = [
        (b"origin", b"https://app.example.com"),
        (b"access-control-request-method", b"PATCH"),
        (b"access-control-request-headers", b"content-type"),
        (b"access-control-request-headers", b"x-api-key"),
    ]
    assert cors_request(headers) == (
        b"https://app.example.com",
        b"PATCH",
        b"content-type,x-api-key",
    )
    assert cors_request([(b"accept", b"*/*")]) == (None, None, None)


def test_cors_exact_origins() -> None:
    policy = CorsPolicy(
        origins=["https://app.example.com", "http://localhost:5173"],
        methods=["GET", "POST", "PATCH", "DELETE"],
        headers=["Authorization", "x-api-key"],
        expose_headers=["x-request-id"],
        max_age=300,
        credentials=True,
    )
    good = b"https://app.example.com"
    preflight = policy.preflight(good, b"PATCH", b"Authorization, X-Api-Key, Content-Type")
    assert preflight is not None
    answer = dict(preflight)
    assert answer[b"access-control-allow-origin"] == good
    assert answer[b"access-control-allow-credentials"] == b"true"
    assert answer[b"access-control-allow-methods"] == b"DELETE, GET, PATCH, POST"
    assert answer[b"access-control-allow-headers"] == b"authorization, x-api-key, content-type"
    assert answer[b"access-control-max-age"] == b"300"
    assert b"origin" in answer[b"vary"]

    assert policy.preflight(b"https://evil.example.com", b"GET", None) is None
    assert policy.preflight(good, b"PUT", None) is None, "method not allowed"
    assert policy.preflight(good, b"GET", b"x-admin") is None, "header not allowed"

    actual = dict(policy.response_headers(good))
    assert actual == {
        b"access-control-allow-origin": good,
        b"vary": b"origin",
        b"access-control-allow-credentials": b"true",
        b"access-control-expose-headers": b"x-request-id",
    }
    assert policy.response_headers(b"https://APP.example.com")[0][1] == good
    # Another origin gets no grant, but caches are still told the answer depends on Origin.
    assert policy.response_headers(b"https://evil.example.com") == ((b"vary", b"origin"),)
    assert policy.response_headers(None) == ((b"vary", b"origin"),)
    assert policy.response_headers(good) is policy.response_headers(good)


def test_cors_any_origin_and_echoed_lists() -> None:
    policy = CorsPolicy(origins=["*"], methods=["*"], headers=["*"], max_age=None)
    preflight = policy.preflight(b"https://anyone.example", b"PURGE", b"X-Custom")
    assert preflight is not None
    answer = dict(preflight)
    assert answer[b"access-control-allow-origin"] == b"*"
    assert answer[b"access-control-allow-methods"] == b"PURGE"
    assert answer[b"access-control-allow-headers"] == b"x-custom"
    assert b"access-control-max-age" not in answer
    assert b"access-control-allow-credentials" not in answer
    assert policy.response_headers(b"https://anyone.example") == (
        (b"access-control-allow-origin", b"*"),
    )
    assert policy.response_headers(None) == ()


def test_cors_configuration_errors() -> None:
    with pytest.raises(ValueError, match="credentials"):
        CorsPolicy(origins=["*"], credentials=True)
    with pytest.raises(ValueError, match="not an origin"):
        CorsPolicy(origins=["https://app.example.com/"])
    with pytest.raises(ValueError, match="at least one origin"):
        CorsPolicy(origins=[])


def test_the_header_filter_renders_each_callers_identity_and_never_another_ones() -> None:
    # HeaderFilter keeps rendered lines by the caller objects' ids: a new caller (even one made
    # where an earlier one was freed) must get its own lines, the same caller the same bytes.
    loop = asyncio.new_event_loop()
    try:
        wire = Wire(loop).feed(b"GET /r HTTP/1.1\r\nhost: x\r\n\r\n")
        (call,) = wire.calls
        exchange = call.exchange
        header_filter = HeaderFilter(HeaderPolicy(allow=["*"]))

        def rendered_for(user: Principal | None, key: ApiKeyIdentity | None) -> bytes:
            exchange.state = None
            exchange.upstream_headers = b""
            if user is not None:
                exchange.put(USER, user)
            if key is not None:
                exchange.put(API_KEY, key)
            assert header_filter.on_request(exchange) is True
            return exchange.upstream_headers

        first = rendered_for(principal(user_id="user-1"), None)
        assert first == b"x-user-id: user-1\r\nx-user-roles: AUTHOR,LEARNER\r\n"
        for number in range(2, 50):  # freed principals, their ids likely reused
            user = f"user-{number}"
            assert rendered_for(principal(user_id=user), None).startswith(
                b"x-user-id: " + user.encode() + b"\r\n"
            )
        same = principal(user_id="kept")
        assert rendered_for(same, None) is rendered_for(same, None)
        key = ApiKeyIdentity("k-9", "app")
        assert b"x-user-id: kept" in rendered_for(same, key)
        assert rendered_for(None, key) == rendered_for(None, key)
        assert b"x-user-id" not in rendered_for(None, key)
    finally:
        loop.close()
