"""The OpenAPI documents list every error an operation can answer, as problem+json.

Two layers, both built offline (no process started):

* each service's own document: what its code raises. The statuses a route must declare are
  read from the code itself: its dependencies (a bearer token: 401; roles: 403; an
  Idempotency-Key: 409/422), its parameters (a path id: 404 and 422; a cursor: 400), its body
  (400/413/422), and the problem codes raised by the functions it calls (found in the service's
  source, e.g. `conflict("auth.email_taken", ...)` -> 409 `auth.email_taken`);
* the gateway's merged document (`mosaic up`'s configuration): what the gateway answers itself
  on each route, from the route's policy (API key, token, roles, rate limit, body limit,
  upstream failures).
"""

from __future__ import annotations

import ast
import inspect
import pprint
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from mosaic_blog.app import create_blog_app
from mosaic_blog.settings import BlogSettings
from mosaic_devstack.gateway_config import GatewaySettings, gateway_config, render
from mosaic_devstack.services import SERVICES as REGISTRY
from mosaic_devstack.services import Service
from mosaic_gateway.config import parse_config
from mosaic_gateway.handlers.docs import Merger
from mosaic_kit import pagination
from mosaic_kit.fastapi import auth, idempotency
from mosaic_kit.openapi import (
    BODY_PROBLEMS,
    CURSOR_PROBLEMS,
    IDEMPOTENCY_PROBLEMS,
    PROBLEM_CONTENT_TYPE,
    PROBLEM_REF,
    PROBLEM_SCHEMA,
    TOKEN_PROBLEMS,
    UNAVAILABLE_PROBLEMS,
    problem_codes,
)

Json = dict[str, Any]
Expected = dict[int, set[str]]

# Raised by a function the route calls, but on a path the route never takes.
NOT_REACHED: dict[str, Expected] = {
    # set_disabled refuses an admin disabling themselves; enabling passes no acting admin.
    "POST /v1/users/{user_id}/enable": {409: {"auth.self_lockout"}},
    # BlogService._read's not-found is for one blog: a list's loader always has an answer.
    "GET /v1/blogs": {404: {"blog.not_found"}},
}


def _app_factory(service: Service) -> Callable[[], FastAPI]:
    definition = service.load_definition()
    return lambda: definition.app(definition.settings())


REGISTRY_BY_NAME = {s.name: s for s in REGISTRY}
# Every service of the registry: a generated one is held to the same contract without an edit here.
SERVICES: dict[str, Callable[[], FastAPI]] = {s.name: _app_factory(s) for s in REGISTRY}
# The kit's problem helpers (mosaic_kit.problem) and the status each one answers.
HELPER_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
}


def operations(document: Json) -> Iterator[tuple[str, str, Json]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


# The OAuth endpoints (auth's `oauth_api`) answer their own errors in RFC 6749 §5.2 form, what
# OAuth client libraries read, beside the problems the kit and the gateway answer there.
OAUTH_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/OAuthErrorBody"}}}


def documented(operation: Json) -> Expected:
    """status -> codes, for the problem responses; fails on a problem without the schema (or an
    error body that is neither a problem nor an OAuth error)."""
    out: Expected = {}
    for status, response in operation["responses"].items():
        if int(status) < 400:
            continue
        content = dict(response.get("content", {}))
        if content.get("application/json") == OAUTH_ERROR["application/json"]:
            del content["application/json"]
            if not content:  # an OAuth error alone
                out[int(status)] = set()
                continue
        assert content == {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": PROBLEM_REF}}}, (
            status,
            response,
        )
        out[int(status)] = set(problem_codes(response))
    return out


def missing(expected: Expected, found: Expected) -> dict[int, set[str]]:
    gaps = {}
    for status, codes in expected.items():
        if status not in found:
            gaps[status] = codes or {"(the status itself)"}
        elif codes - found[status]:
            gaps[status] = codes - found[status]
    return gaps


def add(expected: Expected, problems: Any) -> None:
    for status, codes in problems.items():
        expected.setdefault(status, set()).update(codes)


# --- what a service's code raises ---------------------------------------------------------------


class RaisedProblems:
    """Problem codes raised by the functions of some modules, followed through calls by name.

    Calls are resolved by name: `store.get_user(...)` to `get_user` of the module `store`,
    `helper(...)` to the calling module's own `helper` if it has one, any other call
    (`svc.signup(...)`) to every function of that name. That may
    over-approximate (see `NOT_REACHED`) but never misses a function of these modules.
    """

    def __init__(self, modules: list[Any]) -> None:
        # (module's last name, function name) -> definitions
        self.functions: dict[tuple[str, str], list[ast.AST]] = {}
        self.modules: set[str] = set()
        for module in modules:
            short = module.__name__.rpartition(".")[2]
            self.modules.add(short)
            tree = ast.parse(Path(inspect.getfile(module)).read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    self.functions.setdefault((short, node.name), []).append(node)
        self._memo: dict[tuple[str | None, str], Expected] = {}

    def of(self, function: Callable[..., Any]) -> Expected:
        name = getattr(function, "__name__", None)  # a dependency may be an object (HTTPBearer)
        return self._raised(None, name, set()) if name else {}

    def _raised(self, module: str | None, name: str, seen: set[tuple[str | None, str]]) -> Expected:
        key = (module, name)
        if key in self._memo:
            return self._memo[key]
        seen.add(key)
        out: Expected = {}
        nodes = [
            (where, node)
            for (where, function), found in self.functions.items()
            if function == name and module in (None, where)
            for node in found
        ]
        for where, node in nodes:
            for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
                add(out, _problem_of(call))
                called = self._target(call, where)
                if called is not None and called not in seen:
                    add(out, self._raised(*called, seen))
        self._memo[key] = out
        return out

    def _target(self, call: ast.Call, module: str) -> tuple[str | None, str] | None:
        func = call.func
        if isinstance(func, ast.Name):  # the module's own function if it has one
            return (module if (module, func.id) in self.functions else None), func.id
        if isinstance(func, ast.Attribute):
            owner = func.value
            if isinstance(owner, ast.Name) and owner.id in self.modules:
                return owner.id, func.attr
            return None, func.attr
        return None


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)


def _literal(node: ast.AST | None) -> Any:
    return node.value if isinstance(node, ast.Constant) else None


def _problem_of(call: ast.Call) -> Expected:
    name = _called_name(call)
    args = [*call.args, *(k.value for k in call.keywords if k.arg in ("status", "code"))]
    if name == "Problem" and len(args) >= 2:
        status, code = _literal(args[0]), _literal(args[1])
        if isinstance(status, int) and isinstance(code, str):
            return {status: {code}}
    if name in HELPER_STATUS and args and isinstance(_literal(args[0]), str):
        return {HELPER_STATUS[name]: {_literal(args[0])}}
    return {}


def api_routes(app: FastAPI) -> list[APIRoute]:
    """The app's routes as served (with their routers' prefixes and dependencies)."""
    return [c.route for c in iter_route_contexts(app.routes) if isinstance(c.route, APIRoute)]


def dependencies(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from dependencies(sub)


def expected_of_route(route: APIRoute, raised: RaisedProblems) -> Expected:
    expected: Expected = {}
    add(expected, UNAVAILABLE_PROBLEMS)  # every route reads the database
    calls = list(dependencies(route.dependant))
    if auth.current_principal in calls:
        add(expected, TOKEN_PROBLEMS)
    if any(isinstance(call, auth.RequireRoles) for call in calls):
        add(expected, {403: {"auth.forbidden"}})
    if idempotency.idempotency in calls:
        add(expected, IDEMPOTENCY_PROBLEMS)
    if route.dependant.path_params:
        add(expected, {404: set(), 422: {"validation_failed"}})
    if route.dependant.query_params or route.dependant.header_params:
        add(expected, {422: {"validation_failed"}})
    if any(param.name == "cursor" for param in route.dependant.query_params):
        add(expected, CURSOR_PROBLEMS)
    if route.dependant.body_params:
        add(expected, {**BODY_PROBLEMS, 422: {"validation_failed"}})
    for call in [route.endpoint, *calls]:
        add(expected, raised.of(call))
    return expected


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_operation_of_a_service_documents_what_its_code_raises(service: str) -> None:
    app = SERVICES[service]()
    document = app.openapi()
    assert document["components"]["schemas"]["Problem"] == PROBLEM_SCHEMA
    package = sys.modules[REGISTRY_BY_NAME[service].load_definition().package]
    modules = [
        sys.modules[name]
        for name in sorted(sys.modules)
        if name.startswith(package.__name__ + ".") and hasattr(sys.modules[name], "__file__")
    ]
    raised = RaisedProblems([*modules, pagination])
    gaps = {}
    routes = [route for route in api_routes(app) if route.path.startswith("/v1/")]
    assert routes
    for route in routes:
        for method in route.methods:
            operation = document["paths"][route.path][method.lower()]
            found = documented(operation)
            label = f"{method} {route.path}"
            for status, response in operation["responses"].items():
                for media, content in response.get("content", {}).items():
                    if int(status) < 400 and media == "application/json":
                        # The answer's shape is documented, so the fuzzing checks real bodies.
                        assert set(content["schema"]) == {"$ref"}, (label, status, content)
            expected = expected_of_route(route, raised)
            for status, codes in NOT_REACHED.get(label, {}).items():
                expected[status] -= codes
                if not expected[status]:
                    del expected[status]
            gap = missing(expected, found)
            if gap:
                gaps[label] = gap
    if gaps:
        pytest.fail("raised but not declared in the OpenAPI:\n" + pprint.pformat(gaps))


def test_the_code_reading_finds_the_business_errors() -> None:
    """The reading of the source is what the other test relies on: it must see these."""
    app = create_blog_app(BlogSettings())
    raised = RaisedProblems(
        [m for n, m in sorted(sys.modules.items()) if n.startswith("mosaic_blog.")]
    )
    by_path = {(method, r.path): r for r in api_routes(app) for method in r.methods}
    submit = expected_of_route(by_path[("POST", "/v1/author/blogs/{blog_id}/submit")], raised)
    assert submit[409] == {"blog.bad_state"}
    assert submit[404] == {"blog.not_found"}
    assert submit[403] == {"auth.forbidden"}
    create = expected_of_route(by_path[("POST", "/v1/author/blogs")], raised)
    assert create[409] == {"blog.slug_taken", "idempotency.in_progress"}


# --- the gateway's merged document ---------------------------------------------------------------


def merged_document() -> tuple[Json, Any]:
    settings = GatewaySettings(
        listen="127.0.0.1", port=8080, admin_port=8081, workers=1, nats_url="nats://127.0.0.1:4222"
    )
    documents = {name: app().openapi() for name, app in SERVICES.items()}
    config = parse_config(
        render(gateway_config(settings, documents), "gateway.yaml"), "gateway.yaml"
    )
    assert config.docs is not None
    merger = Merger(config, config.docs)
    return merger.merge(documents), config


def test_the_merged_document_documents_what_the_gateway_answers_per_route() -> None:
    document, config = merged_document()
    assert document["components"]["schemas"]["Problem"] == PROBLEM_SCHEMA
    # The generated routes say the services' own paths (`/v1/users/{user_id}`).
    by_route = {(route.path, method): route for route in config.routes for method in route.methods}
    defaults = config.defaults.auth
    seen = set()
    gaps = {}
    for path, method, operation in operations(document):
        route = by_route[(path, method.upper())]
        seen.add((path, method.upper()))
        auth = route.auth
        api_key = (auth.api_key if auth and auth.api_key else None) or defaults.api_key
        jwt = (auth.jwt if auth and auth.jwt else None) or defaults.jwt
        roles = auth.roles if auth else None
        expected: Expected = {
            400: {"gateway.bad_request", "gateway.bad_path"},
            502: {"gateway.bad_gateway"},
            503: {"gateway.unavailable", "gateway.circuit_open"},
            504: {"gateway.timeout"},
            413: {"gateway.body_too_large"},
        }
        if api_key == "required":
            add(
                expected,
                {
                    401: {"auth.apikey_missing"},
                    403: {"auth.apikey_invalid"},
                    503: {"gateway.apikey_unavailable"},
                },
            )
        if jwt == "required" or roles:
            add(expected, TOKEN_PROBLEMS)
        if roles:
            add(expected, {403: {"auth.forbidden"}})
        if route.rate_limit is not None or config.defaults.rate_limit is not None:
            add(expected, {429: {"gateway.rate_limited"}})
        # The service's own answers are still there, beside the gateway's.
        if "{" in path:
            add(expected, {404: set()})
        gap = missing(expected, documented(operation))
        if gap:
            gaps[f"{method.upper()} {path}"] = gap
    if gaps:
        pytest.fail("answered by the gateway but not declared:\n" + pprint.pformat(gaps))
    # Every routed operation of the public API is in the document.
    assert seen == {key for key in by_route if key[1] != "HEAD"}
