"""The problem responses of OpenAPI documents: every error status an operation can answer.

One description of the problem+json body (`PROBLEM_SCHEMA`, the component `Problem`) and one way
to declare which statuses an operation answers with it, so a client reading the document learns
every status it must handle, not just the success and 422:

* a route declares what its handler and dependencies raise, with `problem_responses(...)` as its
  `responses=`: statuses, or `{status: codes}` mappings (the groups below, or its own codes);
* `document_problems(schema)` (installed by `create_app`) adds what the kit answers for any
  operation: 422 where there are parameters or a body, 400 `http.malformed_json` and 413 where
  there is a body;
* the gateway merges what it answers itself (API key, rate limits, body limit, upstream
  failures) into its merged document with `add_problem_response`, from each route's policy.

Each response lists its stable codes in `x-problem-codes` (and in its description), so merging
two sources of the same status keeps both codes. No framework is imported here: the gateway's
workers use it too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

__all__ = [
    "BODY_PROBLEMS",
    "CURSOR_PROBLEMS",
    "IDEMPOTENCY_PROBLEMS",
    "PROBLEM_CONTENT_TYPE",
    "PROBLEM_REF",
    "PROBLEM_SCHEMA",
    "ROLE_PROBLEMS",
    "TOKEN_PROBLEMS",
    "UNAVAILABLE_PROBLEMS",
    "ProblemSpec",
    "add_problem_response",
    "document_problems",
    "problem_codes",
    "problem_responses",
    "route_responses",
    "sort_responses",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"
CODES_KEY = "x-problem-codes"

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; `code` is stable and machine-readable.",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "examples": ["urn:mosaic:problem:validation_failed"]},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "code": {"type": "string", "examples": ["validation_failed"]},
        "instance": {"type": "string", "description": "The request path (absent from a 500)."},
        "errors": {
            "type": "array",
            "description": "Validation failures (422): one entry per problem.",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

ProblemSpec = int | Mapping[int, str | Iterable[str]]
"""A status, or statuses with the codes an operation answers with them."""

# What the kit's own machinery answers, for routes to name in `problem_responses`.
TOKEN_PROBLEMS: Mapping[int, tuple[str, ...]] = {
    401: ("auth.token_missing", "auth.token_invalid", "auth.token_expired", "auth.token_revoked"),
    503: ("auth.keys_unavailable",),
}
"""A route that needs a bearer token (`current_principal`, `require_roles`)."""
ROLE_PROBLEMS: Mapping[int, tuple[str, ...]] = {**TOKEN_PROBLEMS, 403: ("auth.forbidden",)}
"""A route that needs one of some roles (`require_roles`)."""
CURSOR_PROBLEMS: Mapping[int, tuple[str, ...]] = {400: ("http.bad_cursor",)}
"""A keyset-paginated list (`?cursor=`)."""
IDEMPOTENCY_PROBLEMS: Mapping[int, tuple[str, ...]] = {
    409: ("idempotency.in_progress",),
    422: ("idempotency.key_reused",),
}
"""A creating POST taking `Idempotency-Key` (`IdempotencyGuard`)."""
BODY_PROBLEMS: Mapping[int, tuple[str, ...]] = {
    400: ("http.malformed_json",),
    413: ("http.payload_too_large",),
    415: ("http.unsupported_media_type",),
}
"""Any operation with a request body (added by `document_problems`)."""
UNAVAILABLE_PROBLEMS: Mapping[int, tuple[str, ...]] = {503: ("service.unavailable",)}
"""Any operation that needs the database (or NATS) to answer (`mosaic_kit.problem`)."""

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 0},
    }
}
_VALIDATION_CODE = "validation_failed"


def problem_codes(response: Mapping[str, Any]) -> list[str]:
    """The codes a response object lists (empty when it lists none)."""
    codes = response.get(CODES_KEY)
    return [code for code in codes if isinstance(code, str)] if isinstance(codes, list) else []


def problem_responses(*problems: ProblemSpec) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for these statuses (codes of one status are merged)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status, codes in _flatten(problems):
        _merge(out.setdefault(status, {}), status, codes)
    return out


def route_responses(
    *specs: ProblemSpec, answer: type[Any] | None = None, status: int = 200
) -> dict[int | str, dict[str, Any]]:
    """A route's FastAPI `responses=`: its answer's shape (`answer`, a pydantic model, under
    `status`) and the problems it raises, so that the OpenAPI document lists every status a
    client must handle. Every route of a service reads its database, and losing it is a 503."""
    documented = problem_responses(UNAVAILABLE_PROBLEMS, *specs)
    if answer is not None:
        documented[status] = {"model": answer}
    return documented


def add_problem_response(responses: dict[str, Any], status: int, codes: Iterable[str] = ()) -> None:
    """Merge a problem answer into a document's `responses` (keys are strings there).

    A status the operation already documents keeps its description's codes and gains these; a
    response documented with another content type gains the problem one beside it.
    """
    _merge(responses.setdefault(str(status), {}), status, codes)


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Complete a FastAPI document: the `Problem` component, 422 as a problem, and what the
    kit answers for any operation with a body (413; with a JSON body 400 `http.malformed_json`
    and 415 too)."""
    for operations in schema.get("paths", {}).values():
        if not isinstance(operations, dict):
            continue
        for operation in operations.values():
            responses = operation.get("responses") if isinstance(operation, dict) else None
            if not isinstance(responses, dict):
                continue
            if "422" in responses:
                # FastAPI's own 422 (its validation-error shape) is replaced; a route's declared
                # 422 codes are kept.
                if PROBLEM_CONTENT_TYPE not in responses["422"].get("content", {}):
                    responses["422"] = {}
                add_problem_response(responses, 422, [_VALIDATION_CODE])
            if "requestBody" in operation:
                # 400 `http.malformed_json` and 415 are answers about a JSON body only: an
                # operation reading a form (the OAuth endpoints) answers its own errors there.
                media = operation["requestBody"].get("content", {})
                json_body = any(m == "application/json" or m.endswith("+json") for m in media)
                for status, codes in BODY_PROBLEMS.items():
                    if json_body or status == 413:
                        add_problem_response(responses, status, codes)
            for response in responses.values():
                for media in response.get("content", {}).values():
                    _documented_answer_wins(media)
            operation["responses"] = sort_responses(responses)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    # FastAPI's validation-error models are unreferenced now (unless a route names them);
    # the first refers to the second, hence the order.
    for name in ("HTTPValidationError", "ValidationError"):
        others = {key: value for key, value in schemas.items() if key != name}
        in_use = f"#/components/schemas/{name}" in json.dumps([schema.get("paths"), others])
        if name in schemas and not in_use:
            del schemas[name]
    return schema


def sort_responses(responses: Mapping[str, Any]) -> dict[str, Any]:
    """In status order (`default` and ranges like `4XX` last), as readers scan them."""
    return dict(sorted(responses.items(), key=lambda item: (not item[0].isdigit(), item[0])))


def _documented_answer_wins(media: dict[str, Any]) -> None:
    # A route returning `dict[str, Any]` that documents its answer's model (`responses=`) gets
    # both schemas merged by FastAPI: the `$ref` beside an open object. The model is the answer.
    schema = media.get("schema")
    if (
        isinstance(schema, dict)
        and "$ref" in schema
        and schema.get("type", "object") == "object"
        and schema.get("additionalProperties", True)
    ):
        media["schema"] = {"$ref": schema["$ref"]}


def _flatten(problems: Iterable[ProblemSpec]) -> Iterable[tuple[int, Iterable[str]]]:
    for spec in problems:
        if isinstance(spec, int):
            yield spec, ()
            continue
        for status, codes in spec.items():
            yield status, (codes,) if isinstance(codes, str) else codes


def _merge(response: dict[str, Any], status: int, codes: Iterable[str]) -> None:
    known = problem_codes(response)
    known += [code for code in codes if code not in known]
    phrase = HTTPStatus(status).phrase
    response["description"] = (
        f"{phrase}: " + ", ".join(f"`{code}`" for code in known) if known else phrase
    )
    if known:
        response[CODES_KEY] = known
    content = response.setdefault("content", {})
    ref = {"$ref": PROBLEM_REF}
    current = content.get(PROBLEM_CONTENT_TYPE, {}).get("schema")
    if current is None:
        content[PROBLEM_CONTENT_TYPE] = {"schema": ref}
    elif current != ref and ref not in current.get("anyOf", ()):
        # Another problem shape documented first (a backend's own): either may be answered.
        content[PROBLEM_CONTENT_TYPE] = {"schema": {"anyOf": [current, ref]}}
    if status in (429, 503):
        response.setdefault("headers", {}).update(_RETRY_AFTER)
