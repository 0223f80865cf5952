"""What every section of the configuration shares: the strict model base, the unit types and the
shape of a cross-check's findings."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from mosaic_gateway.config.units import (
    DURATION_PATTERN,
    SIZE_PATTERN,
    parse_duration,
    parse_size,
)

# Where in the document (`("routes", 0, "backend")`) and what is wrong there: what a section's
# cross-check returns, for the loader to turn into `file:line:column: field: message`.
Problem = tuple[tuple[str | int, ...], str]

HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class Spec(BaseModel):
    """A mapping of the file: a misspelt field is an error, not a silently ignored setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _OrUnitString:
    """The JSON Schema of a unit type: the validators parse strings like `2s` into numbers, so
    an editor must accept both the number and the string (pydantic would only see the number)."""

    def __init__(self, pattern: str, description: str) -> None:
        self.pattern = f"^(?:{pattern})$"
        self.description = description

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        number = handler(schema)
        if "minimum" not in number and "exclusiveMinimum" not in number:
            number["minimum"] = 0  # the parsers refuse negative values
        text = {"type": "string", "pattern": self.pattern, "description": self.description}
        return {"anyOf": [number, text]}


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    _OrUnitString(DURATION_PATTERN, "Seconds with a unit: 250ms, 2s, 1.5m, 1h."),
]
ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    _OrUnitString(SIZE_PATTERN, "Bytes with a unit: 512B, 64KiB, 1MiB, 10MB, 1GiB."),
]
