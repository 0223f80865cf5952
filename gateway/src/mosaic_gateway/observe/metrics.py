"""Prometheus metrics: plain dict increments per request, summed over the workers when scraped.

The request path calls `Metrics.record` once per request: a counter keyed by (route template,
method, status, backend, client), a duration histogram bucket and byte count per route, and a
cache result count when the route has a cache. Upstream failures and retries are counted where they
happen (handlers/forward.py). No `prometheus_client` object is touched per request, and labels are bounded:
route templates (not paths), known methods (others read `OTHER`), backends and instances from
the configuration or discovery, and client application ids: `""` for a request without a client
token, the id for the first `max_clients` distinct ids a worker sees (kept for its life, and
inherited by a worker that replaces it), `other` for every later one. So one worker renders at
most `max_clients + 2` client values; summed over W workers, at most `W * max_clients + 2`.

Gauges (breaker state, instance health and ejection, requests in flight) are not kept: they are
read from the worker's live state when asked (`gauges`, set by the worker).

Workers are separate processes and a scrape of the admin port reaches one of them. So each
worker writes its numbers once a second to `<directory>/worker-<index>.json` (a temporary file
renamed over the old one: readers never see half a file), in a directory the supervisor creates
and removes. The worker a scrape reaches renders its own live numbers plus the other workers'
latest files. Counters are summed; gauges keep a `worker` label (a breaker's state is each
worker's own), and a file older than `STALE_AFTER` contributes no gauges (its worker is gone or
stuck). A worker that replaces a dead one (same index) starts counting from its predecessor's
last file, so the sums never go backwards; at most the last second of a dead worker is lost.
"""

from __future__ import annotations

import contextlib
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from mosaic_kit.logging import get_logger

_log = get_logger("mosaic_gateway.observe.metrics")

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
DUMP_INTERVAL = 1.0
STALE_AFTER = 5.0
UNMATCHED = "unmatched"  # the route label of requests no route took (404, 405, bad requests)
NO_CLIENT = ""  # the client label of requests without a client token (Prometheus: no label)
OTHER_CLIENT = "other"  # the client label once `max_clients` distinct ids were seen

METHOD_LABELS: dict[bytes, str] = {
    method.encode("ascii"): method
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
}

# Counter families: name -> (help, label names).
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gateway_requests_total": (
        "Requests answered, by route template, method, status, backend and client application.",
        ("route", "method", "status", "backend", "client"),
    ),
    "gateway_response_bytes_total": (
        "Bytes sent to clients (response heads included), by route.",
        ("route",),
    ),
    "gateway_cache_requests_total": (
        "Requests to cached routes by cache result (HIT, MISS, BYPASS).",
        ("route", "result"),
    ),
    "gateway_upstream_failures_total": (
        "Failed tries to reach an instance, by reason (connection refused, timeout, status...).",
        ("backend", "upstream_instance", "reason"),
    ),
    "gateway_upstream_retries_total": (
        "Requests tried again on another instance, by the reason of the failed try.",
        ("backend", "reason"),
    ),
}
HISTOGRAM = "gateway_request_duration_seconds"
_HISTOGRAM_HELP = "Time from a request's head to the end of its response, by route."
# Gauge families: name -> (help, label names); every one also carries `worker`.
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "gateway_requests_in_flight": ("Client requests received and not answered yet.", ()),
    "gateway_breaker_state": (
        "Circuit breaker of an instance: 0 closed, 1 half-open, 2 open.",
        ("backend", "upstream_instance"),
    ),
    "gateway_route_breaker_state": (
        "Circuit breaker of a route with a `breaker:` of its own, per instance: 0 closed, "
        "1 half-open, 2 open.",
        ("route", "methods", "backend", "upstream_instance"),
    ),
    "gateway_instance_healthy": (
        "1 while the active health checks find the instance healthy.",
        ("backend", "upstream_instance"),
    ),
    "gateway_instance_ejected": (
        "1 while passive ejection keeps the instance out of the rotation.",
        ("backend", "upstream_instance"),
    ),
    "gateway_instance_outstanding": (
        "Requests in flight to the instance.",
        ("backend", "upstream_instance"),
    ),
    "gateway_backend_panic": (
        "1 while no instance is available and the backend spreads over all of them.",
        ("backend",),
    ),
}

Labels = tuple[str, ...]
Gauge = tuple[str, Labels, float]  # family, label values (without worker), value


class RouteSeries:
    """One route's duration histogram: counts per bucket (not cumulative), their sum, bytes."""

    __slots__ = ("buckets", "bytes", "sum")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.sum = 0.0
        self.bytes = 0


class Metrics:
    """One worker's counters, its view of the other workers, and the Prometheus rendering."""

    def __init__(
        self,
        bounds: Iterable[float],
        *,
        index: int = 0,
        directory: str | None = None,
        max_clients: int = 100,
    ) -> None:
        self.bounds = tuple(bounds)
        self.max_clients = max_clients
        # The client ids that are labels of their own (bounded cardinality; see the docstring).
        self.clients: set[str] = set()
        self.index = index
        self.worker = str(index)
        self.directory = Path(directory) if directory else None
        # Keyed by the label values; status is an int here (a str in files and output).
        self.requests: dict[tuple[str, str, int, str, str], int] = {}
        self.routes: dict[str, RouteSeries] = {}
        self.cache: dict[tuple[str, str], int] = {}
        self.failures: dict[tuple[str, str, str], int] = {}
        self.retries: dict[tuple[str, str], int] = {}
        # The live gauges of this worker (set by the worker: they read its runtime).
        self.gauges: Callable[[], list[Gauge]] = list
        self._timer: Any = None
        if self.directory is not None:
            self._inherit()

    # --- the request path -------------------------------------------------------------------

    def record(
        self,
        route: str,
        backend: str,
        method: str,
        status: int,
        duration: float,
        size: int,
        cache: str | None,
        client: str | None = None,
    ) -> None:
        key = (
            route,
            method,
            status,
            backend,
            NO_CLIENT if client is None else self._client(client),
        )
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        series = self.routes.get(route)
        if series is None:
            series = self.routes[route] = RouteSeries(len(self.bounds) + 1)
        series.buckets[bisect_left(self.bounds, duration)] += 1
        series.sum += duration
        series.bytes += size
        if cache is not None:
            cache_key = (route, cache)
            self.cache[cache_key] = self.cache.get(cache_key, 0) + 1

    def _client(self, client: str) -> str:
        clients = self.clients
        if client in clients:
            return client
        if len(clients) < self.max_clients and client not in (NO_CLIENT, OTHER_CLIENT):
            clients.add(client)
            return client
        return OTHER_CLIENT

    def upstream_failed(self, backend: str, instance: str, reason: str) -> None:
        key = (backend, instance, reason)
        self.failures[key] = self.failures.get(key, 0) + 1

    def retried(self, backend: str, reason: str) -> None:
        key = (backend, reason)
        self.retries[key] = self.retries.get(key, 0) + 1

    # --- sharing between workers ------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """This worker's numbers as plain JSON types (what its file holds)."""
        counters: dict[str, list[list[Any]]] = {
            "gateway_requests_total": [
                [route, method, str(status), backend, client, value]
                for (route, method, status, backend, client), value in self.requests.items()
            ],
            "gateway_response_bytes_total": [
                [route, series.bytes] for route, series in self.routes.items()
            ],
            "gateway_cache_requests_total": [[*key, value] for key, value in self.cache.items()],
            "gateway_upstream_failures_total": [
                [*key, value] for key, value in self.failures.items()
            ],
            "gateway_upstream_retries_total": [
                [*key, value] for key, value in self.retries.items()
            ],
        }
        return {
            "worker": self.index,
            "pid": os.getpid(),
            "time": time.time(),
            "bounds": list(self.bounds),
            "counters": counters,
            "histogram": [
                [route, series.buckets, series.sum] for route, series in self.routes.items()
            ],
            "gauges": [[name, list(labels), value] for name, labels, value in self._live_gauges()],
        }

    def _live_gauges(self) -> list[Gauge]:
        try:
            return self.gauges()
        except Exception:  # a gauge must never break a scrape or a dump
            _log.exception("metrics_gauges_failed")
            return []

    def _file(self, index: int) -> Path:
        assert self.directory is not None
        return self.directory / f"worker-{index}.json"

    def start(self, loop: Any) -> None:
        """Write this worker's file every `DUMP_INTERVAL` (only with a directory)."""
        if self.directory is None:
            return

        def tick() -> None:
            self.dump()
            self._timer = loop.call_later(DUMP_INTERVAL, tick)

        self._timer = loop.call_later(DUMP_INTERVAL, tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.directory is not None:
            self.dump()

    def dump(self) -> None:
        if self.directory is None:
            return
        path = self._file(self.index)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            temporary.write_bytes(orjson.dumps(self.snapshot()))
            os.replace(temporary, path)
        except OSError as exc:
            # The directory went away (the supervisor is stopping) or the disk is full.
            _log.warning("metrics_dump_failed", path=str(path), error=str(exc))

    def _inherit(self) -> None:
        """Continue from a dead predecessor's counters (a worker respawned at this index)."""
        document = _read(self._file(self.index))
        if document is None:
            return
        if document.get("bounds") != list(self.bounds):
            return  # another bucket layout (a restart with a new configuration): start afresh
        counters = document.get("counters", {})
        for route, method, status, backend, client, value in counters.get(
            "gateway_requests_total", []
        ):
            self.requests[(route, method, int(status), backend, client)] = int(value)
            if client not in (NO_CLIENT, OTHER_CLIENT) and len(self.clients) < self.max_clients:
                self.clients.add(client)
        for route, buckets, total in document.get("histogram", []):
            series = self.routes[route] = RouteSeries(len(self.bounds) + 1)
            series.buckets = [int(count) for count in buckets]
            series.sum = float(total)
        for route, value in counters.get("gateway_response_bytes_total", []):
            if route in self.routes:
                self.routes[route].bytes = int(value)
        for route, result, value in counters.get("gateway_cache_requests_total", []):
            self.cache[(route, result)] = int(value)
        for backend, instance, reason, value in counters.get("gateway_upstream_failures_total", []):
            self.failures[(backend, instance, reason)] = int(value)
        for backend, reason, value in counters.get("gateway_upstream_retries_total", []):
            self.retries[(backend, reason)] = int(value)
        _log.info("metrics_inherited", worker=self.index, from_pid=document.get("pid"))

    def _documents(self) -> list[dict[str, Any]]:
        """This worker's live numbers first, then the other workers' latest files."""
        documents = [self.snapshot()]
        if self.directory is None:
            return documents
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return documents
        own = self._file(self.index).name
        for name in names:
            if name.startswith("worker-") and name.endswith(".json") and name != own:
                document = _read(self.directory / name)
                if document is not None and document.get("bounds") == list(self.bounds):
                    documents.append(document)
        return documents

    # --- rendering --------------------------------------------------------------------------

    def render(self) -> bytes:
        """Prometheus text exposition format 0.0.4, over all workers."""
        documents = self._documents()
        now = time.time()
        counters: dict[str, dict[Labels, float]] = {name: {} for name in COUNTERS}
        histogram: dict[str, list[float]] = {}
        gauges: dict[str, dict[Labels, float]] = {name: {} for name in GAUGES}
        reporting = 0
        for document in documents:
            for name, rows in document["counters"].items():
                family = counters.get(name)
                if family is None:
                    continue
                for row in rows:
                    labels = tuple(str(value) for value in row[:-1])
                    family[labels] = family.get(labels, 0) + row[-1]
            for route, buckets, total in document["histogram"]:
                merged = histogram.get(route)
                if merged is None:
                    merged = histogram[route] = [0.0] * (len(buckets) + 1)
                for position, count in enumerate(buckets):
                    merged[position] += count
                merged[-1] += total
            if now - document["time"] > STALE_AFTER:
                continue
            reporting += 1
            worker = str(document["worker"])
            for name, labels, value in document["gauges"]:
                family = gauges.get(name)
                if family is not None:
                    family[(*labels, worker)] = value
        out: list[str] = []
        for name, (help_text, label_names) in COUNTERS.items():
            _family_head(out, name, help_text, "counter")
            for labels, value in sorted(counters[name].items()):
                out.append(f"{name}{_labels(label_names, labels)} {_number(value)}")
        _family_head(out, HISTOGRAM, _HISTOGRAM_HELP, "histogram")
        bounds = [*(_number(bound) for bound in self.bounds), "+Inf"]
        for route, merged in sorted(histogram.items()):
            route_label = _escape(route)
            running = 0.0
            for bound, count in zip(bounds, merged[:-1], strict=True):
                running += count
                out.append(
                    f'{HISTOGRAM}_bucket{{route="{route_label}",le="{bound}"}} {_number(running)}'
                )
            out.append(f'{HISTOGRAM}_sum{{route="{route_label}"}} {_number(merged[-1])}')
            out.append(f'{HISTOGRAM}_count{{route="{route_label}"}} {_number(running)}')
        for name, (help_text, label_names) in GAUGES.items():
            _family_head(out, name, help_text, "gauge")
            names = (*label_names, "worker")
            for labels, value in sorted(gauges[name].items()):
                out.append(f"{name}{_labels(names, labels)} {_number(value)}")
        _family_head(
            out, "gateway_workers_reporting", "Workers whose numbers are included.", "gauge"
        )
        out.append(f"gateway_workers_reporting {reporting}")
        out.append("")
        return "\n".join(out).encode()


def _read(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        document = orjson.loads(path.read_bytes())
        if isinstance(document, dict):
            return document
    return None


def _family_head(out: list[str], name: str, help_text: str, kind: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: Labels) -> str:
    if not names:
        return ""
    pairs = ",".join(
        f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)
    )
    return "{" + pairs + "}"


def _number(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
