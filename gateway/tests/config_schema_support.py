"""Checking a configuration file against the committed JSON Schema, as an editor would."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from mosaic_gateway.config.yaml_source import load_yaml

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "gateway.schema.json"


@cache
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _as_yaml_1_2(value: Any) -> Any:
    # PyYAML (YAML 1.1) reads an unquoted `on:` key as true; editors read YAML 1.2, where it is
    # the string the schema names (the gateway takes it back the same way, backends.py).
    if isinstance(value, dict):
        return {("on" if key is True else key): _as_yaml_1_2(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_yaml_1_2(item) for item in value]
    return value


def schema_errors(text: str) -> list[str]:
    """Each place where the YAML document breaks the schema, as `a.b[0].c: message`."""
    document = _as_yaml_1_2(load_yaml(text).data)
    found = []
    for error in validator().iter_errors(document):
        # Within an `anyOf` (optional fields, unit types), the deepest failure says what is wrong.
        deepest = best_match([error])
        path = deepest.absolute_path
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)
        found.append(f"{where.lstrip('.')}: {deepest.message}")
    return sorted(found)
