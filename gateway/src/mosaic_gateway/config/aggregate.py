"""A route's `aggregate`: one response merged from calls to several backends, in parallel or in
sequence (a later call's path may use fields of earlier answers)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field, field_validator, model_validator

from mosaic_gateway.config.backends import known_backends
from mosaic_gateway.config.base import ByteSize, Duration, Problem, Spec
from mosaic_gateway.routing.router import parse_template

if TYPE_CHECKING:
    from mosaic_gateway.config.document import GatewayConfig
    from mosaic_gateway.config.routes import RouteSpec

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PARAM_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\*")
_RESPONSE_REF = re.compile(r"resp([0-9]+)((?:\.[^.\s{}/?#&=]+)*)")
_DOT_PATH = re.compile(r"[^.\s]+(?:\.[^.\s]+)*")


@dataclass(frozen=True)
class Placeholder:
    """A `{...}` in an aggregate call's path: a route parameter (`{id}`, `{*}` for the
    wildcard) or a field of an earlier call's answer (`{resp0.author.id}`)."""

    text: str
    param: str | None  # the route parameter's name; None for an answer's field
    response: int  # the index of the answer read; -1 for a parameter
    field: tuple[str, ...]
    in_query: bool


def parse_call_path(path: str) -> tuple[str | Placeholder, ...]:
    """Split an aggregate call's path into literal text and placeholders (ValueError if bad)."""
    if not path.startswith("/"):
        raise ValueError("a call path starts with '/'")
    if any(char in path for char in " \t\r\n#\\") or not path.isascii():
        raise ValueError("a call path holds no spaces, '#', '\\' or non-ASCII characters")
    parts: list[str | Placeholder] = []
    end = 0
    for match in _PLACEHOLDER.finditer(path):
        literal = path[end : match.start()]
        if "{" in literal or "}" in literal:
            raise ValueError("unbalanced '{' or '}'")
        if literal:
            parts.append(literal)
        end = match.end()
        inner = match.group(1)
        in_query = "?" in path[: match.start()]
        response = _RESPONSE_REF.fullmatch(inner)
        if response:
            field = tuple(response.group(2).split(".")[1:])
            parts.append(Placeholder(match.group(0), None, int(response.group(1)), field, in_query))
        elif _PARAM_REF.fullmatch(inner):
            parts.append(Placeholder(match.group(0), inner, -1, (), in_query))
        else:
            raise ValueError(
                f"placeholder {match.group(0)!r}: use a route parameter ({{id}}, {{*}}) "
                "or a field of an earlier answer ({resp0.author.id})"
            )
    rest = path[end:]
    if "{" in rest or "}" in rest:
        raise ValueError("unbalanced '{' or '}'")
    if rest:
        parts.append(rest)
    return tuple(parts)


def _check_dot_path(path: str) -> str:
    if not _DOT_PATH.fullmatch(path):
        raise ValueError(f"{path!r} is not a dot path (e.g. author.name)")
    return path


class AggregateCallSpec(Spec):
    """`aggregate.backends[]`: one call, and what of its answer is kept."""

    backend: str = Field(description="A name under `backends`.")
    path: str = Field(
        description="Upstream path (and query); `{param}` of the route, `{respN.field}` of an "
        "earlier answer (sequential only)."
    )
    group: str | None = Field(None, min_length=1, description="Nest the answer under this key.")
    target: str | None = Field(None, description="Take this field (dot path) of the answer.")
    allow: list[str] | None = Field(None, description="Keep only these fields (dot paths).")
    deny: list[str] | None = Field(None, description="Drop these fields (dot paths).")
    mapping: dict[str, str] = Field(
        default_factory=dict, description="Rename top-level fields: {old: new}."
    )
    required: bool = Field(False, description="Its failure fails the whole response.")
    forward_query: bool = Field(True, description="Append the request's (allowed) query.")

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        parse_call_path(path)
        return path

    @field_validator("target")
    @classmethod
    def _check_target(cls, target: str | None) -> str | None:
        return None if target is None else _check_dot_path(target)

    @field_validator("allow", "deny")
    @classmethod
    def _check_fields(cls, paths: list[str] | None) -> list[str] | None:
        for path in paths or ():
            _check_dot_path(path)
        return paths

    @field_validator("mapping")
    @classmethod
    def _check_mapping(cls, mapping: dict[str, str]) -> dict[str, str]:
        for old, new in mapping.items():
            if not old or not new or "." in old or "." in new:
                raise ValueError(f"{old!r}: {new!r}: mapping renames top-level fields (no dots)")
        if len(set(mapping.values())) != len(mapping):
            raise ValueError("two fields are renamed to the same name")
        return mapping

    @model_validator(mode="after")
    def _allow_or_deny(self) -> AggregateCallSpec:
        if self.allow is not None and self.deny is not None:
            raise ValueError("give `allow` or `deny`, not both")
        return self

    @property
    def parts(self) -> tuple[str | Placeholder, ...]:
        return parse_call_path(self.path)


class AggregateSpec(Spec):
    """`routes[].aggregate`: the route is answered by merging the answers of several calls."""

    sequential: bool = Field(
        False, description="Call in order; later paths may use earlier answers."
    )
    timeout: Duration | None = Field(
        None, gt=0, description="For all the calls together; else the route's timeout."
    )
    max_response_bytes: ByteSize = Field(
        1024 * 1024, gt=0, description="Largest answer read from one call."
    )
    backends: list[AggregateCallSpec] = Field(min_length=1, max_length=32)


def check_aggregates(config: GatewayConfig) -> list[Problem]:
    """An aggregate's calls name known backends and use only the route's parameters and earlier
    answers; the route itself gives no backend or rewrite of its own."""
    problems: list[Problem] = []
    for index, route in enumerate(config.routes):
        if route.aggregate is not None:
            problems += _check_aggregate(config, index, route, route.aggregate)
    return problems


def _check_aggregate(
    config: GatewayConfig, index: int, route: RouteSpec, aggregate: AggregateSpec
) -> list[Problem]:
    where: tuple[str | int, ...] = ("routes", index)
    problems: list[Problem] = []
    if route.backend is not None:
        problems.append(((*where, "aggregate"), "give `backend` or `aggregate`, not both"))
    if set(route.methods) - {"GET", "HEAD"}:
        problems.append(((*where, "methods"), "an aggregate route serves GET (and HEAD) only"))
    if route.rewrite is not None:
        problems.append(((*where, "rewrite"), "an aggregate route's calls give their own paths"))
    template = parse_template(route.path)
    params = {value for kind, value in template.segments if kind != "literal"}
    groups: set[str] = set()
    for number, call in enumerate(aggregate.backends):
        at = (*where, "aggregate", "backends", number)
        if call.backend not in config.backends:
            known = known_backends(config)
            problems.append(
                ((*at, "backend"), f"unknown backend {call.backend!r} (known: {known})")
            )
        if call.group is not None:
            if call.group in groups:
                problems.append(((*at, "group"), f"group {call.group!r} is used twice"))
            groups.add(call.group)
        for part in call.parts:
            if isinstance(part, str):
                continue
            if part.param is not None:
                if part.param not in params:
                    problems.append(
                        ((*at, "path"), f"{part.text}: {route.path!r} has no such parameter")
                    )
            elif not aggregate.sequential:
                problems.append(
                    (
                        (*at, "path"),
                        f"{part.text}: answers can be used only with `sequential: true`",
                    )
                )
            elif part.response >= number:
                problems.append(
                    (
                        (*at, "path"),
                        f"{part.text}: call {number} can use only earlier answers "
                        f"(resp0..resp{number - 1})"
                        if number
                        else f"{part.text}: the first call has no earlier answer to use",
                    )
                )
    return problems
