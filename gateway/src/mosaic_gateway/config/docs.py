"""The `docs` section: the merged OpenAPI documents and the Swagger UI page."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from mosaic_gateway.config.backends import known_backends
from mosaic_gateway.config.base import Duration, Problem, Spec
from mosaic_gateway.config.routes import route_entries
from mosaic_gateway.routing.router import (
    RouteConflictError,
    RouteEntry,
    Router,
    TemplateError,
    parse_template,
)

if TYPE_CHECKING:
    from mosaic_gateway.config.document import GatewayConfig


class DocsSpec(Spec):
    """`docs`: Swagger UI over the backends' OpenAPI documents, merged into one."""

    path: str = Field("/docs", description="Swagger UI here, the merged document below it.")
    title: str = Field("Mosaic API", min_length=1)
    sources: dict[str, str] = Field(
        description="Backend name: path of its OpenAPI (JSON) document on its instances."
    )
    refresh: Duration = Field(300.0, gt=0, description="Fetch the documents again every.")
    timeout: Duration = Field(5.0, gt=0, description="For fetching one document.")

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        try:
            template = parse_template(path)
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
        if path == "/" or path.endswith("/") or not template.is_literal:
            raise ValueError("a literal path like /docs (no parameter, no trailing '/')")
        return path

    @field_validator("sources")
    @classmethod
    def _check_sources(cls, sources: dict[str, str]) -> dict[str, str]:
        for name, path in sources.items():
            if not path.startswith("/") or any(c in path for c in " \r\n#"):
                raise ValueError(f"{name}: {path!r} is not a path (starts with '/', no spaces)")
        return sources


def check_docs(config: GatewayConfig) -> list[Problem]:
    """The documents come from known backends, and the docs paths are free."""
    docs = config.docs
    if docs is None:
        return []
    problems: list[Problem] = []
    for name in docs.sources:
        if name not in config.backends:
            problems.append(
                (("docs", "sources", name), f"unknown backend (known: {known_backends(config)})")
            )
    entries = route_entries(config)
    entries += [
        RouteEntry(parse_template(path), ["GET"], -1)
        for path in (docs.path, docs.path + "/openapi.json")
    ]
    try:
        Router.compile(entries)
    except RouteConflictError as exc:
        # A conflict among the routes themselves is check_routes' to report.
        if exc.index >= len(config.routes):
            problems.append((("docs", "path"), f"{exc}: choose another docs path"))
    return problems
