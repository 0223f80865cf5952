"""The backends' OpenAPI documents, merged into the gateway's own and served at `docs.path`.

`DocsService` is a runtime component. It fetches each source (`docs.sources`: backend name ->
path of its document on the backend's instances) when it starts, then every `docs.refresh`,
and sooner after a failure (1 s, doubling, up to `refresh`), with httpx from the worker's loop:
never on a request's path. A source that cannot be fetched keeps its last good document (none at
first: its operations are missing and `x-gateway-sources` says so).

What the merged document holds is what a client of the gateway can call:

* an operation (path + method) of a backend is kept only when a route exposes it: the route's
  backend is the source, the method is routed, and the backend path maps back through the
  route's rewrite (`add_prefix` taken off, `strip_prefix` put back) to a gateway path that the
  gateway's router really sends to that route. Parameters keep the backend's names (a route's
  `{id}` matches a backend's `{blog_id}`); a backend parameter where the route has a literal
  segment is not exposed (only one value of it is reachable);
* the components those operations reference (transitively) are kept; a name two backends use
  for different content is prefixed with the backend's name in the later backend (and its
  references rewritten), equal content is shared;
* security schemes `gatewayApiKey` (`x-api-key` header) and `gatewayBearer` (JWT) are added and
  required on each operation as its route requires them (`auth`, else `defaults.auth`),
  together with whatever the backend itself declares;
* the problems the gateway answers itself are added to each operation's responses, from its
  route's policy (`gateway_problems`): 401/403/503 for the API key, 401/403 for the token and
  roles, 429 for a rate limit, 413 for a body limit, 400 for a request it refuses, and 502/503/504
  when the backend fails. They are merged here rather than declared by each service because
  they follow the gateway's configuration, which a service does not know (and its own document,
  served on its instances, describes calling it directly). The `Problem` schema is the kit's
  (`mosaic_kit.openapi`), shared with the services' documents; a backend's different `Problem`
  is renamed like any clashing component.

`GET {path}/openapi.json` answers the merged document, `GET {path}` an HTML page with Swagger UI,
its assets under `{path}/assets/` from the installed package (no CDN: the page works offline).
They are answered by the gateway itself (a `LocalAnswer` ends their chain), with no filter: no API key
is needed to read them. The bodies are rendered when a document changes, not per request.

`merged_document` is the same merge offline: `mosaic-gateway openapi` prints it from documents
given as files or fetched once from the backends' static instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from mosaic_gateway.config import DocsSpec, GatewayConfig, RouteAuthSpec, RouteSpec
from mosaic_gateway.filters.apikeys import ApiKeyInvalid, ApiKeyMissing, ApiKeyUnavailable
from mosaic_gateway.filters.ratelimit import RATE_LIMITED
from mosaic_gateway.filters.scopes import SCOPE_MISSING_CODE
from mosaic_gateway.http import problems
from mosaic_gateway.http.server import Exchange
from mosaic_gateway.routing.chain import Chain, LocalAnswer
from mosaic_gateway.routing.route import CompiledRoute
from mosaic_gateway.routing.router import RouteEntry, Router, parse_template
from mosaic_gateway.upstream.balancer import Backend
from mosaic_gateway.upstream.breaker import CIRCUIT_OPEN
from mosaic_kit import swagger_ui
from mosaic_kit.logging import get_logger
from mosaic_kit.openapi import (
    PROBLEM_SCHEMA,
    ROLE_PROBLEMS,
    TOKEN_PROBLEMS,
    add_problem_response,
    sort_responses,
)

_log = get_logger("mosaic_gateway.handlers.docs")

OPERATION_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
API_KEY_SCHEME = "gatewayApiKey"
BEARER_SCHEME = "gatewayBearer"
CLIENT_SCHEME = "gatewayClientToken"
_GATEWAY_SCHEMES: dict[str, Any] = {
    API_KEY_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "An API key (every public route asks for one).",
    },
    BEARER_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token from the auth service.",
    },
    CLIENT_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A client application's access token (OAuth2 client credentials, "
        "`POST /v1/oauth/token`), in place of the API key on routes open to client "
        "applications; a requirement's list names the scopes it needs.",
    },
}
_COMPONENT_REF = "#/components/"
_FIRST_RETRY = 1.0
_MAX_RETRY = 30.0
_JSON = b"application/json"
_HTML = b"text/html; charset=utf-8"
_NO_CACHE = ((b"cache-control", b"no-cache"),)
_CACHE_A_DAY = ((b"cache-control", b"public, max-age=86400"),)

Json = dict[str, Any]


@dataclass(frozen=True)
class Exposure:
    """A configured route as seen from its backend's document."""

    index: int  # in `routes`
    backend: str
    methods: frozenset[str]  # lower-case, `head` included with `get`
    gateway_prefix: tuple[str, ...]  # literal segments `strip_prefix` took off
    upstream: tuple[tuple[str, str], ...]  # the template as the backend sees it
    added: int  # how many leading upstream segments `add_prefix` put on
    api_key: str  # required / optional / off
    jwt: str
    roles: bool = False
    # Open to client applications: the alternatives of scopes a client token may hold (any_of:
    # one alternative per scope; all_of: one alternative holding them all).
    scope_sets: tuple[tuple[str, ...], ...] = ()
    rate_limited: bool = False
    body_limited: bool = False

    def gateway_path(self, backend_path: str) -> str | None:
        """The gateway path serving `backend_path` through this route, or None."""
        segments = backend_path[1:].split("/")
        matched: list[str] = []
        pattern = self.upstream
        for position, (kind, value) in enumerate(pattern):
            if kind == "wildcard":
                matched.extend(segments[position:])
                break
            if position >= len(segments):
                return None
            segment = segments[position]
            if kind == "literal":
                if segment != value:
                    return None
            elif not segment:  # a parameter is one non-empty segment
                return None
            matched.append(segment)
        else:
            if len(segments) != len(pattern):
                return None
        return "/" + "/".join([*self.gateway_prefix, *matched[self.added :]])


def _effective_auth(
    route: RouteSpec, config: GatewayConfig
) -> tuple[str, str, bool, tuple[tuple[str, ...], ...]]:
    # The rule filters/pipeline.py applies: the route's own, else `defaults.auth`, else off; roles
    # imply a token.
    mine = route.auth or RouteAuthSpec()
    default = config.defaults.auth or RouteAuthSpec()
    api_key = mine.api_key or default.api_key or "off"
    jwt = mine.jwt or default.jwt or "off"
    roles = mine.roles if mine.roles is not None else default.roles
    scopes = mine.scopes if mine.scopes is not None else default.scopes
    scope_sets: tuple[tuple[str, ...], ...] = ()
    if scopes is not None:
        mode, names = scopes.rule
        scope_sets = tuple((name,) for name in names) if mode == "any_of" else (names,)
    return api_key, "required" if roles else jwt, bool(roles), scope_sets


def exposures(config: GatewayConfig) -> list[Exposure]:
    out: list[Exposure] = []
    for index, route in enumerate(config.routes):
        if route.backend is None or route.aggregate is not None:
            continue  # an aggregate's answer is the gateway's own document, not a backend's
        segments = parse_template(route.path).segments
        rewrite = route.rewrite
        stripped = (
            len(rewrite.strip_prefix.split("/")) - 1 if rewrite and rewrite.strip_prefix else 0
        )
        added = tuple(rewrite.add_prefix.split("/")[1:]) if rewrite and rewrite.add_prefix else ()
        methods = {method.lower() for method in route.methods}
        if "get" in methods:
            methods.add("head")
        api_key, jwt, roles, scope_sets = _effective_auth(route, config)
        body_limit = (
            route.max_body_bytes
            if route.max_body_bytes is not None
            else config.server.limits.max_body_bytes
        )
        out.append(
            Exposure(
                index=index,
                backend=route.backend,
                methods=frozenset(methods),
                gateway_prefix=tuple(value for _, value in segments[:stripped]),
                upstream=(*(("literal", value) for value in added), *segments[stripped:]),
                added=len(added),
                api_key=api_key,
                jwt=jwt,
                roles=roles,
                scope_sets=scope_sets,
                rate_limited=(route.rate_limit or config.defaults.rate_limit) is not None,
                body_limited=body_limit > 0,  # 0: no limit
            )
        )
    return out


# The 400s of the gateway's request checks, whichever route the request was for: every one
# problems.py defines, so a check added there is documented too.
_REFUSED_CODES = tuple(
    dict.fromkeys(
        problem.code
        for problem in vars(problems).values()
        if isinstance(problem, problems.GatewayProblem) and problem.status == 400
    )
)


def gateway_problems(exposure: Exposure) -> dict[int, list[str]]:
    """The statuses (and codes) the gateway itself may answer on a route, from its policy."""
    found: dict[int, list[str]] = {}

    def add(status: int, *codes: str) -> None:
        known = found.setdefault(status, [])
        known += [code for code in codes if code not in known]

    # Refused before routing (bad framing, a '.'/'..' or encoded separator in the path...).
    add(400, *_REFUSED_CODES)
    if exposure.api_key != "off":
        if exposure.api_key == "required":
            add(401, ApiKeyMissing.problem.code)
        add(403, ApiKeyInvalid.problem.code)
        add(503, ApiKeyUnavailable.problem.code)
    if exposure.jwt != "off" or exposure.scope_sets:  # a token that is sent is checked
        for status, codes in TOKEN_PROBLEMS.items():
            add(status, *codes)
    if exposure.roles:
        add(403, *ROLE_PROBLEMS[403])
    if exposure.scope_sets:
        add(403, SCOPE_MISSING_CODE)
    if exposure.body_limited:
        add(413, problems.BODY_TOO_LARGE.code)
    if exposure.rate_limited:
        add(429, RATE_LIMITED.code)
    add(502, problems.BAD_GATEWAY.code)
    add(503, problems.UNAVAILABLE.code, CIRCUIT_OPEN.code)
    add(504, problems.UPSTREAM_TIMEOUT.code)
    return found


def _with_gateway_problems(operation: Json, exposure: Exposure) -> Json:
    responses = operation.get("responses")
    if not isinstance(responses, dict):
        responses = {}
    for status, codes in gateway_problems(exposure).items():
        add_problem_response(responses, status, codes)
    return {**operation, "responses": sort_responses(responses)}


# --- merging ----------------------------------------------------------------------------------


def _refs(node: Any, found: set[tuple[str, str]]) -> None:
    """Collect `#/components/<kind>/<name>` references under `node`."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_COMPONENT_REF):
            kind, _, name = ref[len(_COMPONENT_REF) :].partition("/")
            if name:
                found.add((kind, name))
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _security_names(operation: Json) -> set[tuple[str, str]]:
    names: set[tuple[str, str]] = set()
    for requirement in operation.get("security") or ():
        if isinstance(requirement, dict):
            names.update(("securitySchemes", name) for name in requirement)
    return names


def _rewrite(node: Any, refs: dict[str, str]) -> Any:
    """A copy of `node` with references renamed."""
    if isinstance(node, dict):
        out = {key: _rewrite(value, refs) for key, value in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref in refs:
            out["$ref"] = refs[ref]
        return out
    if isinstance(node, list):
        return [_rewrite(value, refs) for value in node]
    return node


def _canonical(node: Any) -> bytes:
    return orjson.dumps(node, option=orjson.OPT_SORT_KEYS)


def _with_path_parameters(operation: Json, path_item: Json) -> Json:
    """The operation with its path item's parameters (its own win, by name and location)."""
    shared = path_item.get("parameters")
    if not isinstance(shared, list) or not shared:
        return operation
    own = operation.get("parameters") or []
    taken = {(p.get("name"), p.get("in")) for p in own if isinstance(p, dict)}
    merged = [*own, *(p for p in shared if (p.get("name"), p.get("in")) not in taken)]
    return {**operation, "parameters": merged}


def _required_security(operation: Json, exposure: Exposure, document: Json) -> list[Json] | None:
    """The operation's security requirements with the gateway's added as its route asks.

    Where the gateway checks the bearer token itself, the backend's own bearer schemes name the
    same token (the gateway forwards it): they are left out, so a reader enters it once.
    """
    own = operation.get("security", document.get("security"))
    alternatives: list[Json] = [dict(item) for item in own or () if isinstance(item, dict)]
    if exposure.jwt in ("required", "optional"):
        same_token = _bearer_schemes(document)
        alternatives = [
            {name: scopes for name, scopes in item.items() if name not in same_token}
            for item in alternatives
        ]
    gateway: dict[str, list[str]] = {}
    if exposure.api_key == "required":
        gateway[API_KEY_SCHEME] = []
    if exposure.jwt == "required":
        gateway[BEARER_SCHEME] = []
    if not alternatives:
        alternatives = [{}]
    alternatives = [{**item, **gateway} for item in alternatives]
    optional = [
        scheme
        for scheme, switch in ((API_KEY_SCHEME, exposure.api_key), (BEARER_SCHEME, exposure.jwt))
        if switch == "optional"
    ]
    for scheme in optional:  # an optional credential: with or without it
        alternatives += [{**item, scheme: []} for item in alternatives]
    if exposure.scope_sets:
        # A client token stands in for the API key, and takes the one Authorization header a
        # user's token (the gateway's or the backend's own bearer scheme) would.
        replaced = {API_KEY_SCHEME, BEARER_SCHEME, *_bearer_schemes(document)}
        alternatives += [
            {
                **{name: scopes for name, scopes in item.items() if name not in replaced},
                CLIENT_SCHEME: list(needed),
            }
            for item in alternatives
            for needed in exposure.scope_sets
        ]
    unique: list[Json] = []
    for item in alternatives:
        if item not in unique:
            unique.append(item)
    return None if unique == [{}] else unique


def _bearer_schemes(document: Json) -> set[str]:
    """Names of the document's HTTP bearer security schemes."""
    schemes = (document.get("components") or {}).get("securitySchemes") or {}
    return {
        name
        for name, scheme in schemes.items()
        if isinstance(scheme, dict)
        and scheme.get("type") == "http"
        and str(scheme.get("scheme", "")).lower() == "bearer"
    }


Kept = tuple[str, str, Json, Exposure]
"""An operation kept: gateway path, method, the backend's operation, the route exposing it."""


class Merger:
    """Builds the merged document from the sources' documents (in `sources` order)."""

    def __init__(self, config: GatewayConfig, spec: DocsSpec) -> None:
        self.spec = spec
        self.exposures = exposures(config)
        self.router = Router.compile(
            RouteEntry(parse_template(route.path), route.methods, index)
            for index, route in enumerate(config.routes)
        )

    def _served_by(self, path: str, method: str) -> int | None:
        found = self.router.match(path.encode("ascii", "replace"))
        if found is None:
            return None
        return found[0].by_method.get(method.upper().encode("ascii"))

    def merge(self, documents: dict[str, Json | None]) -> Json:
        paths: dict[str, Json] = {}
        components: dict[str, dict[str, Any]] = {
            "securitySchemes": dict(_GATEWAY_SCHEMES),
            # The gateway's own problems (every operation may answer some) have the kit's shape.
            "schemas": {"Problem": PROBLEM_SCHEMA},
        }
        # (kind, name) -> the canonical raw content of the first backend that used the name.
        first_seen: dict[tuple[str, str], bytes] = {
            (kind, name): _canonical(content)
            for kind, items in components.items()
            for name, content in items.items()
        }
        tags: dict[str, Json] = {}
        operation_ids: set[str] = set()
        sources: dict[str, str] = {}
        for backend in self.spec.sources:
            document = documents.get(backend)
            if document is None:
                sources[backend] = "unavailable"
                continue
            sources[backend] = "ok"
            kept = self._operations(backend, document)
            renames = self._components(backend, document, kept, components, first_seen)
            for path, method, original, exposure in kept:
                # The gateway's problems after the renames: they name the gateway's `Problem`.
                operation = _with_gateway_problems(_rewrite(original, renames), exposure)
                if "security" in operation:
                    operation["security"] = _renamed_schemes(operation["security"], renames)
                operation_id = operation.get("operationId")
                if isinstance(operation_id, str):
                    unique = operation_id
                    if unique in operation_ids:
                        unique = f"{backend}_{operation_id}"
                    number = 2
                    while unique in operation_ids:
                        unique = f"{backend}_{operation_id}_{number}"
                        number += 1
                    operation_ids.add(unique)
                    operation["operationId"] = unique
                paths.setdefault(path, {})[method] = operation
            for tag in document.get("tags") or ():
                if isinstance(tag, dict) and isinstance(tag.get("name"), str):
                    tags.setdefault(tag["name"], tag)
        merged: Json = {
            "openapi": "3.1.0",
            "info": {
                "title": self.spec.title,
                "version": "gateway",
                "description": "The operations routed by the gateway, from each service's own "
                "OpenAPI document.",
            },
            "paths": {path: paths[path] for path in sorted(paths)},
            "components": {kind: dict(sorted(items.items())) for kind, items in components.items()},
            "x-gateway-sources": sources,
        }
        if tags:
            merged["tags"] = list(tags.values())
        return merged

    def _operations(self, backend: str, document: Json) -> list[Kept]:
        kept: list[Kept] = []
        paths = document.get("paths")
        if not isinstance(paths, dict):
            return kept
        mine = [exposure for exposure in self.exposures if exposure.backend == backend]
        for backend_path, path_item in paths.items():
            if not isinstance(path_item, dict) or not str(backend_path).startswith("/"):
                continue
            for method in OPERATION_METHODS:
                operation = path_item.get(method)
                if not isinstance(operation, dict):
                    continue
                for exposure in mine:
                    if method not in exposure.methods:
                        continue
                    path = exposure.gateway_path(backend_path)
                    if path is None or self._served_by(path, method) != exposure.index:
                        continue
                    operation = _with_path_parameters(operation, path_item)
                    security = _required_security(operation, exposure, document)
                    operation = {
                        key: value for key, value in operation.items() if key != "security"
                    }
                    if security is not None:
                        operation["security"] = security
                    kept.append((path, method, operation, exposure))
                    break
        return kept

    @staticmethod
    def _components(
        backend: str,
        document: Json,
        kept: list[Kept],
        components: dict[str, dict[str, Any]],
        first_seen: dict[tuple[str, str], bytes],
    ) -> dict[str, str]:
        """Add the components `kept` needs; returns the references renamed (old -> new)."""
        available = document.get("components")
        if not isinstance(available, dict):
            available = {}

        def content(key: tuple[str, str]) -> Any:
            items = available.get(key[0])
            return items.get(key[1]) if isinstance(items, dict) else None

        wanted: set[tuple[str, str]] = set()
        for _, _, operation, _ in kept:
            _refs(operation, wanted)
            wanted |= _security_names(operation)
        wanted -= {
            ("securitySchemes", API_KEY_SCHEME),
            ("securitySchemes", BEARER_SCHEME),
            ("securitySchemes", CLIENT_SCHEME),
        }
        needed: set[tuple[str, str]] = set()
        while wanted:
            key = wanted.pop()
            if key in needed or content(key) is None:
                continue
            needed.add(key)
            inner: set[tuple[str, str]] = set()
            _refs(content(key), inner)
            wanted |= inner - needed
        # Rename what clashes with another backend's different content, then what refers to a
        # renamed component while its name is shared (its content now differs).
        renamed = {
            key
            for key in needed
            if key in first_seen and first_seen[key] != _canonical(content(key))
        }
        changed = True
        while changed:
            changed = False
            for key in needed - renamed:
                if key not in first_seen:
                    continue
                inner = set()
                _refs(content(key), inner)
                if inner & renamed:
                    renamed.add(key)
                    changed = True
        names: dict[tuple[str, str], str] = {}
        for kind, name in sorted(renamed):
            new = f"{backend}_{name}"
            number = 2
            while (kind, new) in first_seen or new in components.get(kind, {}):
                new = f"{backend}_{name}_{number}"
                number += 1
            names[(kind, name)] = new
        refs = {
            f"{_COMPONENT_REF}{kind}/{name}": f"{_COMPONENT_REF}{kind}/{new}"
            for (kind, name), new in names.items()
        }
        for key in sorted(needed):
            kind, name = key
            final = names.get(key, name)
            if (kind, final) in first_seen and key not in names:
                continue  # the same content under the same name: shared
            components.setdefault(kind, {})[final] = _rewrite(content(key), refs)
            first_seen[(kind, final)] = _canonical(content(key))
        return refs


_SCHEMES = f"{_COMPONENT_REF}securitySchemes/"


def merged_document(config: GatewayConfig, documents: dict[str, Json | None]) -> Json:
    """The document the gateway would serve at `docs.path`/openapi.json, given the sources'
    documents (a source missing or None is `unavailable`, as when its fetch fails)."""
    if config.docs is None:
        raise ValueError("the configuration has no docs section (docs.sources names the documents)")
    return Merger(config, config.docs).merge(documents)


def fetch_documents(
    config: GatewayConfig, given: dict[str, Json]
) -> tuple[dict[str, Json], list[str]]:
    """Each source's document: `given`, else fetched once from its backend's static instances
    (the first that answers a valid one). Also what could not be had, one line per source."""
    assert config.docs is not None
    documents: dict[str, Json] = {}
    missing: list[str] = []
    with httpx.Client(timeout=config.docs.timeout, follow_redirects=False) as client:
        for name, path in config.docs.sources.items():
            if name in given:
                documents[name] = given[name]
                continue
            backend = config.backends.get(name)
            if backend is None or not backend.instances:
                missing.append(f"{name}: no static instances to fetch {path} from (give a file)")
                continue
            problem = "no instance"
            for instance in backend.instances:
                try:
                    response = client.get(instance.url.rstrip("/") + path)
                except httpx.HTTPError as exc:
                    problem = f"{instance.url}: {exc.__class__.__name__}"
                    continue
                document = _answered_document(response)
                if isinstance(document, str):
                    problem = f"{instance.url}: {document}"
                    continue
                documents[name] = document
                break
            else:
                missing.append(f"{name}: {problem}")
    return documents, missing


def _answered_document(response: httpx.Response) -> Json | str:
    """The document an instance answered, or why it is not one."""
    if response.status_code != 200:
        return f"status {response.status_code}"
    return parse_document(response.content)


def parse_document(content: bytes) -> Json | str:
    """A source's document, or why it is not one."""
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
        return "not an OpenAPI document (no paths)"
    return document


def _renamed_schemes(security: list[Json], refs: dict[str, str]) -> list[Json]:
    """Security requirements name schemes without `$ref`: rename them the same way."""
    out: list[Json] = []
    for requirement in security:
        renamed: Json = {}
        for name, scopes in requirement.items():
            new = refs.get(_SCHEMES + name)
            renamed[new[len(_SCHEMES) :] if new else name] = scopes
        out.append(renamed)
    return out


# --- the runtime component ----------------------------------------------------------------------


class DocsService:
    def __init__(
        self,
        config: GatewayConfig,
        spec: DocsSpec,
        backends: dict[str, Backend],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.spec = spec
        self.loop = loop
        self.backends = backends
        self.merger = Merger(config, spec)
        self.documents: dict[str, Json | None] = dict.fromkeys(spec.sources)
        self._retry_in = dict.fromkeys(spec.sources, _FIRST_RETRY)
        self._due = dict.fromkeys(spec.sources, 0.0)
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self.document_url = spec.path + "/openapi.json"
        self.assets_url = spec.path + "/assets"
        # Swagger UI from the installed package, not a CDN: the page works offline.
        self.page = swagger_ui.page(spec.title, self.document_url, self.assets_url)
        self.body = b""
        self._rebuild()
        # The local routes' stand-in backend: never picked (`local` answers first).
        self._no_backend = Backend(
            loop, "gateway", policy="round_robin", eject_after=1, eject_for=1.0, failure_statuses=()
        )

    def route_specs(self) -> list[RouteEntry[CompiledRoute]]:
        return [
            self._spec(self.spec.path, self.serve_page),
            self._spec(self.document_url, self.serve_document),
            *(
                self._spec(f"{self.assets_url}/{name}", self._asset_answer(name))
                for name in swagger_ui.ASSETS
            ),
        ]

    @staticmethod
    def _asset_answer(name: str) -> Callable[[Exchange], None]:
        body = swagger_ui.asset(name)
        media = swagger_ui.ASSETS[name].encode()

        def answer(exchange: Exchange) -> None:
            exchange.respond(200, body, media, _CACHE_A_DAY)

        return answer

    def _spec(self, path: str, answer: Callable[[Exchange], None]) -> RouteEntry[CompiledRoute]:
        route = CompiledRoute(
            template=path,
            backend=self._no_backend,
            timeout=self.spec.timeout,
            max_body_bytes=0,
            strip_prefix=b"",
            add_prefix=b"",
        )
        route.chain = Chain(self.loop, (), LocalAnswer(answer))
        return RouteEntry(parse_template(path), ["GET"], route)

    def serve_page(self, exchange: Exchange) -> None:
        exchange.respond(200, self.page, _HTML, _NO_CACHE)

    def serve_document(self, exchange: Exchange) -> None:
        exchange.respond(200, self.body, _JSON, _NO_CACHE)

    # --- fetching ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.spec.timeout, follow_redirects=False)
        # The first round before serving, so the document is complete from the first request
        # when the services are up (each fetch is bounded by `timeout`).
        await self._round()
        self._task = self.loop.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while True:
            wait = min(self._due.values()) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._round()

    async def _round(self) -> None:
        now = time.monotonic()
        due = [name for name, when in self._due.items() if when <= now]
        results = await asyncio.gather(*(self._fetch(name) for name in due))
        changed = False
        for name, document in zip(due, results, strict=True):
            if document is None:
                delay = self._retry_in[name]
                self._retry_in[name] = min(delay * 2, _MAX_RETRY)
                self._due[name] = time.monotonic() + min(delay, self.spec.refresh)
                continue
            self._retry_in[name] = _FIRST_RETRY
            self._due[name] = time.monotonic() + self.spec.refresh
            if document != self.documents[name]:
                self.documents[name] = document
                changed = True
        if changed:
            self._rebuild()

    async def _fetch(self, name: str) -> Json | None:
        """The source's document from the first instance that gives a valid one."""
        backend = self.backends.get(name)
        client = self._client
        if backend is None or client is None:
            return None
        path = self.spec.sources[name]
        instances = [*backend.available, *backend.instances]
        tried: set[str] = set()
        problem = "no instance"
        for instance in instances:
            if instance.url in tried:
                continue
            tried.add(instance.url)
            host = f"[{instance.host}]" if ":" in instance.host else instance.host
            try:
                response = await client.get(f"http://{host}:{instance.port}{path}")
            except httpx.HTTPError as exc:
                problem = f"{instance.url}: {exc.__class__.__name__}"
                continue
            document = _answered_document(response)
            if isinstance(document, str):
                problem = f"{instance.url}: {document}"
                continue
            if self.documents[name] is None or self._retry_in[name] != _FIRST_RETRY:
                _log.info("docs_fetched", backend=name, url=instance.url + path)
            return document
        if self._retry_in[name] == _FIRST_RETRY:  # say it when it starts failing
            _log.warning("docs_fetch_failed", backend=name, path=path, problem=problem)
        return None

    def _rebuild(self) -> None:
        try:
            document = self.merger.merge(self.documents)
        except Exception:  # a strange document must not take the others down
            _log.exception("docs_merge_failed")
            return
        self.body = orjson.dumps(document)
