"""Input types every service's request bodies and parameters are built from.

One rule lives here: no text input may contain the NUL character (U+0000). PostgreSQL cannot
store it in `text` columns nor compare with it, so a NUL that reached a query would fail there as
a 500; here it is a 422 `validation_failed` naming the field, like any other invalid input.

* Request bodies derive from `RequestBody`: every field of every subclass is checked, strings
  in lists included, so a field added later cannot forget the rule; nested objects derive from
  it too (a free-form `dict` field declares its values as `Text`). It also gives the bodies
  their wire names (camelCase).
* Query and path parameters that are text are declared as `Text` (add `Query(...)` or
  `StringConstraints(...)` around it as usual: `Annotated[Text, Query(max_length=50)]`).

The models that document answers (`route_responses(answer=...)`) derive from `ResponseBody`,
for the same wire names.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, field_validator
from pydantic.alias_generators import to_camel

__all__ = ["NUL_MESSAGE", "RequestBody", "ResponseBody", "Text", "reject_nul"]

NUL_MESSAGE = "must not contain the NUL character (U+0000)"
# Deeper than any request body nests lists; bounds the walk of a hostile one.
_MAX_DEPTH = 32


def _has_nul(value: Any, depth: int = 0) -> bool:
    # Objects are not entered: a nested object is a `RequestBody` too and checks its own fields,
    # which names the innermost field (`author.name`) rather than the outer one.
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple) and depth < _MAX_DEPTH:
        return any(_has_nul(item, depth + 1) for item in value)
    return False


def reject_nul(value: Any) -> Any:
    """`value` unchanged, or a ValueError when it is or holds text with a NUL in it.

    Runs before any other validation (a "before" validator), so the client reads this reason
    rather than one about a length or a pattern the NUL happened to break too.
    """
    if _has_nul(value):
        raise ValueError(NUL_MESSAGE)
    return value


Text = Annotated[str, BeforeValidator(reject_nul)]
"""A text query or path parameter (or body field): a `str` without NUL."""


class RequestBody(BaseModel):
    """Base of every request body: camelCase on the wire, and no NUL in any of its text."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return reject_nul(value)


class ResponseBody(BaseModel):
    """Base of the models documenting an answer: camelCase on the wire, as the bodies are."""

    model_config = ConfigDict(alias_generator=to_camel)
