"""A route's gateway policy, declared beside the route and published in the service's OpenAPI.

Each operation the gateway exposes carries an `x-mosaic-gateway` object in the service's own
OpenAPI document: who may call it (API key, bearer token, roles, the scopes a client application's
token needs on a route open to client applications), which request headers and query
parameters reach the service (the gateway denies the rest), how big its body may be, whether its
answers are cached and which events drop them, its rate limit. The FastAPI adapter writes it
(`mosaic_kit.fastapi.gateway`: declared with `through_gateway(...)`, completed from the route's own
parameters and dependencies); `mosaic up` reads it to generate the gateway's routes, so a route is
declared in exactly one place. An operation without the extension is not exposed.

No framework here: the devstack reads documents with it, whatever built them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "EXTENSION",
    "JSON_BODY",
    "NO_BODY",
    "SCOPE_PATTERN",
    "GatewayPolicy",
    "ScopeRule",
    "exposed_operations",
]

EXTENSION = "x-mosaic-gateway"

# Body limits. Not 0 for a route without a body: 0 means "no limit" to the gateway.
NO_BODY = "1KiB"
# A JSON body of a few fields (sign-in, a profile change, roles): a few hundred bytes.
JSON_BODY = "16KiB"

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


SCOPE_PATTERN = r"^[a-z]+:[a-z]+$"


class ScopeRule(BaseModel):
    """The scopes a client application's token needs: any one of `any_of`, or all of `all_of`."""

    model_config = ConfigDict(extra="forbid")

    any_of: tuple[Annotated[str, Field(pattern=SCOPE_PATTERN)], ...] | None = Field(
        None, min_length=1
    )
    all_of: tuple[Annotated[str, Field(pattern=SCOPE_PATTERN)], ...] | None = Field(
        None, min_length=1
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ScopeRule:
        if (self.any_of is None) == (self.all_of is None):
            raise ValueError("give exactly one of any_of or all_of")
        return self


class GatewayPolicy(BaseModel):
    """What the gateway enforces for one operation (the gateway's route schema, docs/gateway.md)."""

    model_config = ConfigDict(extra="forbid")

    api_key: Literal["required", "off"] = Field(
        "required", description="`x-api-key` required (the calling application), or not asked."
    )
    jwt: Literal["required", "optional", "off"] = Field(
        "off", description="A bearer token: required, checked when sent, or not looked at."
    )
    roles: tuple[str, ...] = Field((), description="Any one of these roles admits.")
    scopes: ScopeRule | None = Field(
        None,
        description="Open to client applications: a client token with these scopes is accepted "
        "in place of the API key.",
    )
    headers: tuple[str, ...] = Field(
        (), description="Request headers the operation reads, beyond the gateway's base set."
    )
    query: tuple[str, ...] = Field((), description="Query parameters the operation reads.")
    max_body_bytes: str = Field(NO_BODY, description="Largest body the gateway lets through.")
    cache: Mapping[str, Any] | None = Field(
        None, description="The gateway's `cache` section: ttl, vary_headers, invalidate_on."
    )
    rate_limit: Mapping[str, Any] | None = Field(
        None, description="The gateway's `rate_limit` section: requests, per, by, shared."
    )


def exposed_operations(document: Mapping[str, Any]) -> Iterator[tuple[str, str, GatewayPolicy]]:
    """(path, METHOD, policy) of every operation of an OpenAPI document that declares one.

    Raises pydantic's ValidationError for an extension that is not a policy."""
    for path, item in document.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if isinstance(operation, Mapping) and EXTENSION in operation:
                yield path, method.upper(), GatewayPolicy.model_validate(operation[EXTENSION])
