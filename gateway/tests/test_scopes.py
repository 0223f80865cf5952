"""The pieces of client-application access that need no process: the scope rule, the `auth.scopes`
and `rate_limit.by: client` configuration, the client's identity headers, and the bounded
`client` label of the request counter."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from mosaic_gateway.config import ConfigError, parse_config
from mosaic_gateway.filters.headers import HeaderPolicy, identity_spellings
from mosaic_gateway.filters.jwt import is_client_token
from mosaic_gateway.filters.pipeline import identity_header_names
from mosaic_gateway.filters.scopes import ScopeRule
from mosaic_gateway.observe.metrics import Metrics
from mosaic_kit.tokens import ClientPrincipal, Principal

GRANTED = frozenset({"blogs:read", "recommendations:read"})


def client(scopes: frozenset[str] = GRANTED) -> ClientPrincipal:
    return ClientPrincipal(
        client_id="cl_1", scopes=scopes, token_id="j-1", issued_at=1, expires_at=901
    )


# --- the rule ---------------------------------------------------------------------------------


def test_any_of_admits_one_shared_scope_all_of_needs_every_one() -> None:
    any_of = ScopeRule("any_of", ["blogs:read", "blogs:write"])
    assert any_of.admits(frozenset({"blogs:read"}))
    assert any_of.admits(frozenset({"blogs:write", "x:y"}))
    assert not any_of.admits(frozenset({"recommendations:read"}))
    assert not any_of.admits(frozenset())
    all_of = ScopeRule("all_of", ["blogs:read", "recommendations:read"])
    assert all_of.admits(GRANTED)
    assert all_of.admits(GRANTED | {"blogs:write"})
    assert not all_of.admits(frozenset({"blogs:read"}))
    assert not all_of.admits(frozenset())


def test_the_refusal_names_what_is_needed() -> None:
    problem = ScopeRule("all_of", ["recommendations:read", "blogs:read"]).problem
    assert (problem.status, problem.code) == (403, "auth.scope_missing")
    assert problem.detail == "This requires all of the scopes: blogs:read recommendations:read"
    assert "one of" in ScopeRule("any_of", ["blogs:read"]).problem.detail
    with pytest.raises(ValueError, match="at least one"):
        ScopeRule("any_of", [])


# --- configuration ----------------------------------------------------------------------------

ROUTE = "  - path: /x\n    methods: [GET]\n    backend: a\n"
HEAD = "nats: {url: nats://127.0.0.1:4222}\nbackends: {a: {instances: [http://127.0.0.1:1]}}\n"


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gw.yaml")
    return [str(issue) for issue in caught.value.issues]


def test_scopes_are_checked_with_their_place_in_the_file() -> None:
    both = issues(
        HEAD + "routes:\n" + ROUTE + "    auth: {scopes: {any_of: [a:b], all_of: [c:d]}}\n"
    )
    assert both == ["gw.yaml:7:12: routes[0].auth.scopes: give exactly one of `any_of` or `all_of`"]
    neither = issues(HEAD + "routes:\n" + ROUTE + "    auth: {scopes: {}}\n")
    assert "exactly one" in neither[0]
    empty = issues(HEAD + "routes:\n" + ROUTE + "    auth: {scopes: {all_of: []}}\n")
    assert empty[0].startswith("gw.yaml:7:")
    assert "routes[0].auth.scopes.all_of: list at least one scope" in empty[0]
    for bad in ("Blogs:read", "blogs", "blogs:read:all", "blogs read", "blogs_x:read"):
        found = issues(
            HEAD + "routes:\n" + ROUTE + f"    auth: {{scopes: {{any_of: ['{bad}']}}}}\n"
        )
        assert "is not a scope name" in found[0], bad
    twice = issues(HEAD + "routes:\n" + ROUTE + "    auth: {scopes: {any_of: [a:b, a:b]}}\n")
    assert "listed twice" in twice[0]
    misspelt = issues(HEAD + "routes:\n" + ROUTE + "    auth: {scopes: {anyof: [a:b]}}\n")
    assert any("anyof" in issue for issue in misspelt)


def test_scopes_in_defaults_client_rate_limits_and_nats_needed() -> None:
    config = parse_config(
        HEAD
        + "defaults: {auth: {scopes: {all_of: [blogs:read]}}}\n"
        + "routes:\n"
        + ROUTE
        + "    rate_limit: {requests: 5, per: 1m, by: client}\n",
        "gw.yaml",
    )
    assert config.defaults.auth is not None
    assert config.defaults.auth.scopes is not None
    assert config.defaults.auth.scopes.rule == ("all_of", ("blogs:read",))
    assert config.routes[0].rate_limit is not None
    assert config.routes[0].rate_limit.by == "client"
    without_nats = issues(
        "backends: {a: {instances: [http://127.0.0.1:1]}}\nroutes:\n"
        + ROUTE
        + "    auth: {scopes: {any_of: [blogs:read]}}\n"
    )
    assert any("routes[0].auth.scopes" in issue and "nats" in issue for issue in without_nats)


# --- identity headers -------------------------------------------------------------------------


def test_a_client_is_forwarded_as_x_client_id_and_x_client_scopes() -> None:
    policy = HeaderPolicy()
    caller = client()
    assert policy.identity_headers(None, None, caller) == (
        (b"x-client-id", b"cl_1"),
        (b"x-client-scopes", b"blogs:read recommendations:read"),
    )
    assert policy.identity_headers(None, None, caller) is policy.identity_headers(
        None, None, caller
    )
    # A user's token never yields client headers, nor a client's user headers.
    user = Principal("u-1", frozenset({"AUTHOR"}), "s-1", 1, 901)
    assert policy.identity_headers(user) == ((b"x-user-id", b"u-1"), (b"x-user-roles", b"AUTHOR"))
    custom = HeaderPolicy(forward_claims={"sub": "x-user-id", "client_id": "x-app", "iat": "x-iat"})
    assert custom.identity_headers(None, None, caller) == ((b"x-app", b"cl_1"), (b"x-iat", b"1"))


def test_client_identity_headers_are_stripped_in_every_spelling() -> None:
    config = parse_config(HEAD + "routes:\n" + ROUTE, "gw.yaml")
    names = identity_header_names(config)
    assert {"x-client-id", "x-client-scopes"} <= set(names)
    spelled = identity_spellings(names)
    assert {b"x-client-id", b"x_client_id", b"x-client_scopes"} <= spelled
    kept = HeaderPolicy(allow=["*"]).filter_request(
        [(b"x-client-id", b"cl_admin"), (b"x_client_scopes", b"blogs:write"), (b"accept", b"*/*")]
    )
    assert kept == [(b"accept", b"*/*")]


def test_a_client_token_is_recognised_by_its_type_only_to_word_a_refusal() -> None:
    header = orjson.dumps({"alg": "EdDSA", "typ": "at+jwt", "kid": "k"})
    segment = base64.urlsafe_b64encode(header).rstrip(b"=")
    assert is_client_token(b"Bearer " + segment + b".e30.sig")
    assert is_client_token(b"bearer " + segment + b".e30.sig")
    user = base64.urlsafe_b64encode(orjson.dumps({"alg": "EdDSA", "kid": "k"})).rstrip(b"=")
    assert not is_client_token(b"Bearer " + user + b".e30.sig")
    for junk in (b"Basic " + segment, b"Bearer ", b"Bearer !!!.x.y", b"Bearer bnVsbA.x.y"):
        assert not is_client_token(junk)


# --- the bounded client label -----------------------------------------------------------------


def _client_labels(metrics: Metrics) -> dict[str, int]:
    counts: dict[str, int] = {}
    for (*_, label), value in metrics.requests.items():
        counts[label] = counts.get(label, 0) + value
    return counts


def test_the_first_clients_are_labels_of_their_own_later_ones_other(tmp_path: Path) -> None:
    metrics = Metrics((0.1,), max_clients=2, directory=str(tmp_path))
    for client_id in ("cl_a", "cl_b", "cl_c", "cl_a", "cl_d", None, "other"):
        metrics.record("/r", "b", "GET", 200, 0.01, 10, None, client_id)
    assert _client_labels(metrics) == {"cl_a": 2, "cl_b": 1, "other": 3, "": 1}
    text = metrics.render().decode()
    assert 'client="cl_a"' in text
    assert 'client="cl_c"' not in text
    # A worker replacing this one keeps the same labels: its ids are not spent again.
    metrics.dump()
    successor = Metrics((0.1,), max_clients=2, directory=str(tmp_path))
    successor.record("/r", "b", "GET", 200, 0.01, 10, None, "cl_e")
    successor.record("/r", "b", "GET", 200, 0.01, 10, None, "cl_b")
    assert _client_labels(successor) == {"cl_a": 2, "cl_b": 2, "other": 4, "": 1}


def test_no_client_label_values_when_the_bound_is_zero() -> None:
    metrics = Metrics((0.1,), max_clients=0)
    metrics.record("/r", "b", "GET", 200, 0.01, 10, None, "cl_a")
    assert _client_labels(metrics) == {"other": 1}
