"""The router compiled from route specs: matching, precedence, parameters, conflicts."""

from __future__ import annotations

import pytest

from mosaic_gateway.routing.router import (
    RouteConflictError,
    RouteEntry,
    Router,
    TemplateError,
    params_dict,
    parse_template,
)


def build(*routes: tuple[str, list[str], str]) -> Router[str]:
    return Router.compile(
        RouteEntry(parse_template(path), methods, target) for path, methods, target in routes
    )


def target(router: Router[str], path: str, method: str = "GET") -> str | None:
    found = router.match(path.encode())
    if found is None:
        return None
    return found[0].by_method.get(method.encode())


def test_static_param_and_wildcard_precedence() -> None:
    router = build(
        ("/v1/blogs/by-slug", ["GET"], "static"),
        ("/v1/blogs/{id}", ["GET"], "param"),
        ("/v1/blogs/*", ["GET"], "wildcard"),
        ("/v1/blogs/{id}/similar", ["GET"], "similar"),
    )
    assert target(router, "/v1/blogs/by-slug") == "static"
    assert target(router, "/v1/blogs/42") == "param"
    assert target(router, "/v1/blogs/42/similar") == "similar"
    # Deeper than any template: only the wildcard takes it.
    assert target(router, "/v1/blogs/42/other") == "wildcard"
    assert target(router, "/v1/blogs/42/similar/x") == "wildcard"


def test_backtracks_from_a_literal_branch_to_a_parameter() -> None:
    router = build(("/a/b/c", ["GET"], "literal"), ("/a/{x}/d", ["GET"], "param"))
    # "b" matches the literal branch first, which has no "/d": the parameter branch must win.
    assert target(router, "/a/b/d") == "param"
    found = router.match(b"/a/b/d")
    assert found is not None
    assert params_dict(found[0], found[1]) == {"x": "b"}


def test_parameters_are_extracted_raw_and_by_name() -> None:
    router = build(("/v1/users/{user}/blogs/{blog}", ["GET"], "t"))
    found = router.match(b"/v1/users/u%201/blogs/b-2")
    assert found is not None
    assert params_dict(found[0], found[1]) == {"user": "u%201", "blog": "b-2"}


def test_a_parameter_needs_a_non_empty_segment() -> None:
    router = build(("/v1/blogs/{id}", ["GET"], "param"))
    assert target(router, "/v1/blogs/") is None
    assert target(router, "/v1/blogs") is None
    assert target(router, "/v1/blogs/1/") is None


def test_wildcard_matches_its_prefix_and_everything_under_it() -> None:
    router = build(("/static/*", ["GET"], "files"))
    for path in ("/static", "/static/", "/static/a", "/static/a/b/c.css"):
        assert target(router, path) == "files", path
    assert target(router, "/staticx") is None
    found = router.match(b"/static/a/b")
    assert found is not None
    assert params_dict(found[0], found[1]) == {"*": "a/b"}


def test_root_wildcard_catches_all_but_more_specific_routes_win() -> None:
    router = build(("/*", ["GET"], "all"), ("/v1/health", ["GET"], "health"))
    assert target(router, "/") == "all"
    assert target(router, "/anything/at/all") == "all"
    assert target(router, "/v1/health") == "health"


def test_method_is_checked_after_the_path_with_an_allow_list() -> None:
    router = build(("/v1/users/me", ["GET", "PATCH"], "me"), ("/v1/users/{id}", ["GET"], "user"))
    found = router.match(b"/v1/users/me")
    assert found is not None
    entry = found[0]
    assert entry.by_method.get(b"DELETE") is None
    assert entry.allow == b"GET, HEAD, PATCH"
    # The literal path decides even though a parameter route exists for other ids.
    assert target(router, "/v1/users/me", "DELETE") is None
    assert target(router, "/v1/users/7", "GET") == "user"


def test_head_follows_get_unless_routed_apart() -> None:
    router = build(("/a", ["GET"], "get"), ("/b", ["GET"], "get-b"), ("/b", ["HEAD"], "head-b"))
    assert target(router, "/a", "HEAD") == "get"
    assert target(router, "/b", "HEAD") == "head-b"


def test_same_path_split_across_routes_by_method() -> None:
    router = build(("/v1/x/{id}", ["GET"], "read"), ("/v1/x/{id}", ["DELETE"], "delete"))
    assert target(router, "/v1/x/1", "GET") == "read"
    assert target(router, "/v1/x/1", "DELETE") == "delete"


def test_duplicate_method_on_a_path_is_a_conflict_naming_the_route() -> None:
    with pytest.raises(RouteConflictError) as caught:
        build(
            ("/a/{id}", ["GET"], "one"),
            ("/b", ["GET"], "two"),
            ("/a/{id}", ["POST", "GET"], "three"),
        )
    assert caught.value.index == 2


def test_same_shape_with_other_parameter_names_is_a_conflict() -> None:
    with pytest.raises(RouteConflictError) as caught:
        build(("/a/{id}", ["GET"], "one"), ("/a/{slug}", ["POST"], "two"))
    assert caught.value.index == 1


def test_unknown_paths_do_not_match() -> None:
    router = build(("/v1/blogs", ["GET"], "list"), ("/v1/blogs/{id}", ["GET"], "one"))
    assert router.match(b"/v2/blogs") is None
    assert router.match(b"/v1/blogs/1/2") is None
    assert router.match(b"") is None


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("v1/blogs", "starts with '/'"),
        ("/v1/{id}x", "whole segment"),
        ("/v1/*/x", "last segment"),
        ("/v1/{id}/{id}", "appears twice"),
        ("/v1//x", "empty segment"),
        ("/v1/../x", "dot segments"),
        ("/v1?x=1", "no query"),
        ("/v1/{1x}", "whole segment"),
    ],
)
def test_bad_templates_are_rejected_with_a_reason(template: str, reason: str) -> None:
    with pytest.raises(TemplateError, match=reason.replace("*", r"\*").replace("?", r"\?")):
        parse_template(template)


def test_literal_prefix_of_a_template() -> None:
    assert parse_template("/v1/blogs/{id}/similar").literal_prefix() == "/v1/blogs"
    assert parse_template("/v1/blogs").literal_prefix() == "/v1/blogs"
    assert parse_template("/{id}").literal_prefix() == ""
