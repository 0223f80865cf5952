"""The configuration file's JSON Schema, generated from the models, for editors (completion,
hover help, early errors). The gateway itself validates with the models (`load_config`), which
also run the cross-checks a schema cannot express; the schema only has to accept every valid file
and describe its fields. `gateway/gateway.schema.json` is this, committed."""

from __future__ import annotations

import json
from typing import Any

from mosaic_gateway.config.document import GatewayConfig

DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Pydantic writes a bound it cannot attach to the number itself (on an optional unit type) with
# its own name beside the alternatives; these are the JSON Schema keywords it means.
_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}
_LOWER = ("minimum", "exclusiveMinimum")


def json_schema() -> dict[str, Any]:
    generated = GatewayConfig.model_json_schema()
    _standard_bounds(generated)
    generated["title"] = "Mosaic gateway configuration"
    return {"$schema": DIALECT, **generated}


def render_json_schema() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def _standard_bounds(node: object) -> None:
    if isinstance(node, list):
        for item in node:
            _standard_bounds(item)
        return
    if not isinstance(node, dict):
        return
    bounds = {_BOUNDS[key]: node.pop(key) for key in list(node) if key in _BOUNDS}
    if bounds:
        for target in _numbers(node):
            if any(keyword in bounds for keyword in _LOWER):
                # The field's bound is the stricter one: every bound in the models is >= 0,
                # the floor a unit type puts on its numbers.
                for keyword in _LOWER:
                    target.pop(keyword, None)
            target.update(bounds)
    for value in node.values():
        _standard_bounds(value)


def _numbers(node: dict[str, Any]) -> list[dict[str, Any]]:
    if node.get("type") in ("number", "integer"):
        return [node]
    return [found for branch in node.get("anyOf", ()) for found in _numbers(branch)]
