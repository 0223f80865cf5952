"""An interleaved A/B of two servers that run side by side: the order of the runs and what is made
of their results. Nothing here measures or waits (gateway_proxy.py does); bench/tests test it.

A round is one run of each side. The side that goes first alternates from round to round (ABBA:
head, baseline, baseline, head, head, baseline, ...), so that a drift over the whole A/B (caches
warming, another process starting or stopping) falls on both sides alike. Each side's figure is
the median over its runs, with the lowest and highest beside it; the ratios are also taken round
by round (each round's two runs are next to each other in time), and their spread is the honest
measure of whether a difference is more than the noise.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

HEAD = "head"
BASELINE = "baseline"


def abba_order(rounds: int) -> list[str]:
    """The side each run measures, in order: two runs a round, the first side alternating."""
    order: list[str] = []
    for n in range(rounds):
        order += [HEAD, BASELINE] if n % 2 == 0 else [BASELINE, HEAD]
    return order


@dataclass(frozen=True)
class Run:
    """One run's figures; `round` counts from 0, `failures` is errors + non-2xx answers."""

    side: str
    round: int
    requests_per_second: float
    p99_ms: float
    cpu_us_per_request: float | None
    other_cpu_percent: float | None = None
    failures: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "round": self.round,
            "requests_per_second": self.requests_per_second,
            "p99_ms": self.p99_ms,
            "cpu_us_per_request": self.cpu_us_per_request,
            "other_cpu_percent": self.other_cpu_percent,
            "failures": self.failures,
        }


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread | None:
        known = [v for v in values if v is not None]
        if not known:
            return None
        return cls(statistics.median(known), min(known), max(known))

    def to_json(self, digits: int = 2) -> dict[str, float]:
        return {
            "median": round(self.median, digits),
            "min": round(self.low, digits),
            "max": round(self.high, digits),
        }


@dataclass(frozen=True)
class Side:
    """One side's runs, summed up: medians with their spreads, failures, the busiest neighbour."""

    runs: int
    requests_per_second: Spread
    p99_ms: Spread
    cpu_us_per_request: Spread | None
    failures: int
    other_cpu_percent_max: float | None

    @classmethod
    def of(cls, runs: Sequence[Run]) -> Side:
        rps = Spread.of([r.requests_per_second for r in runs])
        p99 = Spread.of([r.p99_ms for r in runs])
        if rps is None or p99 is None:
            raise ValueError("a side of an A/B without runs")
        others = [r.other_cpu_percent for r in runs if r.other_cpu_percent is not None]
        return cls(
            runs=len(runs),
            requests_per_second=rps,
            p99_ms=p99,
            cpu_us_per_request=Spread.of([r.cpu_us_per_request for r in runs]),
            failures=sum(r.failures for r in runs),
            other_cpu_percent_max=max(others) if others else None,
        )

    def to_json(self) -> dict[str, Any]:
        cpu = self.cpu_us_per_request
        return {
            "runs": self.runs,
            "requests_per_second": self.requests_per_second.to_json(1),
            "cpu_us_per_request": cpu.to_json() if cpu else None,
            "p99_ms": self.p99_ms.to_json(),
            "failures": self.failures,
            "other_cpu_percent_max": self.other_cpu_percent_max,
        }


def _percent(new: float, old: float) -> float:
    return (new / old - 1.0) * 100.0


@dataclass(frozen=True)
class Comparison:
    """Head against baseline: req/s as a ratio, CPU per request and p99 as a change in percent
    (negative: head needs less). Each as the ratio of the two medians, and round by round."""

    head: Side
    baseline: Side
    rps_ratio: float
    cpu_delta_percent: float | None
    p99_delta_percent: float
    rps_ratio_by_round: Spread
    cpu_delta_percent_by_round: Spread | None
    p99_delta_percent_by_round: Spread

    def to_json(self) -> dict[str, Any]:
        cpu_rounds = self.cpu_delta_percent_by_round
        return {
            "head": self.head.to_json(),
            "baseline": self.baseline.to_json(),
            "rps_ratio": round(self.rps_ratio, 3),
            "cpu_delta_percent": (
                round(self.cpu_delta_percent, 1) if self.cpu_delta_percent is not None else None
            ),
            "p99_delta_percent": round(self.p99_delta_percent, 1),
            "by_round": {
                "rps_ratio": self.rps_ratio_by_round.to_json(3),
                "cpu_delta_percent": cpu_rounds.to_json(1) if cpu_rounds else None,
                "p99_delta_percent": self.p99_delta_percent_by_round.to_json(1),
            },
        }


def compare(runs: Sequence[Run]) -> Comparison:
    """The comparison of an A/B's runs (both sides, any order); ValueError if a side has none."""
    head = Side.of([r for r in runs if r.side == HEAD])
    baseline = Side.of([r for r in runs if r.side == BASELINE])
    pairs: dict[int, dict[str, Run]] = {}
    for run in runs:
        pairs.setdefault(run.round, {})[run.side] = run
    rounds = [(p[HEAD], p[BASELINE]) for _, p in sorted(pairs.items()) if len(p) == 2]
    cpu_by_round = [
        _percent(h.cpu_us_per_request, b.cpu_us_per_request)
        for h, b in rounds
        if h.cpu_us_per_request is not None and b.cpu_us_per_request
    ]
    head_cpu, base_cpu = head.cpu_us_per_request, baseline.cpu_us_per_request
    rps_by_round = Spread.of([h.requests_per_second / b.requests_per_second for h, b in rounds])
    p99_by_round = Spread.of([_percent(h.p99_ms, b.p99_ms) for h, b in rounds])
    if rps_by_round is None or p99_by_round is None:
        raise ValueError("an A/B without a round that measured both sides")
    return Comparison(
        head=head,
        baseline=baseline,
        rps_ratio=head.requests_per_second.median / baseline.requests_per_second.median,
        cpu_delta_percent=(
            _percent(head_cpu.median, base_cpu.median) if head_cpu and base_cpu else None
        ),
        p99_delta_percent=_percent(head.p99_ms.median, baseline.p99_ms.median),
        rps_ratio_by_round=rps_by_round,
        cpu_delta_percent_by_round=Spread.of(cpu_by_round),
        p99_delta_percent_by_round=p99_by_round,
    )


def _cell(spread: Spread | None, fmt: str, unit: str = "") -> str:
    if spread is None:
        return "-"
    return f"{spread.median:{fmt}}{unit} [{spread.low:{fmt}}, {spread.high:{fmt}}]"


def table(comparison: Comparison) -> list[str]:
    """The comparison as lines of text: a line a side, then the ratios (of the medians, and the
    lowest and highest of the rounds')."""
    c = comparison
    header = (
        f"{'':<14} {'req/s [min, max]':>26} {'cpu us/req [min, max]':>26} {'p99 ms [min, max]':>24}"
    )
    lines = [header, "-" * len(header)]
    for label, side in (("HEAD", c.head), ("baseline", c.baseline)):
        lines.append(
            f"{label:<14} {_cell(side.requests_per_second, '.0f'):>26}"
            f" {_cell(side.cpu_us_per_request, '.1f'):>26} {_cell(side.p99_ms, '.2f'):>24}"
        )
    cpu = f"{c.cpu_delta_percent:+.1f} %" if c.cpu_delta_percent is not None else "-"
    lines.append(
        f"{'HEAD/baseline':<14} {f'{c.rps_ratio:.3f}x':>26} {cpu:>26}"
        f" {f'{c.p99_delta_percent:+.1f} %':>24}"
    )
    lines.append(
        f"{'  by round':<14} {_cell(c.rps_ratio_by_round, '.3f', 'x'):>26}"
        f" {_cell(c.cpu_delta_percent_by_round, '+.1f', ' %'):>26}"
        f" {_cell(c.p99_delta_percent_by_round, '+.1f', ' %'):>24}"
    )
    return lines
