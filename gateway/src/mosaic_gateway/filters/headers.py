"""Per-route header, query-string and CORS policies, compiled once per configuration.

Everything works on the server's representation: headers as a list of `(name, value)` bytes
pairs with lower-cased names (as `server.Exchange.headers` holds them), the query string as the
raw bytes after `?` (or None). Compiling turns the configuration into frozensets and
pre-rendered header pairs, so the request path does set lookups and tuple reuse only.

Request headers (`HeaderPolicy.filter_request`), in one pass:

* hop-by-hop headers go, with any header the client named in `Connection`;
* identity headers the gateway sets itself (`X-User-Id`, `X-User-Roles`, `X-Client-Id`,
  `X-Client-Scopes`, the configured strip list, and every header a claim is forwarded as) go, whatever the allow-list says: a client
  must never be able to claim an identity. Names arrive lower-cased; each is also dropped with
  `_` for `-` (`x_user_id`), which CGI/WSGI-style backends fold into the same name;
* the rest is forwarded only if allow-listed (deny by default; `*` allows all). Headers the data
  path rewrites itself (`host`, `x-request-id`, `x-forwarded-*`, body framing) and what is
  needed to read the body (`content-type`, `content-encoding`) or follow the trace
  (`traceparent`, `tracestate`) always pass, so the data path can apply its own rules to them.

`identity_spellings(names)` is that set of names; `strip_identity(headers, names)` applies it
alone (routes with nothing else to check, security.IdentityStrip).

`HeaderPolicy.identity_headers(principal, api_key, client)` renders the forwarded claims, cached
per principal object (the token verifier returns the same object for every request with a token).
A user's claims are `sub`, `sid`, `roles`, `iat`, `exp`; a client application's `client_id` and
`scope` (space-separated, sorted); `iat` and `exp` are those of whichever token was sent.

CORS (`CorsPolicy`): preflights are answered by the gateway from the route's configuration;
actual responses get their `Access-Control-*` headers from a dict keyed by origin.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from itertools import product
from typing import TYPE_CHECKING, Final, TypeVar
from urllib.parse import unquote_to_bytes, urlsplit

from mosaic_gateway.http.problems import GatewayProblem
from mosaic_gateway.http.wire import HOP_BY_HOP, connection_tokens
from mosaic_kit.logging import get_logger
from mosaic_kit.tokens import ClientPrincipal

if TYPE_CHECKING:
    from mosaic_gateway.filters.apikeys import ApiKeyIdentity
    from mosaic_kit.tokens import Principal

__all__ = [
    "ALWAYS_FORWARDED",
    "CLAIMS",
    "CORS_FORBIDDEN",
    "DEFAULT_CLAIM_HEADERS",
    "IDENTITY_HEADERS",
    "CorsPolicy",
    "HeaderPolicy",
    "QueryPolicy",
    "cors_request",
    "identity_spellings",
    "render_lines",
    "strip_hop_by_hop",
    "strip_identity",
]

_log = get_logger("mosaic_gateway.filters.headers")

Headers = list[tuple[bytes, bytes]]
HeaderPairs = tuple[tuple[bytes, bytes], ...]

IDENTITY_HEADERS: Final = ("x-user-id", "x-user-roles", "x-client-id", "x-client-scopes")
DEFAULT_CLAIM_HEADERS: Final = {
    "sub": "x-user-id",
    "roles": "x-user-roles",
    "client_id": "x-client-id",
    "scope": "x-client-scopes",
}
CLAIMS: Final = frozenset(
    {"sub", "sid", "roles", "iat", "exp", "api_key.id", "api_key.name", "client_id", "scope"}
)
ALWAYS_FORWARDED: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"content-type",
        b"content-encoding",
        b"x-request-id",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"traceparent",
        b"tracestate",
    }
)

CORS_FORBIDDEN = GatewayProblem(
    403, "gateway.cors_forbidden", "This cross-origin request is not allowed"
)

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
# Control characters other than tab: a value holding one could split or smuggle a header.
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONNECTION_KEEP = frozenset({b"close", b"keep-alive"})
_HOST = frozenset({b"host"})
_EMPTY: HeaderPairs = ()
_RENDERED_MAX = 10_000

_Owner = TypeVar("_Owner")


def _header_name(name: str) -> bytes:
    lowered = name.strip().lower()
    if not _TOKEN.fullmatch(lowered):
        raise ValueError(f"{name!r} is not a valid header name")
    return lowered.encode("ascii")


def _header_names(names: Iterable[str]) -> frozenset[bytes]:
    return frozenset(_header_name(name) for name in names)


def identity_spellings(names: Iterable[str]) -> frozenset[bytes]:
    """`names` lower-cased, each in every mix of `-` and `_` (`x-user-id`, `x_user_id`,
    `x-user_id`...): the set of client headers never forwarded for them."""
    spelled: set[bytes] = set()
    for name in names:
        first, *rest = _header_name(name).replace(b"_", b"-").split(b"-")
        for separators in product(b"-_", repeat=len(rest)):
            spelled.add(
                first
                + b"".join(bytes((sep,)) + part for sep, part in zip(separators, rest, strict=True))
            )
    return frozenset(spelled)


def strip_identity(headers: Headers, names: frozenset[bytes]) -> Headers:
    """`headers` without `names` (the same list when none is there: the usual case)."""
    for name, _ in headers:
        if name in names:
            return [item for item in headers if item[0] not in names]
    return headers


def render_lines(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Header pairs as the `name: value\r\n` lines of a message head."""
    return b"".join(name + b": " + value + b"\r\n" for name, value in pairs)


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """`headers` without hop-by-hop ones (names in any case), e.g. for a response."""
    named: set[bytes] = set()
    kept: Headers = []
    for item in headers:
        lower = item[0].lower()
        if lower in HOP_BY_HOP:
            if lower == b"connection":
                named |= connection_tokens(item[1]) - _CONNECTION_KEEP
            continue
        kept.append(item)
    if named:
        kept = [item for item in kept if item[0].lower() not in named]
    return kept


class HeaderPolicy:
    """Which request headers reach the backend, and which claims are added as headers."""

    __slots__ = (
        "_claims",
        "_client_rendered",
        "_key_rendered",
        "_rendered",
        "allowed",
        "drop",
        "forwarded_as",
    )

    def __init__(
        self,
        *,
        allow: Iterable[str] = (),
        strip: Iterable[str] = IDENTITY_HEADERS,
        forward_claims: Mapping[str, str] | None = None,
    ) -> None:
        claims = DEFAULT_CLAIM_HEADERS if forward_claims is None else forward_claims
        unknown = set(claims) - CLAIMS
        if unknown:
            raise ValueError(
                f"unknown claims {sorted(unknown)}; forwardable are {', '.join(sorted(CLAIMS))}"
            )
        self._claims = tuple((claim, _header_name(header)) for claim, header in claims.items())
        self.forwarded_as = frozenset(header for _, header in self._claims)
        allow = list(allow)
        # Public so a data path that already loops over the headers can apply the policy in
        # its own loop (`name in drop`, then `allowed is None or name in allowed`) instead of
        # calling `filter_request`; `Connection`-named headers are then its business.
        self.allowed: frozenset[bytes] | None = (
            None if "*" in allow else _header_names(allow) | ALWAYS_FORWARDED
        )
        self.drop = HOP_BY_HOP | identity_spellings(
            [*strip, *(header.decode("ascii") for header in self.forwarded_as)]
        )
        self._rendered: dict[Principal, HeaderPairs] = {}
        self._key_rendered: dict[ApiKeyIdentity, HeaderPairs] = {}
        self._client_rendered: dict[ClientPrincipal, HeaderPairs] = {}

    def filter_request(self, headers: Headers) -> Headers:
        """The client's headers that may be forwarded, in their order (duplicates kept)."""
        drop = self.drop
        allowed = self.allowed
        kept: Headers = []
        named: set[bytes] | None = None
        for item in headers:
            name = item[0]
            if name in drop:
                if name == b"connection":
                    # `Host` stays: always forwarded, and part of every cache key.
                    tokens = connection_tokens(item[1]) - _CONNECTION_KEEP - _HOST
                    if tokens:
                        named = tokens if named is None else named | tokens
                continue
            if allowed is None or name in allowed:
                kept.append(item)
        if named:
            # Rare: the client declared more hop-by-hop headers in `Connection`.
            kept = [item for item in kept if item[0] not in named]
        return kept

    def identity_headers(
        self,
        principal: Principal | None,
        api_key: ApiKeyIdentity | None = None,
        client: ClientPrincipal | None = None,
    ) -> HeaderPairs:
        """The configured claims of the caller as headers (to append after filtering)."""
        if not self._claims:
            return _EMPTY
        token = _EMPTY
        if principal is not None:
            rendered = self._rendered.get(principal)
            if rendered is None:
                rendered = self._render(principal, None)
                self._remember(self._rendered, principal, rendered)
            token = rendered
        elif client is not None:
            rendered = self._client_rendered.get(client)
            if rendered is None:
                rendered = self._render(client, None)
                self._remember(self._client_rendered, client, rendered)
            token = rendered
        if api_key is None:
            return token
        key = self._key_rendered.get(api_key)
        if key is None:
            key = self._render(None, api_key)
            self._remember(self._key_rendered, api_key, key)
        return token + key if token else key

    @staticmethod
    def _remember(cache: dict[_Owner, HeaderPairs], owner: _Owner, rendered: HeaderPairs) -> None:
        if len(cache) >= _RENDERED_MAX:
            # Rebuilt from scratch: cheaper than LRU bookkeeping on every request.
            cache.clear()
        cache[owner] = rendered

    def _render(
        self, principal: Principal | ClientPrincipal | None, api_key: ApiKeyIdentity | None
    ) -> HeaderPairs:
        pairs: list[tuple[bytes, bytes]] = []
        for claim, header in self._claims:
            value = _claim_value(claim, principal, api_key)
            if value is None:
                continue
            if _UNSAFE_VALUE.search(value):
                _log.warning("claim_not_forwarded", claim=claim, reason="control characters")
                continue
            pairs.append((header, value.encode()))
        return tuple(pairs)


def _claim_value(
    claim: str, principal: Principal | ClientPrincipal | None, api_key: ApiKeyIdentity | None
) -> str | None:
    if claim.startswith("api_key."):
        if api_key is None:
            return None
        return api_key.id if claim == "api_key.id" else api_key.name
    if principal is None:
        return None
    if claim == "iat":
        return str(principal.issued_at)
    if claim == "exp":
        return str(principal.expires_at)
    if isinstance(principal, ClientPrincipal):
        if claim == "client_id":
            return principal.client_id
        if claim == "scope":
            return " ".join(sorted(principal.scopes))
        return None  # a user's claim
    if claim == "sub":
        return principal.user_id
    if claim == "roles":
        return ",".join(sorted(principal.roles))
    if claim == "sid":
        return principal.session_id
    return None  # a client's claim


class QueryPolicy:
    """Which query parameters reach the backend (deny by default; `*` allows all)."""

    __slots__ = ("_allowed",)

    def __init__(self, allow: Iterable[str] = ()) -> None:
        allow = list(allow)
        self._allowed: frozenset[bytes] | None = (
            None if "*" in allow else frozenset(name.encode() for name in allow)
        )

    def filter(self, query: bytes | None) -> bytes | None:
        """`query` with only allowed parameters (None when none is left); unchanged if all are."""
        allowed = self._allowed
        if query is None or allowed is None:
            return query
        if not allowed:
            return None
        kept: list[bytes] = []
        changed = False
        for pair in query.split(b"&"):
            name = pair.partition(b"=")[0]
            if name in allowed or (
                (b"%" in name or b"+" in name)
                and unquote_to_bytes(name.replace(b"+", b" ")) in allowed
            ):
                kept.append(pair)
            else:
                changed = True
        if not changed:
            return query
        return b"&".join(kept) if kept else None


def cors_request(headers: Headers) -> tuple[bytes | None, bytes | None, bytes | None]:
    """`(origin, access-control-request-method, access-control-request-headers)` of a request."""
    origin = method = requested = None
    for name, value in headers:
        if name == b"origin":
            origin = value
        elif name == b"access-control-request-method":
            method = value
        elif name == b"access-control-request-headers":
            requested = value if requested is None else requested + b"," + value
    return origin, method, requested


# CORS-safelisted request headers: browsers may list them in a preflight; always acceptable.
_SAFELISTED = frozenset({b"accept", b"accept-language", b"content-language", b"content-type"})
_SIMPLE_METHODS = frozenset({b"GET", b"HEAD", b"POST"})
_PREFLIGHT_VARY = (b"vary", b"access-control-request-method, access-control-request-headers")
_PREFLIGHT_VARY_ORIGIN = (
    b"vary",
    b"origin, access-control-request-method, access-control-request-headers",
)


def _origin(text: str) -> bytes:
    parts = urlsplit(text)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise ValueError(f"{text!r} is not an origin (scheme://host[:port])")
    return text.lower().encode("ascii")


class CorsPolicy:
    """A route's CORS configuration, pre-rendered per allowed origin.

    `origins` are exact origins or `*`; `methods` and `headers` may be `*` (whatever the
    preflight asks is echoed). Credentials cannot be combined with `*` origins: that would let
    every site make credentialed calls, and browsers refuse the literal `*` with credentials.
    """

    __slots__ = (
        "_any_header",
        "_any_method",
        "_any_origin",
        "_headers",
        "_lines",
        "_methods",
        "_per_origin",
        "_preflight_static",
        "_vary_only",
        "credentials",
    )

    def __init__(
        self,
        *,
        origins: Sequence[str],
        methods: Sequence[str] = ("GET", "HEAD", "POST"),
        headers: Sequence[str] = (),
        expose_headers: Sequence[str] = (),
        max_age: int | None = 600,
        credentials: bool = False,
    ) -> None:
        if not origins:
            raise ValueError("list at least one origin, or '*'")
        self._any_origin = "*" in origins
        if self._any_origin and credentials:
            raise ValueError("credentials cannot be allowed for any origin ('*')")
        if max_age is not None and max_age < 0:
            raise ValueError("max_age cannot be negative")
        self.credentials = credentials
        self._any_method = "*" in methods
        self._methods = frozenset(m.upper().encode("ascii") for m in methods if m != "*")
        self._any_header = "*" in headers
        self._headers = _header_names(h for h in headers if h != "*")

        common: list[tuple[bytes, bytes]] = []
        if credentials:
            common.append((b"access-control-allow-credentials", b"true"))
        actual = list(common)
        if expose_headers:
            exposed = b", ".join(sorted(_header_names(expose_headers)))
            actual.append((b"access-control-expose-headers", exposed))
        # What a preflight answers besides the origin and what it echoes.
        static = list(common)
        if not self._any_method:
            static.append((b"access-control-allow-methods", b", ".join(sorted(self._methods))))
        if max_age is not None:
            static.append((b"access-control-max-age", b"%d" % max_age))
        self._preflight_static = tuple(static)

        self._per_origin: dict[bytes, HeaderPairs] = {}
        # Rendered lines per answer (few: one per configured origin, and the Vary-only one).
        self._lines: dict[HeaderPairs, bytes] = {}
        if self._any_origin:
            self._vary_only = _EMPTY
            self._per_origin[b"*"] = ((b"access-control-allow-origin", b"*"), *actual)
        else:
            # The answer depends on the Origin header: caches must key on it.
            self._vary_only = ((b"vary", b"origin"),)
            for text in origins:
                origin = _origin(text)
                self._per_origin[origin] = (
                    (b"access-control-allow-origin", origin),
                    (b"vary", b"origin"),
                    *actual,
                )

    def response_lines(self, origin: bytes | None) -> bytes:
        """`response_headers` rendered as head lines; rendered once per origin."""
        pairs = self.response_headers(origin)
        lines = self._lines.get(pairs)
        if lines is None:
            lines = self._lines[pairs] = render_lines(pairs)
        return lines

    def _lookup(self, origin: bytes) -> HeaderPairs | None:
        if self._any_origin:
            return self._per_origin[b"*"]
        found = self._per_origin.get(origin)
        if found is None:
            found = self._per_origin.get(origin.lower())
        return found

    def response_headers(self, origin: bytes | None) -> HeaderPairs:
        """Headers to add to an actual (non-preflight) response; O(1), no allocation."""
        if origin is None:
            return self._vary_only
        return self._lookup(origin) or self._vary_only

    def preflight(
        self, origin: bytes, method: bytes, requested_headers: bytes | None
    ) -> HeaderPairs | None:
        """The headers of a 204 answering this preflight, or None to refuse it (403)."""
        allowed = self._lookup(origin)
        if allowed is None:
            return None
        if not self._any_method and method not in self._methods and method not in _SIMPLE_METHODS:
            return None
        out = [allowed[0], _PREFLIGHT_VARY if self._any_origin else _PREFLIGHT_VARY_ORIGIN]
        out += self._preflight_static
        if self._any_method:
            out.append((b"access-control-allow-methods", method))
        if requested_headers:
            names = [n.strip().lower() for n in requested_headers.split(b",") if n.strip()]
            if not self._any_header:
                for name in names:
                    if name not in self._headers and name not in _SAFELISTED:
                        return None
            if names:
                # Echoed once checked: a browser needs even safelisted names listed when their
                # value is not a simple one (`content-type: application/json`).
                out.append((b"access-control-allow-headers", b", ".join(names)))
        return tuple(out)
