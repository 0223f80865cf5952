"""Request routing, compiled once per configuration.

Path templates: literal segments, `{name}` (exactly one non-empty segment) and a trailing `*`
(the rest of the path, possibly empty: `/static/*` matches `/static`, `/static/` and
`/static/a/b`). Literal templates live in a dict, so most requests cost one lookup; templated ones
live in a segment trie searched with backtracking, where at each segment a literal beats a
parameter, which beats a wildcard.

The path decides the route; the method is checked afterwards, so a path that exists with other
methods answers 405 with `Allow` rather than falling through to a less specific template.
Everything is kept as bytes: the request line arrives as bytes and the hot path never decodes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# RFC 3986 pchar without percent-encoding checks: what a literal template segment may hold.
_LITERAL = re.compile(r"[A-Za-z0-9\-._~!$&'()+,;=:@%]*")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class Template:
    """A parsed path template."""

    text: str
    # Each segment: ("literal", text) | ("param", name) | ("wildcard", "*").
    segments: tuple[tuple[str, str], ...]

    @property
    def is_literal(self) -> bool:
        return all(kind == "literal" for kind, _ in self.segments)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(
            value if kind == "param" else "*" for kind, value in self.segments if kind != "literal"
        )

    def literal_prefix(self) -> str:
        """The leading literal segments as a path (`/v1/blogs` for `/v1/blogs/{id}`)."""
        parts: list[str] = []
        for kind, value in self.segments:
            if kind != "literal":
                break
            parts.append(value)
        return "/" + "/".join(parts) if parts else ""


def parse_template(text: str) -> Template:
    """Validate and split a path template; raises TemplateError with a readable reason."""
    if not text.startswith("/"):
        raise TemplateError("a path template starts with '/'")
    if "?" in text or "#" in text:
        raise TemplateError("a path template holds no query or fragment")
    raw_segments = text[1:].split("/")
    segments: list[tuple[str, str]] = []
    names: set[str] = set()
    for index, raw in enumerate(raw_segments):
        last = index == len(raw_segments) - 1
        if raw == "*":
            if not last:
                raise TemplateError("'*' is only allowed as the last segment")
            segments.append(("wildcard", "*"))
            continue
        param = _PARAM.fullmatch(raw)
        if param:
            name = param.group(1)
            if name in names:
                raise TemplateError(f"parameter {{{name}}} appears twice")
            names.add(name)
            segments.append(("param", name))
            continue
        if "{" in raw or "}" in raw or "*" in raw:
            raise TemplateError(
                f"segment {raw!r}: a parameter is a whole segment '{{name}}', a wildcard is '*'"
            )
        if raw in (".", ".."):
            raise TemplateError("dot segments are not allowed")
        if raw == "" and not last and text != "/":
            raise TemplateError("empty segment ('//')")
        if not _LITERAL.fullmatch(raw):
            raise TemplateError(f"segment {raw!r} holds characters not allowed in a path")
        segments.append(("literal", raw))
    return Template(text, tuple(segments))


@dataclass
class PathEntry(Generic[T]):
    """Everything routed at one path template: the target per method."""

    template: Template
    by_method: dict[bytes, T] = field(default_factory=dict)
    allow: bytes = b""  # the `Allow` header value for a 405

    def finish(self) -> None:
        # HEAD is GET without a body: a path that serves GET serves HEAD unless routed apart.
        if b"GET" in self.by_method and b"HEAD" not in self.by_method:
            self.by_method[b"HEAD"] = self.by_method[b"GET"]
        self.allow = b", ".join(sorted(self.by_method))


@dataclass
class _Node(Generic[T]):
    literals: dict[bytes, _Node[T]] = field(default_factory=dict)
    param: _Node[T] | None = None
    wildcard: PathEntry[T] | None = None
    entry: PathEntry[T] | None = None


class RouteConflictError(ValueError):
    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class RouteEntry(Generic[T]):
    """One configured route before compilation: a template, its methods and a target."""

    template: Template
    methods: Sequence[str]
    target: T


class Router(Generic[T]):
    """Maps (method, path) to a target. Build with `Router.compile`; immutable afterwards."""

    def __init__(self) -> None:
        self._static: dict[bytes, PathEntry[T]] = {}
        self._root: _Node[T] = _Node()
        self._has_templates = False
        self.entries: list[PathEntry[T]] = []

    @classmethod
    def compile(cls, routes: Iterable[RouteEntry[T]]) -> Router[T]:
        """Build the router; RouteConflictError names the index of a route that repeats a
        (path, method) pair or uses the same shape of path as another with other names."""
        router = cls()
        by_shape: dict[tuple[tuple[str, str], ...], PathEntry[T]] = {}
        for index, route in enumerate(routes):
            # `/a/{id}` and `/a/{slug}` are the same path to a matcher: they must agree.
            shape = tuple(
                (kind, value if kind == "literal" else "")
                for kind, value in route.template.segments
            )
            entry = by_shape.get(shape)
            if entry is None:
                entry = PathEntry(route.template)
                by_shape[shape] = entry
                router._insert(entry)
            elif entry.template.text != route.template.text:
                raise RouteConflictError(
                    index,
                    f"path {route.template.text!r} matches the same requests as "
                    f"{entry.template.text!r}; use the same parameter names",
                )
            for method in route.methods:
                key = method.encode("ascii")
                if key in entry.by_method:
                    raise RouteConflictError(
                        index, f"{method} {route.template.text} is already routed by another route"
                    )
                entry.by_method[key] = route.target
        for entry in router.entries:
            entry.finish()
        return router

    def _insert(self, entry: PathEntry[T]) -> None:
        self.entries.append(entry)
        template = entry.template
        if template.is_literal:
            self._static[template.text.encode("ascii")] = entry
            return
        self._has_templates = True
        node = self._root
        for kind, value in template.segments:
            if kind == "literal":
                key = value.encode("ascii")
                child = node.literals.get(key)
                if child is None:
                    child = node.literals[key] = _Node()
                node = child
            elif kind == "param":
                if node.param is None:
                    node.param = _Node()
                node = node.param
            else:
                node.wildcard = entry
                return
        node.entry = entry

    def match(self, path: bytes) -> tuple[PathEntry[T], list[bytes]] | None:
        """The entry for `path` and the raw (still percent-encoded) parameter values in
        template order, or None. The caller checks the method against `entry.by_method`, and
        has refused paths a backend could decode differently (paths.py: `%2F`, `%2e%2e`...),
        so a `{param}` value is one segment to the backend too."""
        entry = self._static.get(path)
        if entry is not None:
            return entry, []
        if not self._has_templates or not path.startswith(b"/"):
            return None
        segments = path[1:].split(b"/")
        values: list[bytes] = []
        found = _search(self._root, segments, 0, values, path)
        if found is None:
            return None
        return found, values


def _search(
    node: _Node[T], segments: list[bytes], index: int, values: list[bytes], path: bytes
) -> PathEntry[T] | None:
    # Through nodes that offer nothing to fall back on (no parameter, no wildcard) a failed
    # literal cannot be retried another way: walk them in a loop, not a call per segment (most
    # templates begin with literals, `/v1/blogs/...`).
    count = len(segments)
    while index < count and node.param is None and node.wildcard is None:
        child = node.literals.get(segments[index])
        if child is None:
            return None
        node = child
        index += 1
    if index == count:
        if node.entry is not None:
            return node.entry
        if node.wildcard is not None:
            values.append(b"")
            return node.wildcard
        return None
    segment = segments[index]
    child = node.literals.get(segment)
    if child is not None:
        found = _search(child, segments, index + 1, values, path)
        if found is not None:
            return found
    if node.param is not None and segment:
        values.append(segment)
        found = _search(node.param, segments, index + 1, values, path)
        if found is not None:
            return found
        values.pop()
    if node.wildcard is not None:
        values.append(b"/".join(segments[index:]))
        return node.wildcard
    return None


def params_dict(entry: PathEntry[T], values: list[bytes]) -> dict[str, str]:
    """Parameter values by name (decoded as Latin-1: raw bytes of the request line)."""
    names = entry.template.param_names
    return {name: value.decode("latin-1") for name, value in zip(names, values, strict=True)}
