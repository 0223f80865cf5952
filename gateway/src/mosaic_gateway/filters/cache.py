"""The response cache for GET per route, in each worker's memory.

A route with `cache:` gets a `RouteCache` (its partition of the worker's `CacheStore`), the last
filter of its chain (routing/chain.py), after every check and the header and query filters:

* a fresh entry answers at once, in one write: the stored head (status line and the upstream's
  headers, minus the per-request ones) plus a fresh `date`, `age`, `x-cache: HIT` and the
  request's `x-request-id`, then the body (none for HEAD: HEAD is served from the GET entry);
* a miss while the same key is already being fetched waits for that fetch (concurrent misses are
  coalesced), and is answered from its entry when it lands, or sent on by itself if it does not
  (the filter's step resolves: False, answered; True, the chain goes on);
* otherwise the request goes on with a `Capture` as its response hook, which
  adds `x-cache: MISS` (or `BYPASS`) to the response head and, for a storable response, tees the
  head and body into a new entry when the response completes.

The key is everything forwarded that can change the answer: the path, the query string as it
goes upstream (after the route's query allow-list), the `Host` (forwarded, and the source of
`x-forwarded-host`: a client's own `x-forwarded-host` is never forwarded) and the values of the
route's `vary_headers`; the route itself is a prefix. HEAD is answered from the GET entry and never
stored. Other forwarded headers either make the backend say so with `Vary` (an answer varying on
a header outside the key is not stored; nor is a compressed one unless the key varies on
`accept-encoding`), or are known to steer what a framework serves without a `Vary`
(`_UNKEYED_STEERING`: `x-original-url`, `forwarded`, method overrides...): a request carrying one
bypasses the cache, as one carrying `Authorization` or `Cookie` does, unless the key varies on it.

Invalidation drops a route's whole partition: on a matching event (cache_invalidation.py), on
a successful unsafe request (POST, PUT, PATCH, DELETE...) through the same route in this worker,
and when the NATS connection was lost (events may have been missed). Each partition counts its
drops (`generation`): a response fetched before a drop is never stored after it, so a fetch that
raced an invalidation cannot bring the old content back.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from mosaic_gateway.http.server import Exchange, StateKey
from mosaic_gateway.http.wire import CRLF, HOP_BY_HOP, connection_tokens, status_line
from mosaic_gateway.routing.chain import Step
from mosaic_kit.logging import get_logger

if TYPE_CHECKING:
    from mosaic_gateway.config import CacheBoundsSpec, RouteCacheSpec

__all__ = ["CACHE_STATUS", "CacheStore", "Capture", "Entry", "RouteCache"]

_log = get_logger("mosaic_gateway.filters.cache")

# The cache's verdict on the request, for the access log, metrics and the span: "HIT", "MISS"
# or "BYPASS"; unset on a route without a cache.
CACHE_STATUS: StateKey[str] = StateKey("cache_status")

_HIT_TAIL = b"age: %d\r\nx-cache: HIT\r\nx-request-id: "
_MISS_LINE = b"x-cache: MISS\r\n"
_BYPASS_LINE = b"x-cache: BYPASS\r\n"
# Headers a backend framework may let override the URL, host, scheme or method it serves, with
# no `Vary` to tell: forwarded with a request, they must not pick what others are served.
_UNKEYED_STEERING = frozenset(
    {
        b"forwarded",
        b"x-forwarded-prefix",
        b"x-forwarded-port",
        b"x-forwarded-scheme",
        b"x-forwarded-server",
        b"x-forwarded-ssl",
        b"x-original-url",
        b"x-original-host",
        b"x-rewrite-url",
        b"x-host",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
    }
)
# Request headers the lookup looks at besides the route's vary headers.
_STEERING = frozenset({b"authorization", b"cookie", b"cache-control", b"pragma"}) | (
    _UNKEYED_STEERING
)
# Always part of the key: a different Host is a different resource (RFC 9111 keys on the URI).
_HOST = b"host"
# Response headers not stored: per hop, per request (re-made on each hit), or the framing
# (a stored body always gets a content-length).
_NOT_STORED = HOP_BY_HOP | {b"x-request-id", b"date", b"age", b"content-length", b"x-cache"}
_CACHED_METHODS = frozenset({b"GET", b"HEAD"})
_SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
_REQUEST_DIRECTIVES = frozenset({b"cache-control", b"pragma"})
# Bodies up to this size go out in the same write as the head; bigger ones are not copied.
_JOIN_MAX = 64 * 1024
# Approximate bookkeeping cost of an entry beyond its bytes (objects, dict slots).
_ENTRY_OVERHEAD = 200


class Entry:
    """A stored response: the rendered head (without the per-request lines) and the body."""

    __slots__ = ("age_base", "body", "expires", "head", "key", "partition", "size", "stored")

    def __init__(
        self,
        key: bytes,
        head: bytes,
        body: bytes,
        *,
        stored: float,
        expires: float,
        age_base: int,
        partition: RouteCache,
    ) -> None:
        self.key = key
        self.head = head
        self.body = body
        self.stored = stored
        self.expires = expires
        self.age_base = age_base
        self.partition = partition
        self.size = len(key) + len(head) + len(body) + _ENTRY_OVERHEAD


class CacheStore:
    """All of one worker's entries, least recently used first, within the configured bounds."""

    __slots__ = ("clock", "entries", "max_bytes", "max_entries", "max_entry_bytes", "size")

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        max_entry_bytes: int,
        clock: Callable[[], float],
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.clock = clock
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.size = 0

    @classmethod
    def from_config(cls, bounds: CacheBoundsSpec, clock: Callable[[], float]) -> CacheStore:
        return cls(
            max_entries=bounds.max_entries,
            max_bytes=bounds.max_bytes,
            max_entry_bytes=bounds.max_entry_bytes,
            clock=clock,
        )

    def get(self, key: bytes, now: float) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires <= now:
            self.remove(entry)
            return None
        self.entries.move_to_end(key)
        return entry

    def put(self, entry: Entry) -> None:
        entries = self.entries
        old = entries.pop(entry.key, None)
        if old is not None:
            self._forget(old)
        entries[entry.key] = entry
        self.size += entry.size
        entry.partition.keys.add(entry.key)
        while len(entries) > self.max_entries or self.size > self.max_bytes:
            _, victim = entries.popitem(last=False)
            self._forget(victim)

    def remove(self, entry: Entry) -> None:
        if self.entries.pop(entry.key, None) is not None:
            self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        self.size -= entry.size
        entry.partition.keys.discard(entry.key)


class RouteCache:
    """One route's partition of the store, and the request-path logic of the cache."""

    __slots__ = (
        "_bypass_label",
        "_invalidator",
        "generation",
        "inflight",
        "keys",
        "live",
        "name",
        "patterns",
        "prefix",
        "statuses",
        "store",
        "ttl",
        "vary",
        "vary_set",
        "watched",
    )

    def __init__(
        self,
        store: CacheStore,
        *,
        name: str,
        index: int,
        ttl: float,
        vary_headers: Iterable[str] = (),
        statuses: Iterable[int] = (200,),
        patterns: Iterable[str] = (),
    ) -> None:
        self.store = store
        self.name = name
        # Every route's keys live in one store: the route's position makes them distinct.
        self.prefix = b"%d\n" % index
        self.ttl = ttl
        configured = (name.encode("ascii") for name in vary_headers)
        self.vary = (_HOST, *(name for name in configured if name != _HOST))
        self.vary_set = frozenset(self.vary)
        self.watched = self.vary_set | _STEERING
        self.statuses = frozenset(statuses)
        self.patterns = tuple(patterns)
        self.keys: set[bytes] = set()
        self.inflight: dict[bytes, Capture] = {}
        self.generation = 0
        # False while invalidation events may be missed (NATS connection down): no reads, no
        # stores (cache_invalidation.py keeps it).
        self.live = True
        self._invalidator = _Invalidate(self)
        self._bypass_label = _Label(_BYPASS_LINE)

    @classmethod
    def from_config(
        cls, store: CacheStore, spec: RouteCacheSpec, *, name: str, index: int
    ) -> RouteCache:
        return cls(
            store,
            name=name,
            index=index,
            ttl=spec.ttl,
            vary_headers=spec.vary_headers,
            statuses=spec.statuses,
            patterns=spec.invalidate_on,
        )

    # --- request path -----------------------------------------------------------------------

    def on_request(self, exchange: Exchange) -> Step:
        """The filter: answered from the cache (False), waiting for the same fetch in flight
        (an awaitable), or on its way with the response hook that labels and keeps it."""
        method = exchange.method
        if method not in _CACHED_METHODS:
            exchange.hook = _PLAIN if method in _SAFE_METHODS else self._invalidator
            return True
        if not self.live or exchange.has_body:
            return self._bypass(exchange)
        refresh = False
        values: dict[bytes, bytes] | None = None
        watched = self.watched
        for name, value in exchange.headers:
            if name not in watched:
                continue
            if name in self.vary_set:
                if values is None:
                    values = {}
                prior = values.get(name)
                values[name] = value if prior is None else prior + b", " + value
            elif name in _REQUEST_DIRECTIVES:
                lowered = value.lower()
                if b"no-store" in lowered:
                    return self._bypass(exchange)
                if b"no-cache" in lowered or b"max-age=0" in lowered:
                    refresh = True  # fetched again and stored, never answered from memory
            else:
                # Authorization or Cookie the key does not vary on (the answer may be personal),
                # or an unkeyed header that may steer what the backend serves.
                return self._bypass(exchange)
        key = self.prefix + exchange.path
        query = exchange.query
        if query is not None:
            key += b"?" + query
        parts = [key]
        for name in self.vary:
            varied = values.get(name) if values is not None else None
            parts.append(b"\n-" if varied is None else b"\n=" + varied)
        key = b"".join(parts)
        if not refresh:
            now = self.store.clock()
            entry = self.store.get(key, now)
            if entry is not None:
                exchange.put(CACHE_STATUS, "HIT")
                answer(exchange, entry, now)
                return False
            leader = self.inflight.get(key)
            if leader is not None:
                exchange.put(CACHE_STATUS, "MISS")
                waiting = exchange.conn.server.loop.create_future()
                leader.waiters.append((exchange, waiting))
                return waiting
        exchange.put(CACHE_STATUS, "MISS")
        if method == b"HEAD":
            exchange.hook = _MISS_ONLY  # a HEAD's answer has no body to keep
        else:
            exchange.hook = Capture(self, key, lead=not refresh)
        return True

    def _bypass(self, exchange: Exchange) -> bool:
        exchange.put(CACHE_STATUS, "BYPASS")
        exchange.hook = self._bypass_label
        return True

    # --- invalidation -----------------------------------------------------------------------

    def drop(self) -> int:
        """Forget every entry of the route, and make fetches in flight not store theirs."""
        self.generation += 1
        # Requests from now on must not wait for a fetch that started before the drop.
        self.inflight = {}
        keys = self.keys
        dropped = len(keys)
        if keys:
            self.keys = set()
            store = self.store
            for key in keys:
                entry = store.entries.pop(key, None)
                if entry is not None:
                    store.size -= entry.size
        return dropped


def answer(exchange: Exchange, entry: Entry, now: float) -> None:
    """Answer `exchange` from `entry`: one write for the head and a small body."""
    conn = exchange.conn
    parts = [
        entry.head,
        conn.server.date.line(),
        _HIT_TAIL % (entry.age_base + int(now - entry.stored)),
        exchange.request_id,
        CRLF,
    ]
    if exchange.response_extra:
        parts.append(exchange.response_extra)
    if exchange.will_close():
        parts.append(b"connection: close\r\n")
    parts.append(CRLF)
    exchange.head_sent = True
    exchange.status = int(entry.head[9:12])  # "HTTP/1.1 200 ...": for the access log and metrics
    body = entry.body
    if exchange.method == b"HEAD" or not body:
        exchange.write(b"".join(parts))
    elif len(body) <= _JOIN_MAX:
        parts.append(body)
        exchange.write(b"".join(parts))
    else:
        exchange.write(b"".join(parts))
        exchange.write(body)
    exchange.finish()


class Capture:
    """Tees one forwarded GET response into an entry; leads the requests waiting for it."""

    __slots__ = (
        "age_base",
        "chunks",
        "generation",
        "key",
        "lead",
        "partition",
        "size",
        "stored_head",
        "ttl",
        "waiters",
    )

    def __init__(self, partition: RouteCache, key: bytes, *, lead: bool) -> None:
        self.partition = partition
        self.key = key
        self.lead = lead
        self.generation = partition.generation
        # Requests for the same key that wait for this fetch, each with its filter step.
        self.waiters: list[tuple[Exchange, asyncio.Future[bool]]] = []
        self.stored_head = b""
        self.chunks: list[bytes] = []
        self.size = 0
        self.ttl = 0.0
        self.age_base = 0
        if lead:
            partition.inflight[key] = self

    def head(self, status: int, headers: list[tuple[bytes, bytes]], out: list[bytes]) -> bool:
        out.append(_MISS_LINE)
        partition = self.partition
        if status not in partition.statuses:
            return self._give_up()
        limit = partition.store.max_entry_bytes
        lifetime: float | None = None  # what the upstream allows, if it says
        age = 0
        kept = [status_line(status)]
        for name, value in headers:
            lower = name.lower()
            if lower in _NOT_STORED:
                if lower == b"content-length":
                    if not value.isdigit() or int(value) > limit:
                        return self._give_up()
                elif lower == b"age":
                    if value.strip().isdigit():
                        age = int(value)
                elif lower == b"connection" and connection_tokens(value) - {
                    b"close",
                    b"keep-alive",
                }:
                    return self._give_up()  # rare: more hop-by-hop headers to take out
                continue
            if lower == b"set-cookie":
                return self._give_up()
            if lower == b"cache-control":
                allowed = _upstream_lifetime(value)
                if allowed is not None:
                    if allowed <= 0:
                        return self._give_up()
                    lifetime = allowed if lifetime is None else min(lifetime, allowed)
            elif lower == b"vary" and not _varies_within(value, partition.vary_set):
                return self._give_up()
            elif (
                lower == b"content-encoding"
                and value.strip().lower() != b"identity"
                and b"accept-encoding" not in partition.vary_set
            ):
                # Compressed for this client's accept-encoding, which the key does not hold:
                # another client may not read it (whether or not the upstream said Vary).
                return self._give_up()
            kept += (name, b": ", value, CRLF)
        ttl = partition.ttl if lifetime is None else min(partition.ttl, lifetime - age)
        if ttl <= 0:
            return self._give_up()
        self.ttl = ttl
        self.age_base = age
        self.stored_head = b"".join(kept)
        self.size = len(self.stored_head)
        return True

    def body(self, data: bytes) -> bool:
        self.size += len(data)
        if self.size > self.partition.store.max_entry_bytes:
            return self._give_up()
        self.chunks.append(data)
        return True

    def end(self) -> None:
        partition = self.partition
        self._unregister()
        if partition.generation != self.generation or not partition.live:
            self._send_on_waiters()  # invalidated meanwhile: what was fetched may be stale
            return
        body = b"".join(self.chunks)
        self.chunks = []
        store = partition.store
        now = store.clock()
        entry = Entry(
            self.key,
            self.stored_head + b"content-length: %d\r\n" % len(body),
            body,
            stored=now,
            expires=now + self.ttl,
            age_base=self.age_base,
            partition=partition,
        )
        store.put(entry)
        waiters = self.waiters
        self.waiters = []
        for exchange, waiting in waiters:
            if not exchange.finished:
                exchange.put(CACHE_STATUS, "HIT")
                answer(exchange, entry, now)
            if not waiting.done():
                waiting.set_result(False)

    def abandon(self) -> None:
        self._give_up()

    def _give_up(self) -> bool:
        self.chunks = []
        self._unregister()
        self._send_on_waiters()
        return False

    def _unregister(self) -> None:
        inflight = self.partition.inflight
        if self.lead and inflight.get(self.key) is self:
            del inflight[self.key]

    def _send_on_waiters(self) -> None:
        """The fetch came to nothing storable: each waiter goes on by itself (no second wait),
        kept if its own answer can be."""
        waiters = self.waiters
        self.waiters = []
        partition, key = self.partition, self.key
        for exchange, waiting in waiters:
            if waiting.done() or exchange.finished:
                continue
            exchange.hook = (
                _MISS_ONLY if exchange.method == b"HEAD" else Capture(partition, key, lead=False)
            )
            waiting.set_result(True)


class _Label:
    """A capture that only labels the response (`x-cache: MISS` or `BYPASS`)."""

    __slots__ = ("line",)

    def __init__(self, line: bytes) -> None:
        self.line = line

    def head(self, status: int, headers: list[tuple[bytes, bytes]], out: list[bytes]) -> bool:
        if self.line:
            out.append(self.line)
        return False

    def body(self, data: bytes) -> bool:
        return False

    def end(self) -> None:
        pass

    def abandon(self) -> None:
        pass


class _Invalidate(_Label):
    """An unsafe request through a cached route: a success drops the route's entries here."""

    __slots__ = ("partition",)

    def __init__(self, partition: RouteCache) -> None:
        super().__init__(b"")
        self.partition = partition

    def head(self, status: int, headers: list[tuple[bytes, bytes]], out: list[bytes]) -> bool:
        if status < 400:
            self.partition.drop()
        return False


_PLAIN = _Label(b"")
_MISS_ONLY = _Label(_MISS_LINE)


def _upstream_lifetime(value: bytes) -> float | None:
    """How long the upstream lets a shared cache keep the response: `s-maxage`, else `max-age`
    (seconds); 0 for `no-store`, `no-cache` (it would need revalidating), `private` or a
    malformed lifetime; None when it does not say."""
    shared: int | None = None
    own: int | None = None
    for raw in value.lower().split(b","):
        directive, _, argument = raw.strip().partition(b"=")
        if directive in (b"no-store", b"no-cache", b"private"):
            return 0.0
        if directive in (b"s-maxage", b"max-age"):
            argument = argument.strip(b' "')
            if not argument.isdigit():
                return 0.0  # a malformed lifetime counts as stale (RFC 9111 4.2.1)
            if directive == b"s-maxage":
                shared = int(argument)
            else:
                own = int(argument)
    upstream = shared if shared is not None else own
    return None if upstream is None else float(upstream)


def _varies_within(value: bytes, keyed: frozenset[bytes]) -> bool:
    """Whether every header an upstream `Vary` names is part of the key (`*` never is)."""
    for raw in value.split(b","):
        name = raw.strip().lower()
        if name and name not in keyed:
            return False
    return True
