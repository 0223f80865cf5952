"""Prometheus metrics: one registry per process, RED metrics per route, service-defined gauges.

HTTP metrics are labelled by the matched route *template* (`/v1/users/{id}`), never the raw path,
so an id in a URL cannot create a new time series per request. The helpers below are
get-or-create, so building an app twice in one process (tests, `openapi` command) does not trip
over Prometheus' duplicate-name check.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE_LATEST",
    "UNMATCHED_ROUTE",
    "HttpMetrics",
    "callback_gauge",
    "counter",
    "default_registry",
    "gauge",
    "histogram",
    "http_metrics",
    "new_registry",
    "render",
]

UNMATCHED_ROUTE = "unmatched"
_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)

# `*_created` series double the series count for a timestamp Prometheus does not need.
disable_created_metrics()  # type: ignore[no-untyped-call]

_lock = threading.Lock()
# Per registry: metric name -> collector this module created, for get-or-create.
_owned: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Collector]] = (
    weakref.WeakKeyDictionary()
)
_http: weakref.WeakKeyDictionary[CollectorRegistry, HttpMetrics] = weakref.WeakKeyDictionary()


def new_registry(*, process_metrics: bool = True) -> CollectorRegistry:
    """A fresh registry, with the process/GC/platform collectors unless told otherwise."""
    registry = CollectorRegistry(auto_describe=True)
    if process_metrics:
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
    return registry


_default = new_registry()


def default_registry() -> CollectorRegistry:
    """The process-wide registry `/metrics` serves unless an app was given another one."""
    return _default


_C = TypeVar("_C", Counter, Gauge, Histogram)


def _get_or_create(
    kind: type[_C],
    name: str,
    documentation: str,
    labelnames: Sequence[str],
    registry: CollectorRegistry | None,
    **kwargs: Any,
) -> _C:
    registry = registry or _default
    with _lock:
        owned = _owned.setdefault(registry, {})
        existing = owned.get(name)
        if existing is not None:
            if not isinstance(existing, kind) or tuple(existing._labelnames) != tuple(labelnames):
                raise ValueError(f"metric {name!r} already exists with another type or labels")
            return existing
        metric = kind(name, documentation, labelnames=labelnames, registry=registry, **kwargs)
        owned[name] = metric
        return metric


def counter(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
) -> Counter:
    """Get or create a counter (Prometheus appends `_total` to its name)."""
    return _get_or_create(Counter, name, documentation, labelnames, registry)


def gauge(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    registry: CollectorRegistry | None = None,
) -> Gauge:
    """Get or create a gauge a service sets itself (e.g. consumer lag after each fetch)."""
    return _get_or_create(Gauge, name, documentation, labelnames, registry)


def histogram(
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    *,
    buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
    registry: CollectorRegistry | None = None,
) -> Histogram:
    """Get or create a histogram."""
    return _get_or_create(Histogram, name, documentation, labelnames, registry, buckets=buckets)


GaugeReading = float | Mapping[tuple[str, ...], float]


class _CallbackGauge(Collector):
    """A gauge read at scrape time, for values that live elsewhere (pool size, queue depth)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        read: Callable[[], GaugeReading],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.read = read

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        try:
            reading = self.read()
        except Exception:
            # A broken probe (say, a disposed pool) must not fail the whole scrape.
            return [family]
        if isinstance(reading, Mapping):
            for labels, value in reading.items():
                family.add_metric(list(labels), float(value))
        elif not self.labelnames:
            family.add_metric([], float(reading))
        return [family]


def callback_gauge(
    name: str,
    documentation: str,
    read: Callable[[], GaugeReading],
    *,
    labelnames: Sequence[str] = (),
    registry: CollectorRegistry | None = None,
) -> None:
    """Expose `read()` as a gauge, evaluated at each scrape.

    `read` returns a number, or `{label values tuple: number}` when `labelnames` are given. A
    second registration under the same name replaces the first, so a restarted component (a new
    engine after a reconnect, a new app in tests) reports its own values rather than stale ones.
    """
    registry = registry or _default
    collector = _CallbackGauge(name, documentation, labelnames, read)
    with _lock:
        owned = _owned.setdefault(registry, {})
        previous = owned.get(name)
        if previous is not None:
            if not isinstance(previous, _CallbackGauge):
                raise ValueError(f"metric {name!r} already exists with another type")
            registry.unregister(previous)
        registry.register(collector)
        owned[name] = collector


class HttpMetrics:
    """Rate, errors and duration of HTTP requests per route template, plus requests in flight."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = counter(
            "http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ("method", "route", "status"),
            registry=registry,
        )
        self.duration = histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ("method", "route"),
            registry=registry,
        )
        self.in_flight = gauge(
            "http_requests_in_flight", "HTTP requests being handled now.", registry=registry
        )
        # `labels()` takes a lock and builds its key on every call; the label values are bounded
        # (known methods, route templates, status codes), so each pair of children is looked up
        # once and kept.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            known = method in _KNOWN_METHODS
            label = method if known else "OTHER"
            children = (
                self.requests.labels(label, route, str(status)),
                self.duration.labels(label, route),
            )
            if known:  # any other method a client sends would grow the cache without bound
                self._children[key] = children
        count, duration = children
        count.inc()
        duration.observe(seconds)


def http_metrics(registry: CollectorRegistry | None = None) -> HttpMetrics:
    """The HTTP metrics of `registry` (the process registry by default), created once."""
    registry = registry or _default
    with _lock:
        existing = _http.get(registry)
    if existing is not None:
        return existing
    created = HttpMetrics(registry)
    with _lock:
        return _http.setdefault(registry, created)


def render(registry: CollectorRegistry | None = None) -> bytes:
    """The registry in the Prometheus text format (`CONTENT_TYPE_LATEST`)."""
    return generate_latest(registry or _default)
