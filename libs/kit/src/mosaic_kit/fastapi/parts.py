"""`Part`: a value built at start-up that routes take as a typed dependency.

A service's lifespan builds its domain objects (the service, the database, the token verifier)
and hands each to the app under a `Part`; routes declare `Annotated[BlogService, Depends(SERVICE)]`
and get exactly that type, with no attribute names looked up on `app.state` by hand. The value is
kept per application, so two apps in one process (two replicas in a test) never share it.

`DATABASE` is the one part the kit's own FastAPI dependencies read (idempotency keeps its records
in the service's database); the chassis provides it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from starlette.requests import Request
from starlette.types import ASGIApp

if TYPE_CHECKING:
    from mosaic_kit.sql.db import Database

__all__ = ["DATABASE", "Part"]

T = TypeVar("T")

# The one attribute of `app.state` holding every provided part of that app.
_STATE_KEY = "mosaic_parts"


def _parts(app: Any) -> dict[Part[Any], object]:
    state = app.state
    parts: dict[Part[Any], object] | None = getattr(state, _STATE_KEY, None)
    if parts is None:
        parts = {}
        setattr(state, _STATE_KEY, parts)
    return parts


class Part(Generic[T]):
    """One named slot of an application, filled once while it starts."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Part({self.name!r})"

    def provide(self, app: ASGIApp, value: T) -> None:
        _parts(app)[self] = value

    def of(self, app: ASGIApp) -> T:
        """The value provided to `app`; `LookupError` when its lifespan has not provided it."""
        try:
            return cast("T", _parts(app)[self])
        except KeyError:
            raise LookupError(f"{self.name} is not provided: has the app started?") from None

    async def __call__(self, request: Request) -> T:
        # Async on purpose: FastAPI runs a sync dependency in a worker thread.
        return self.of(request.app)


DATABASE: Part[Database] = Part("the service's database")
