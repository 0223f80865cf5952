"""Aggregation: one route answered by several backend calls, merged into one JSON document.

An aggregate route (`aggregate:` in the configuration instead of `backend:`) sends one GET per
configured call, in parallel or, with `sequential: true`, one after the other so that a later
call's path can use fields of earlier responses (`{resp0.author.id}`). Each call goes through its
backend's balancer, pools, breaker, ejection and retry budget (`upstream.fetch.Fetch`).

Each JSON answer is shaped in the order KrakenD uses: `target` (take one field), `allow` or
`deny` (keep or drop dot paths), `mapping` (rename top-level fields), then `group` (nest under a
key) or, without a group, merged into the top level (a non-object answer goes under
`collection`). Chained references read an answer after `target` and before the filters, so a
field can feed the next call without being shown to the client.

A call that fails (transport error, timeout, non-2xx status, not JSON, missing target or chained
field) leaves its part out: the response is still 200 but marked partial (`x-mosaic-completed:
false`, the missing parts named in `x-mosaic-missing`, and `cache-control: no-store` so no cache
keeps an incomplete answer). A failing `required` call fails the whole response with its own
status and body (or the gateway's 502/503/504 problem); when every call fails the client gets a
502 problem (504 when they all timed out).

Everything about a route (paths split into literals and slots, filter trees) is compiled once
per configuration; aggregation is not the plain proxy's hot path, so a request here may use a
task and a timer per call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from mosaic_gateway.config import AggregateCallSpec, Placeholder, RouteSpec
from mosaic_gateway.handlers.forward import append_forwarded
from mosaic_gateway.http import problems
from mosaic_gateway.http.problems import GatewayProblem
from mosaic_gateway.http.server import Exchange
from mosaic_gateway.http.wire import CRLF, HOP_BY_HOP
from mosaic_gateway.routing.paths import refusal as path_refusal
from mosaic_gateway.routing.router import parse_template
from mosaic_gateway.upstream.balancer import Backend, Instance
from mosaic_gateway.upstream.fetch import TIMEOUT, Fetch, FetchResult
from mosaic_kit.logging import get_logger

if TYPE_CHECKING:
    from mosaic_gateway.handlers.forward import Forwarder
    from mosaic_gateway.upstream.attempt import RetryPolicy

_log = get_logger("mosaic_gateway.handlers.aggregate")

# Request headers not copied to the calls: those of the proxy (hop-by-hop, framing, the ones
# the gateway sets), plus what would stop the answer from being plain JSON the gateway can
# read whole: content negotiation, compression, conditional and range requests.
_SKIP = HOP_BY_HOP | {
    b"content-length",
    b"content-type",
    b"expect",
    b"x-request-id",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"accept",
    b"accept-encoding",
    b"range",
    b"if-range",
    b"if-match",
    b"if-none-match",
    b"if-modified-since",
    b"if-unmodified-since",
}
_QUERY_ESCAPES = ((b"&", b"%26"), (b"=", b"%3D"), (b"+", b"%2B"), (b";", b"%3B"))
_JSON = b"application/json"
_COMPLETE = ((b"x-mosaic-completed", b"true"),)
_INCOMPLETE = (b"x-mosaic-completed", b"false")
_NO_STORE = (b"cache-control", b"no-store")

ALL_FAILED = GatewayProblem(
    502, "gateway.bad_gateway", "None of the aggregated upstream calls succeeded"
)
REQUIRED_FAILED = GatewayProblem(
    502, "gateway.bad_gateway", "A required upstream call gave no usable answer"
)

# A filter tree: field name -> None (the whole field) or the tree of its sub-fields.
Tree = dict[str, "Tree | None"]


def _tree(paths: Sequence[str]) -> Tree:
    tree: Tree = {}
    for path in paths:
        node = tree
        *parents, last = path.split(".")
        for name in parents:
            child = node.get(name, {})
            if child is None:  # the whole field is named already
                break
            node[name] = child
            node = child
        else:
            node[last] = None
    return tree


def _allow(value: Any, tree: Tree) -> Any:
    if isinstance(value, list):
        return [_allow(item, tree) for item in value]
    if not isinstance(value, dict):
        return value
    kept: dict[str, Any] = {}
    for name, sub in tree.items():
        if name in value:
            inner = value[name]
            if sub is None:
                kept[name] = inner
            elif isinstance(inner, (dict, list)):
                kept[name] = _allow(inner, sub)
    return kept


def _deny(value: Any, tree: Tree) -> Any:
    if isinstance(value, list):
        for item in value:
            _deny(item, tree)
    elif isinstance(value, dict):
        for name, sub in tree.items():
            if name in value:
                if sub is None:
                    del value[name]
                else:
                    _deny(value[name], sub)
    return value


def _rename(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, list):
        return [_rename(item, mapping) for item in value]
    if not isinstance(value, dict):
        return value
    renamed: dict[str, Any] = {}
    for name, inner in value.items():
        new = mapping.get(name)
        renamed[name if new is None else new] = inner
    return renamed


_MISSING = object()


def _lookup(value: Any, field: Sequence[str]) -> Any:
    """A dot path into a JSON value (a number indexes a list); `_MISSING` if absent."""
    for name in field:
        if isinstance(value, dict):
            if name not in value:
                return _MISSING
            value = value[name]
        elif isinstance(value, list) and name.isdigit() and int(name) < len(value):
            value = value[int(name)]
        else:
            return _MISSING
    return value


def _url_value(value: Any, *, in_query: bool) -> bytes | None:
    """A response field as one percent-encoded query value or path segment; None if it is not
    a usable scalar (absent, null, a boolean, an object, a list, empty), or in a path, if the
    backend could decode it into more or less than one segment (`a/b`, `..`: paths.py)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = value if isinstance(value, str) else str(value)
    if not text:
        return None
    encoded = quote(text, safe="").encode("ascii")
    if not in_query and path_refusal(b"/" + encoded) is not None:
        return None
    return encoded


@dataclass(frozen=True, slots=True)
class _Slot:
    """A compiled placeholder: a route parameter's segment, or a field of an earlier answer."""

    segment: int  # index in the request path's segments; -1 for a response field
    wildcard: bool
    response: int
    field: tuple[str, ...]
    in_query: bool
    text: str


class _Failure:
    """Why a call has no part in the answer; `result` is kept for a required call's status."""

    __slots__ = ("reason", "result")

    def __init__(self, reason: str, result: FetchResult | None = None) -> None:
        self.reason = reason
        self.result = result

    @property
    def timed_out(self) -> bool:
        return self.result is not None and self.result.timed_out


class AggregateCallPlan:
    """One configured call, compiled."""

    def __init__(
        self,
        index: int,
        spec: AggregateCallSpec,
        parts: tuple[bytes | _Slot, ...],
        backend: Backend,
        retry: RetryPolicy | None,
    ) -> None:
        self.index = index
        self.label = spec.group if spec.group is not None else str(index)
        self.backend = backend
        self.retry = retry
        self.parts = parts
        self.forward_query = spec.forward_query
        self.has_query = any(isinstance(part, bytes) and b"?" in part for part in parts)
        self.group = spec.group
        self.target = tuple(spec.target.split(".")) if spec.target else ()
        self.allow = _tree(spec.allow) if spec.allow is not None else None
        self.deny = _tree(spec.deny) if spec.deny else None
        self.mapping = dict(spec.mapping)
        self.required = spec.required

    def render_path(
        self, segments: list[bytes], query: bytes | None, answers: Sequence[Any]
    ) -> bytes | str:
        """The request target, or the text of the placeholder that has no value."""
        out: list[bytes] = []
        for part in self.parts:
            if isinstance(part, bytes):
                out.append(part)
                continue
            if part.segment >= 0:
                if part.wildcard:
                    value: bytes | None = b"/".join(segments[part.segment :])
                else:
                    value = segments[part.segment] if part.segment < len(segments) else None
                if value is not None and part.in_query:
                    for raw, escaped in _QUERY_ESCAPES:
                        value = value.replace(raw, escaped)
            else:
                answer = answers[part.response]
                value = (
                    None
                    if isinstance(answer, _Failure)
                    else _url_value(_lookup(answer, part.field), in_query=part.in_query)
                )
            if value is None:
                return part.text
            out.append(value)
        if self.forward_query and query:
            out += (b"&" if self.has_query else b"?", query)
        return b"".join(out)

    def shape(self, value: Any) -> Any:
        """Filters and renames an answer (already narrowed by `target`)."""
        if self.allow is not None:
            value = _allow(value, self.allow)
        elif self.deny is not None:
            value = _deny(value, self.deny)
        if self.mapping:
            value = _rename(value, self.mapping)
        return value

    def read(self, result: FetchResult) -> Any:
        """The answer's JSON narrowed by `target`, or a `_Failure`."""
        if result.error is not None:
            return _Failure(result.error.name, result)
        if not 200 <= result.status < 300:
            return _Failure(f"status_{result.status}", result)
        encoding = result.header(b"content-encoding")
        if encoding is not None and encoding.lower() != b"identity":
            return _Failure("encoded", result)
        try:
            value = orjson.loads(result.body)
        except orjson.JSONDecodeError:
            return _Failure("not_json", result)
        if self.target:
            value = _lookup(value, self.target)
            if value is _MISSING:
                return _Failure("target_missing", result)
        return value


class Aggregator:
    """A compiled aggregate route; `start` answers one admitted request."""

    def __init__(
        self,
        template: str,
        calls: list[AggregateCallPlan],
        *,
        sequential: bool,
        timeout: float,
        max_response_bytes: int,
        forwarder: Forwarder,
    ) -> None:
        self.forwarder = forwarder
        self.template = template
        self.calls = calls
        self.sequential = sequential
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        # Runs in progress: a task must be referenced, the loop only keeps weak references.
        self.running: set[_Run] = set()

    def start(self, exchange: Exchange) -> None:
        forwarder = self.forwarder
        run = _Run(self, forwarder, exchange)
        self.running.add(run)
        exchange.set_responder(run)
        run.task = forwarder.loop.create_task(run.main())
        run.task.add_done_callback(lambda _: self.running.discard(run))


class _Run:
    """One request being aggregated; the exchange's responder meanwhile."""

    __slots__ = (
        "aggregator",
        "answers",
        "common",
        "deadline",
        "exchange",
        "fetches",
        "forwarder",
        "task",
    )

    def __init__(self, aggregator: Aggregator, forwarder: Forwarder, exchange: Exchange) -> None:
        self.aggregator = aggregator
        self.forwarder = forwarder
        self.exchange = exchange
        self.deadline = forwarder.loop.time() + aggregator.timeout
        self.answers: list[Any] = [_Failure("not_called")] * len(aggregator.calls)
        self.fetches: list[Fetch] = []
        self.common: bytes | None = None
        self.task: asyncio.Task[None] | None = None

    # --- Responder: the answer is written whole at the end, there is nothing to pause ------

    def pause_response(self) -> None:
        pass

    def resume_response(self) -> None:
        pass

    def client_gone(self) -> None:
        self._cancel_fetches()
        if self.task is not None:
            self.task.cancel()

    # --- the calls --------------------------------------------------------------------------

    async def main(self) -> None:
        try:
            failed_required = await (
                self._in_order() if self.aggregator.sequential else self._in_parallel()
            )
            self._respond(failed_required)
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("aggregate_failed", route=self.aggregator.template)
            self.exchange.send_problem(problems.INTERNAL)
        finally:
            self._cancel_fetches()

    async def _in_parallel(self) -> AggregateCallPlan | None:
        calls = self.aggregator.calls
        segments, query = self._request_parts()
        by_future: dict[asyncio.Future[FetchResult], AggregateCallPlan] = {}
        for call in calls:
            target = call.render_path(segments, query, self.answers)
            if isinstance(target, str):  # cannot happen without chained fields; be safe
                self._missing(call, _Failure("field_missing"))
                if call.required:
                    return call
                continue
            by_future[self._fetch(call, target).start()] = call
        pending: set[asyncio.Future[FetchResult]] = set(by_future)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                call = by_future[future]
                if self._read(call, future.result()) and call.required:
                    return call  # no need to wait for the rest: the answer is an error
        return None

    async def _in_order(self) -> AggregateCallPlan | None:
        segments, query = self._request_parts()
        loop = self.forwarder.loop
        for call in self.aggregator.calls:
            target = call.render_path(segments, query, self.answers)
            if isinstance(target, str):
                # A chained field an earlier answer lacks (or that answer is missing).
                self._missing(call, _Failure(f"field_missing:{target}"))
            elif loop.time() >= self.deadline:
                self._missing(call, _Failure("timeout", FetchResult(0, [], b"", TIMEOUT)))
            elif not self._read(call, await self._fetch(call, target).start()):
                continue
            if call.required:
                return call
        return None

    def _request_parts(self) -> tuple[list[bytes], bytes | None]:
        return self.exchange.path[1:].split(b"/"), self.exchange.query

    def _fetch(self, call: AggregateCallPlan, target: bytes) -> Fetch:
        common = self._common_headers()
        request_line = b"GET " + target + b" HTTP/1.1\r\n"
        with_host = self.exchange.host is None

        def head(instance: Instance) -> bytes:
            if with_host:
                host = f"host: {instance.host}:{instance.port}\r\n".encode("ascii")
                return request_line + common + host + CRLF
            return request_line + common + CRLF

        fetch = Fetch(
            self.forwarder.loop,
            call.backend,
            head,
            deadline=self.deadline,
            max_bytes=self.aggregator.max_response_bytes,
            retry=call.retry,
        )
        self.fetches.append(fetch)
        return fetch

    def _read(self, call: AggregateCallPlan, result: FetchResult) -> bool:
        """Record a call's answer; True if it failed (already logged)."""
        answer = call.read(result)
        self.answers[call.index] = answer
        if isinstance(answer, _Failure):
            self._missing(call, answer)
            return True
        return False

    def _missing(self, call: AggregateCallPlan, failure: _Failure) -> None:
        self.answers[call.index] = failure
        _log.warning(
            "aggregate_call_failed",
            route=self.aggregator.template,
            call=call.label,
            backend=call.backend.name,
            reason=failure.reason,
            required=call.required,
            request_id=self.exchange.request_id.decode("latin-1"),
        )

    def _common_headers(self) -> bytes:
        """The header lines every call carries (forwarded ones, ids, identity), minus `Host`;
        rendered once per request."""
        if self.common is not None:
            return self.common
        exchange = self.exchange
        parts: list[bytes] = []
        forwarded_for: bytes | None = None
        # (Headers the client named in `Connection` were taken out by the server already.)
        for name, value in exchange.headers:
            if name in _SKIP:
                if name == b"x-forwarded-for" and self.forwarder.trust_forwarded:
                    forwarded_for = (
                        value if forwarded_for is None else forwarded_for + b", " + value
                    )
                continue
            parts += (name, b": ", value, CRLF)
        parts.append(b"accept: application/json\r\n")
        if exchange.host is not None:
            parts += (b"x-forwarded-host: ", exchange.host, CRLF)
        append_forwarded(parts, exchange, forwarded_for)
        self.common = b"".join(parts)
        return self.common

    def _cancel_fetches(self) -> None:
        for fetch in self.fetches:
            fetch.cancel()

    # --- the answer -------------------------------------------------------------------------

    def _respond(self, failed_required: AggregateCallPlan | None) -> None:
        exchange = self.exchange
        if exchange.finished:
            return
        if failed_required is not None:
            self._respond_required_failure(failed_required)
            return
        calls = self.aggregator.calls
        failures = [answer for answer in self.answers if isinstance(answer, _Failure)]
        if len(failures) == len(calls):
            timed_out = all(failure.timed_out for failure in failures)
            exchange.send_problem(
                problems.UPSTREAM_TIMEOUT if timed_out else ALL_FAILED,
                (_INCOMPLETE, _NO_STORE),
            )
            return
        document: dict[str, Any] = {}
        for call in calls:
            answer = self.answers[call.index]
            if isinstance(answer, _Failure):
                continue
            value = call.shape(answer)
            if call.group is not None:
                document[call.group] = value
            elif isinstance(value, dict):
                document.update(value)
            else:
                document["collection"] = value
        headers: Sequence[tuple[bytes, bytes]] = _COMPLETE
        if failures:
            missing = ",".join(
                call.label for call in calls if isinstance(self.answers[call.index], _Failure)
            )
            headers = (_INCOMPLETE, (b"x-mosaic-missing", missing.encode("utf-8")), _NO_STORE)
        exchange.respond(200, orjson.dumps(document), _JSON, headers)

    def _respond_required_failure(self, call: AggregateCallPlan) -> None:
        failure = self.answers[call.index]
        assert isinstance(failure, _Failure)
        result = failure.result
        headers = (_INCOMPLETE, (b"x-mosaic-missing", call.label.encode("utf-8")), _NO_STORE)
        if result is not None and result.error is None and not 200 <= result.status < 300:
            # The backend's own error, as a single-backend route would pass it through.
            content_type = result.header(b"content-type") or b"application/octet-stream"
            self.exchange.respond(result.status, result.body, content_type, headers)
            return
        error = result.error if result is not None else None
        if error is not None and error.status == 504:
            problem = problems.UPSTREAM_TIMEOUT
        elif error is not None and error.status == 503:
            problem = problems.UNAVAILABLE
        else:
            problem = REQUIRED_FAILED
        self.exchange.send_problem(problem, headers)


def compile_aggregate(
    route: RouteSpec,
    backends: dict[str, Backend],
    retry_policy: Callable[[str], RetryPolicy | None],
    timeout: float,
    forwarder: Forwarder,
) -> Aggregator:
    """Compile a route's `aggregate` section (already cross-checked by config/aggregate.py)."""
    spec = route.aggregate
    assert spec is not None
    positions: dict[str, int] = {}
    for index, (kind, value) in enumerate(parse_template(route.path).segments):
        if kind != "literal":
            positions[value] = index
    calls = []
    for index, call in enumerate(spec.backends):
        parts: list[bytes | _Slot] = []
        for piece in call.parts:
            if isinstance(piece, str):
                parts.append(piece.encode("ascii"))
            else:
                parts.append(_slot(piece, positions))
        calls.append(
            AggregateCallPlan(
                index, call, tuple(parts), backends[call.backend], retry_policy(call.backend)
            )
        )
    return Aggregator(
        route.path,
        calls,
        sequential=spec.sequential,
        timeout=spec.timeout or timeout,
        max_response_bytes=spec.max_response_bytes,
        forwarder=forwarder,
    )


def _slot(placeholder: Placeholder, positions: dict[str, int]) -> _Slot:
    if placeholder.param is not None:
        return _Slot(
            positions[placeholder.param],
            placeholder.param == "*",
            -1,
            (),
            placeholder.in_query,
            placeholder.text,
        )
    return _Slot(
        -1, False, placeholder.response, placeholder.field, placeholder.in_query, placeholder.text
    )
