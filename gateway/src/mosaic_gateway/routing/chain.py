"""A route's request path: its filters in order, then the handler that answers.

A configuration compiles, per route, the filters its settings ask for (filters/pipeline.py says
which and in what order) and one terminal handler (forwarding, aggregation, or an answer of the
gateway's own). Per request, `Chain.run` calls each filter's `on_request`; a filter returns

* `True`: go on, in the same call (every answer was in memory: the usual case);
* `False`: the filter answered the request itself (a refusal, a cache hit, a CORS preflight);
* an awaitable of one of the two: the answer needs I/O (auth asked about a new API key, a
  shared rate-limit count, a fetch in flight for the same cache key). The chain goes on from
  the next filter when it resolves, unless the client left meanwhile.

A filter that wants to see the response attaches a `ResponseHook` to the exchange (the cache
tees the body into an entry); the handler that relays an upstream response calls it. State one
request needs lives with its filter's hook or in the filter's own call, not on the exchange.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeAlias

from mosaic_gateway.http import problems
from mosaic_gateway.http.server import Exchange, ResponseHook
from mosaic_kit.logging import get_logger

__all__ = ["Chain", "Filter", "LocalAnswer", "ResponseHook", "Step", "Terminal"]

_log = get_logger("mosaic_gateway.routing.chain")

Step: TypeAlias = "bool | Awaitable[bool]"


class Filter(Protocol):
    """One feature of a route (API key, JWT and roles, rate limit, header filtering, cache...)."""

    def on_request(self, exchange: Exchange) -> Step:
        """True: go on. False: answered already. An awaitable: resolves to one of the two."""


class Terminal(Protocol):
    """What ends a chain: starts answering an admitted request (and finishes it, eventually)."""

    def start(self, exchange: Exchange) -> None: ...


class Chain:
    """A route's filters and its terminal handler, compiled once per configuration."""

    __slots__ = ("_steps", "filters", "loop", "terminal")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, filters: Sequence[Filter], terminal: Terminal
    ) -> None:
        self.loop = loop
        self.filters = tuple(filters)
        self.terminal = terminal
        # Each filter's bound `on_request` with the index to resume after it: made once, so a
        # request's walk is one tuple iteration (no attribute lookups, no indexing).
        self._steps = tuple((index + 1, each.on_request) for index, each in enumerate(self.filters))

    def run(self, exchange: Exchange, start: int = 0) -> None:
        for following, on_request in self._steps[start:] if start else self._steps:
            step = on_request(exchange)
            if step is True:
                continue
            if step is False:
                _answered(exchange)
            else:
                self.loop.create_task(self._resume(exchange, step, following))
            return
        self.terminal.start(exchange)

    async def _resume(self, exchange: Exchange, step: Awaitable[bool], following: int) -> None:
        try:
            go_on = await step
        except Exception:
            _log.exception("filter_failed", request_id=exchange.request_id.decode("latin-1"))
            _answered(exchange)
            if not exchange.finished:
                exchange.send_problem(problems.INTERNAL)
            return
        if go_on and not exchange.finished:
            self.run(exchange, following)
        else:
            _answered(exchange)


def _answered(exchange: Exchange) -> None:
    """A filter answered (or the client left): a hook an earlier filter attached is told that
    no upstream response will come."""
    hook = exchange.hook
    if hook is not None:
        exchange.hook = None
        hook.abandon()


class LocalAnswer:
    """A terminal answered by a function of the gateway (the merged OpenAPI documents)."""

    __slots__ = ("answer",)

    def __init__(self, answer: Callable[[Exchange], None]) -> None:
        self.answer = answer

    def start(self, exchange: Exchange) -> None:
        self.answer(exchange)
