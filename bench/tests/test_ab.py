"""The pure part of the interleaved A/B (bench/ab.py): the order of the runs, the medians, spreads
and ratios made of given results. Nothing is measured or timed here."""

import pytest
from ab import BASELINE, HEAD, Run, abba_order, compare, table


def test_abba_order_alternates_the_side_that_goes_first() -> None:
    assert abba_order(0) == []
    assert abba_order(1) == [HEAD, BASELINE]
    assert abba_order(4) == [HEAD, BASELINE, BASELINE, HEAD, HEAD, BASELINE, BASELINE, HEAD]
    order = abba_order(5)
    assert order.count(HEAD) == order.count(BASELINE) == 5


def fake_runs(
    head: list[tuple[float, float, float | None]], base: list[tuple[float, float, float | None]]
) -> list[Run]:
    """Runs in ABBA order from (req/s, p99 ms, cpu us/req) per round and side."""
    figures = {HEAD: iter(head), BASELINE: iter(base)}
    runs = []
    for n, side in enumerate(abba_order(len(head))):
        rps, p99, cpu = next(figures[side])
        runs.append(Run(side, n // 2, rps, p99, cpu, other_cpu_percent=float(n)))
    return runs


def test_medians_spreads_and_ratios() -> None:
    runs = fake_runs(
        head=[(12_000, 5.0, 80.0), (11_000, 6.0, 90.0), (13_000, 4.0, 70.0)],
        base=[(10_000, 5.0, 100.0), (10_000, 8.0, 110.0), (12_000, 5.0, 90.0)],
    )
    c = compare(runs)
    assert c.head.runs == c.baseline.runs == 3
    assert (c.head.requests_per_second.median, c.head.requests_per_second.low) == (12_000, 11_000)
    assert c.head.requests_per_second.high == 13_000
    assert c.baseline.requests_per_second.median == 10_000
    assert c.rps_ratio == pytest.approx(1.2)
    assert c.cpu_delta_percent == pytest.approx(-20.0)  # 80 against 100
    assert c.p99_delta_percent == pytest.approx(0.0)  # 5.0 against 5.0
    # round by round: 12/10, 11/10, 13/12; CPU 80/100, 90/110, 70/90
    assert c.rps_ratio_by_round.median == pytest.approx(1.1)
    assert c.rps_ratio_by_round.low == pytest.approx(13 / 12)
    assert c.rps_ratio_by_round.high == pytest.approx(1.2)
    cpu = c.cpu_delta_percent_by_round
    assert cpu is not None
    assert cpu.median == pytest.approx(-20.0)
    assert cpu.low == pytest.approx((70 / 90 - 1) * 100)
    assert cpu.high == pytest.approx((90 / 110 - 1) * 100)
    # runs 0-5 are head, baseline, baseline, head, head, baseline: the busiest neighbour of each
    assert c.head.other_cpu_percent_max == 4.0
    assert c.baseline.other_cpu_percent_max == 5.0


def test_an_even_number_of_runs_takes_the_middle_two() -> None:
    c = compare(fake_runs(head=[(100, 1.0, 10.0), (300, 3.0, 30.0)], base=[(200, 2.0, 20.0)] * 2))
    assert c.head.requests_per_second.median == 200
    assert c.rps_ratio == pytest.approx(1.0)
    assert c.cpu_delta_percent == pytest.approx(0.0)


def test_cpu_unknown_on_one_side_leaves_its_delta_out() -> None:
    c = compare(fake_runs(head=[(100, 1.0, None)], base=[(100, 1.0, 10.0)]))
    assert c.head.cpu_us_per_request is None
    assert c.cpu_delta_percent is None
    assert c.cpu_delta_percent_by_round is None
    assert c.to_json()["cpu_delta_percent"] is None
    assert any(line.startswith("HEAD/baseline") for line in table(c))


def test_a_side_without_runs_is_an_error() -> None:
    with pytest.raises(ValueError, match="without runs"):
        compare([Run(HEAD, 0, 100, 1.0, 10.0)])


def test_json_and_table() -> None:
    c = compare(fake_runs(head=[(12_345, 5.0, 80.0)], base=[(10_000, 4.0, 100.0)]))
    data = c.to_json()
    assert data["rps_ratio"] == 1.234
    assert data["cpu_delta_percent"] == -20.0
    assert data["p99_delta_percent"] == 25.0
    assert data["head"]["requests_per_second"] == {"median": 12345, "min": 12345, "max": 12345}
    assert data["by_round"]["rps_ratio"]["min"] == 1.234
    lines = table(c)
    assert lines[2].split()[:2] == ["HEAD", "12345"]
    assert lines[3].split()[:2] == ["baseline", "10000"]
    assert lines[4].split() == ["HEAD/baseline", "1.234x", "-20.0", "%", "+25.0", "%"]
