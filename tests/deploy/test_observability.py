"""The Prometheus rules, alerts and Grafana dashboards in deploy/observability/: promtool accepts
the rules and their unit tests pass, every metric an expression reads is one the code exports,
and every runbook link lands on a heading of docs/operations.md."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mosaic_gateway.observe import metrics as gateway_metrics
from mosaic_kit import metrics as kit_metrics

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
PROMETHEUS = OBSERVABILITY / "prometheus"
RULE_FILES = [PROMETHEUS / "rules.yaml", PROMETHEUS / "alerts.yaml"]
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yaml"))
DASHBOARDS = sorted((OBSERVABILITY / "grafana").glob("*.json"))
OPERATIONS = ROOT / "docs" / "operations.md"
# Where services define their own metrics through the kit's helpers.
SOURCE_TREES = [ROOT / "libs" / "kit" / "src", *sorted((ROOT / "services").glob("*/src"))]
HELPERS = {"counter": "counter", "gauge": "gauge", "histogram": "histogram",
           "callback_gauge": "gauge"}  # fmt: skip
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("", "_sum", "_count"), "info": ("_info",), "untyped": ("",)}  # fmt: skip


def find_promtool() -> str | None:
    return shutil.which("promtool") or (
        "/usr/bin/promtool" if os.access("/usr/bin/promtool", os.X_OK) else None
    )


@pytest.fixture(scope="module")
def promtool() -> str:
    found = find_promtool()
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0:
        # Debian ships promtool in `prometheus`; installing it is cheap next to a skipped check.
        try:
            subprocess.run(
                ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
                capture_output=True, timeout=300, check=False,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"promtool missing and apt-get install prometheus failed: {exc}")
        found = find_promtool()
    if found is None:
        pytest.skip("promtool not found (Debian package `prometheus`; install it as root)")
    return found


# --- what the code exports ------------------------------------------------------------------


def _series(name: str, kind: str) -> set[str]:
    # The text format's `# TYPE` line names a counter with its `_total`; prometheus_client's
    # families and the kit's helpers name it without.
    if kind == "counter" and name.endswith("_total"):
        return {name}
    return {name + suffix for suffix in SUFFIXES.get(kind, ("",))}


def _runtime_kit_names() -> set[str]:
    """What a service's registry holds once the kit's app factory added its HTTP metrics."""
    registry = kit_metrics.new_registry()
    kit_metrics.http_metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        names |= {sample.name for sample in family.samples} | _series(family.name, family.type)
    return names


def _helper_calls(path: Path) -> Iterator[tuple[str, str]]:
    """(metric name, kind) of each `counter("name", ...)`-style call of the kit's helpers."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        helper = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        first = node.args[0]
        if helper in HELPERS and isinstance(first, ast.Constant) and isinstance(first.value, str):
            yield first.value, HELPERS[helper]


def _defined_kit_names() -> set[str]:
    names: set[str] = set()
    for tree in SOURCE_TREES:
        for path in tree.rglob("*.py"):
            text = path.read_text()
            # Only modules that use the kit's metrics: a `counter(...)` elsewhere is not one.
            if "metrics" not in text:
                continue
            for name, kind in _helper_calls(path):
                names |= _series(name, kind)
    return names


def _gateway_names() -> set[str]:
    """The families the gateway renders (its `# TYPE` lines), even before any request."""
    rendered = gateway_metrics.Metrics((0.1, 1.0)).render().decode()
    names: set[str] = set()
    for line in rendered.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= _series(name, kind)
    return names


# Added by Prometheus to every scraped series, whatever the code labels it with.
TARGET_LABELS = {"job", "instance"}


def _literal_labels(node: ast.Call) -> tuple[str, ...] | None:
    """The label names of a helper call, when they are written out (None when computed)."""
    value = node.args[2] if len(node.args) > 2 else None
    for keyword in node.keywords:
        if keyword.arg == "labelnames":
            value = keyword.value
    if value is None:
        return ()
    try:
        labels = ast.literal_eval(value)
    except ValueError:
        return None
    return tuple(labels)


def _exported_labels() -> dict[str, set[str]]:
    """Series name -> label names, for the metrics whose labels the code spells out."""
    found: dict[str, set[str]] = {}
    for tree in SOURCE_TREES:
        for path in tree.rglob("*.py"):
            if "metrics" not in (text := path.read_text()):
                continue
            for node in ast.walk(ast.parse(text)):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func
                helper = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                first = node.args[0]
                if helper not in HELPERS or not isinstance(first, ast.Constant):
                    continue
                labels = _literal_labels(node)
                if labels is not None and isinstance(first.value, str):
                    for series in _series(first.value, HELPERS[helper]):
                        found[series] = {*labels, *(("le",) if series.endswith("_bucket") else ())}
    for name, (_, labels) in gateway_metrics.COUNTERS.items():
        found[name] = set(labels)
    for name, (_, labels) in gateway_metrics.GAUGES.items():
        found[name] = {*labels, "worker"}
    for series in _series(gateway_metrics.HISTOGRAM, "histogram"):
        found[series] = {"route", *(("le",) if series.endswith("_bucket") else ())}
    return found


def selector_labels(expr: str) -> Iterator[tuple[str, str]]:
    """(metric, label) of each label matcher written as `metric{label=...}`."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    for match in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", text):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", match.group(2)):
            yield match.group(1), label


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return _runtime_kit_names() | _defined_kit_names() | _gateway_names()


def test_the_exported_names_include_the_red_metrics(exported: set[str]) -> None:
    # Guards the derivation itself: if it found nothing, every name check below would be vacuous.
    for name in ("http_requests_total", "http_request_duration_seconds_bucket",
                 "gateway_requests_total", "gateway_request_duration_seconds_bucket",
                 "cache_lookups_total"):  # fmt: skip
        assert name in exported


# --- what the rules and dashboards read -----------------------------------------------------

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, may hold anything
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w$:.])([A-Za-z_:][\w:]*)(?!\w)(\s*\()?", text):
        token, call = match.group(1), match.group(2)
        if call or token.lower() in KEYWORDS:
            continue
        names.add(token)
    return names


def rule_groups() -> list[tuple[Path, dict]]:
    return [
        (path, rule) for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]  # fmt: skip


def dashboard_exprs(path: Path) -> Iterator[str]:
    document = json.loads(path.read_text())
    panels = list(document.get("panels", []))
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield target["expr"]
    for variable in document.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if variable.get("type") == "query" and query:
            # label_values(metric{...}, label): the metric is what must exist.
            found = re.match(r"label_values\((.*),\s*\w+\)$", query)
            yield found.group(1) if found else query


def all_exprs() -> list[tuple[str, str]]:
    found = [(f"{path.name}: {rule.get('record') or rule.get('alert')}", rule["expr"])
             for path, rule in rule_groups()]  # fmt: skip
    for path in DASHBOARDS:
        found += [(path.name, expr) for expr in dashboard_exprs(path)]
    return found


def test_metric_name_extraction() -> None:
    expr = ('sum by (route, le) (rate(a_bucket{route=~"$r",x="b:c"}[5m])) / on(job) '
            "x:y:rate5m > 0.5 and bool z")  # fmt: skip
    assert metric_names(expr) == {"a_bucket", "x:y:rate5m", "z"}


def test_every_expression_reads_exported_or_recorded_metrics(exported: set[str]) -> None:
    recorded = {rule["record"] for _, rule in rule_groups() if "record" in rule}
    unknown = []
    for where, expr in all_exprs():
        for name in metric_names(expr):
            # Recording rules (level:metric:operation) must be recorded here; the rest exported.
            known = name in recorded if ":" in name else name in exported
            if not known:
                unknown.append(f"{where}: {name}")
    assert not unknown, f"metrics nothing exports or records: {unknown}"


def test_every_label_matcher_names_a_label_the_metric_has() -> None:
    labels = _exported_labels()
    assert labels["http_requests_total"] == {"method", "route", "status"}
    wrong = [
        f"{where}: {metric}{{{label}}}"
        for where, expr in all_exprs()
        for metric, label in selector_labels(expr)
        if metric in labels and label not in labels[metric] | TARGET_LABELS
    ]
    assert not wrong, f"matchers on labels the code does not set: {wrong}"


def test_there_are_dashboards_for_the_gateway_the_services_and_events() -> None:
    names = {path.name for path in DASHBOARDS}
    assert {"gateway.json", "services.json", "events.json"} <= names
    services = json.loads((OBSERVABILITY / "grafana" / "services.json").read_text())
    assert "service" in {v["name"] for v in services["templating"]["list"]}


# --- alerts and runbooks --------------------------------------------------------------------


def github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_every_alert_has_a_runbook_that_exists() -> None:
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in OPERATIONS.read_text().splitlines()
        if re.match(r"#{1,6} ", line)
    }
    alerts = [rule for _, rule in rule_groups() if "alert" in rule]
    assert alerts
    for alert in alerts:
        annotations = alert.get("annotations", {})
        assert annotations.get("summary"), alert["alert"]
        assert annotations.get("description"), alert["alert"]
        url = annotations.get("runbook_url", "")
        page, _, anchor = url.partition("#")
        assert page == "docs/operations.md", (alert["alert"], url)
        assert anchor in anchors, (alert["alert"], url)


def test_burn_rate_alerts_follow_the_slo() -> None:
    alerts = {rule["alert"]: rule for _, rule in rule_groups() if "alert" in rule}
    fast = alerts["GatewayErrorBudgetBurnFast"]["expr"]
    for window, factor in (("1h", "14.4"), ("5m", "14.4"), ("6h", "6"), ("30m", "6")):
        assert f"ratio_rate{window} > ({factor} * 0.001)" in fast
    assert alerts["GatewayErrorBudgetBurnFast"]["labels"]["severity"] == "page"
    slow = alerts["GatewayErrorBudgetBurnSlow"]
    assert "ratio_rate3d > 0.001" in slow["expr"]
    assert "ratio_rate6h > 0.001" in slow["expr"]
    assert slow["labels"]["severity"] == "ticket"


# --- promtool -------------------------------------------------------------------------------


def test_promtool_checks_the_rules(promtool: str) -> None:
    done = subprocess.run(
        [promtool, "check", "rules", *map(str, RULE_FILES)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass(promtool: str) -> None:
    assert RULE_TESTS
    done = subprocess.run(
        [promtool, "test", "rules", *map(str, RULE_TESTS)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
