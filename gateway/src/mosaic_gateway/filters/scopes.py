"""The scope rule of a route open to client applications (`auth.scopes`).

A client-credentials token carries the scopes auth granted it (`ClientPrincipal.scopes`); a route
asks for any one of its scopes (`any_of`) or every one (`all_of`). The rule is compiled once per
configuration into a frozenset and the 403 problem naming what is needed, so checking it per
request is one set operation. The JWT filter (jwt.py) applies it to client tokens; user tokens
are governed by the route's roles instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from mosaic_gateway.http.problems import GatewayProblem

__all__ = ["SCOPE_MISSING_CODE", "ScopeRule"]

SCOPE_MISSING_CODE = "auth.scope_missing"


class ScopeRule:
    __slots__ = ("mode", "problem", "scopes")

    def __init__(self, mode: Literal["any_of", "all_of"], scopes: Iterable[str]) -> None:
        self.mode = mode
        self.scopes = frozenset(scopes)
        if not self.scopes:
            raise ValueError("a scope rule needs at least one scope")
        listed = " ".join(sorted(self.scopes))
        detail = (
            f"This requires one of the scopes: {listed}"
            if mode == "any_of"
            else f"This requires all of the scopes: {listed}"
        )
        self.problem = GatewayProblem(403, SCOPE_MISSING_CODE, detail)

    def admits(self, granted: frozenset[str]) -> bool:
        if self.mode == "any_of":
            return not self.scopes.isdisjoint(granted)
        return self.scopes <= granted

    def __repr__(self) -> str:
        return f"ScopeRule({self.mode}={sorted(self.scopes)})"
