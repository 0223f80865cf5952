"""Reading an app's routes back: its API routes, and what each one depends on.

The OpenAPI post-processing (bearer security, gateway policies) learns from the routes
themselves what they require, so a route declares it once, in its signature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

__all__ = ["api_routes", "dependency_calls", "query_and_header_parameters"]


def api_routes(app: FastAPI) -> Iterator[APIRoute]:
    """Every API route, inside included routers too (reached through their contexts, with the
    router's prefix and dependencies applied, as FastAPI builds the document)."""
    for context in iter_route_contexts(app.routes):
        if isinstance(context.route, APIRoute):
            yield context.route


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        yield sub
        yield from _dependants(sub)


def dependency_calls(route: APIRoute) -> list[Callable[..., Any] | None]:
    """The callables of the route's whole dependency tree (its endpoint first)."""
    return [route.dependant.call, *(d.call for d in _dependants(route.dependant))]


def query_and_header_parameters(route: APIRoute) -> tuple[list[str], list[str]]:
    """The query parameter names and the (lower-case) header names the route's tree declares."""
    query: list[str] = []
    headers: list[str] = []
    for d in (route.dependant, *_dependants(route.dependant)):
        headers.extend(p.alias.lower() for p in d.header_params)
        query.extend(p.alias for p in d.query_params)
    return query, headers
