"""Routes declare their gateway policy where they are defined; the OpenAPI document carries it.

A route the gateway exposes says so in its decorator, with what only the service knows:

    @router.post("/auth/signin", openapi_extra=through_gateway(body=JSON_BODY, rate_limit=...))

`publish_policies` (installed by `create_app`) completes each declaration from the route itself and
writes it as the operation's `x-mosaic-gateway` (`mosaic_kit.gateway_policy.GatewayPolicy`):

- `jwt: required` when the route depends on `current_principal` (`optional` on
  `optional_principal`), with the roles of its `require_roles(...)`;
- the query parameters and headers it declares (`Idempotency-Key` included), `authorization`
  when it reads a token;
- the body limit: as declared, else `NO_BODY` without a body and `JSON_BODY` with one.

Scopes are declared beside the roles, in the decorator: `through_gateway(scopes=["blogs:read"])`
opens the route to third-party applications whose client-credentials token holds any one of them
(`all_scopes=True`: all of them); the gateway then accepts such a token in place of the API key
and sends the service `x-client-id` / `x-client-scopes` instead of the token.

So adding a route, a query parameter or a role needs no edit anywhere else: `mosaic up` generates
the gateway's routes from the services' documents. A route without `through_gateway` is not
exposed (the gateway denies by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from mosaic_kit.fastapi.auth import RequireRoles, current_principal, optional_principal
from mosaic_kit.fastapi.routes import api_routes, dependency_calls, query_and_header_parameters
from mosaic_kit.gateway_policy import EXTENSION, JSON_BODY, NO_BODY, GatewayPolicy

__all__ = ["policy_of", "publish_policies", "through_gateway"]

_DECLARED = "x-mosaic-gateway-declared"


def through_gateway(
    *,
    api_key: bool = True,
    body: str | None = None,
    headers: Sequence[str] = (),
    cache: Mapping[str, Any] | None = None,
    rate_limit: Mapping[str, Any] | None = None,
    scopes: Sequence[str] = (),
    all_scopes: bool = False,
) -> dict[str, Any]:
    """The `openapi_extra` of a route the gateway exposes.

    `api_key=False` opens it to callers without an API key (the JWKS); `body` is its body limit;
    `headers` are request headers it reads without declaring them as parameters; `cache` and
    `rate_limit` are the gateway's sections of those names (docs/gateway.md); `scopes` opens it
    to client applications whose token holds any one of them (every one with `all_scopes`).
    """
    declared: dict[str, Any] = {"api_key": "required" if api_key else "off"}
    if scopes:
        declared["scopes"] = {"all_of" if all_scopes else "any_of": list(scopes)}
    elif all_scopes:
        raise ValueError("all_scopes needs scopes")
    if body is not None:
        declared["max_body_bytes"] = body
    if headers:
        declared["headers"] = [name.lower() for name in headers]
    if cache is not None:
        declared["cache"] = dict(cache)
    if rate_limit is not None:
        declared["rate_limit"] = dict(rate_limit)
    return {_DECLARED: declared}


def policy_of(route: APIRoute) -> GatewayPolicy | None:
    """The route's full policy, or None when it is not exposed."""
    declared = (route.openapi_extra or {}).get(_DECLARED)
    if declared is None:
        return None
    calls = dependency_calls(route)
    roles = sorted({role for c in calls if isinstance(c, RequireRoles) for role in c.roles})
    jwt = "off"
    if current_principal in calls:
        jwt = "required"
    elif optional_principal in calls:
        jwt = "optional"
    headers = list(declared.get("headers", ()))
    if jwt != "off":
        headers.append("authorization")
    query, declared_headers = query_and_header_parameters(route)
    headers.extend(declared_headers)
    has_body = route.body_field is not None
    return GatewayPolicy.model_validate(
        {
            **declared,
            "jwt": jwt,
            "roles": roles,
            "headers": list(dict.fromkeys(headers)),
            "query": list(dict.fromkeys(query)),
            "max_body_bytes": declared.get("max_body_bytes", JSON_BODY if has_body else NO_BODY),
        }
    )


def publish_policies(app: FastAPI, document: dict[str, Any]) -> dict[str, Any]:
    """`document` with every exposed operation's `x-mosaic-gateway` written out in full."""
    for route in api_routes(app):
        policy = policy_of(route)
        item = document.get("paths", {}).get(route.path_format, {})
        for method in route.methods or ():
            operation = item.get(method.lower())
            if operation is None:
                continue
            operation.pop(_DECLARED, None)
            if policy is not None:
                operation[EXTENSION] = policy.model_dump(mode="json", exclude_none=True)
    return document
