"""Loading the configuration file: defaults, units, and errors that name file, line and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mosaic_gateway.config import ConfigError, load_config, parse_config
from mosaic_gateway.config.units import parse_duration, parse_size

GOOD = """\
server:
  port: 8080
  workers: 2
  admin: {port: 9901}
  timeouts:
    request: 5s
    connect: 250ms
  limits:
    max_body_bytes: 64KiB
backends:
  blog:
    balancing: least_outstanding
    instances:
      - http://127.0.0.1:8001
      - url: http://127.0.0.1:8002
        weight: 3
    health_check: {path: /readyz, interval: 2s}
    ejection: {consecutive_failures: 2, duration: 30s}
routes:
  - path: /v1/blogs/{id}
    methods: [get, HEAD]
    backend: blog
    rewrite: {strip_prefix: /v1}
    timeout: 1.5s
  - path: /static/*
    methods: [GET]
    backend: blog
    max_body_bytes: 0
"""


def errors_of(text: str, file: str = "gw.yaml") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, file)
    return [str(issue) for issue in caught.value.issues]


def test_a_good_file_loads_with_units_and_shorthands() -> None:
    config = parse_config(GOOD, "gw.yaml")
    assert config.server.timeouts.request == 5.0
    assert config.server.timeouts.connect == 0.25
    assert config.server.timeouts.keep_alive == 60.0  # default
    assert config.server.watch_interval == 1.0  # default
    assert config.server.limits.max_body_bytes == 64 * 1024
    blog = config.backends["blog"]
    assert [(i.url, i.weight) for i in blog.instances] == [
        ("http://127.0.0.1:8001", 1),
        ("http://127.0.0.1:8002", 3),
    ]
    assert (blog.instances[1].host, blog.instances[1].port) == ("127.0.0.1", 8002)
    assert blog.health_check is not None
    assert blog.health_check.interval == 2.0
    assert blog.ejection.consecutive_failures == 2
    assert blog.ejection.statuses == (502, 503, 504)
    assert config.routes[0].methods == ["GET", "HEAD"]
    assert config.routes[0].timeout == 1.5
    assert config.routes[1].max_body_bytes == 0
    assert config.worker_count() == 2


def test_the_file_watch_interval_is_a_duration_of_at_least_100ms() -> None:
    text = GOOD.replace("  workers: 2\n", "  workers: 2\n  watch_interval: 250ms\n")
    assert parse_config(text, "gw.yaml").server.watch_interval == 0.25
    assert errors_of(text.replace("250ms", "10ms")) == [
        "gw.yaml:4:3: server.watch_interval: Input should be greater than or equal to 0.1"
    ]


def test_unknown_backend_is_reported_at_its_line() -> None:
    text = GOOD.replace("    backend: blog\n    rewrite", "    backend: blgo\n    rewrite")
    assert errors_of(text) == [
        "gw.yaml:22:5: routes[0].backend: unknown backend 'blgo' (known: blog)"
    ]


def test_type_errors_and_typos_name_line_and_field() -> None:
    text = GOOD.replace("  port: 8080", "  port: eighty").replace("    weight: 3", "    wieght: 3")
    problems = errors_of(text)
    assert any(p.startswith("gw.yaml:2:3: server.port: ") for p in problems), problems
    assert any(
        p.startswith("gw.yaml:16:9: backends.blog.instances[1].wieght: Extra inputs")
        for p in problems
    ), problems


def test_missing_field_points_at_the_mapping_that_lacks_it() -> None:
    text = GOOD.replace(
        "    methods: [GET]\n    backend: blog\n    max_body_bytes: 0\n", "    methods: [GET]\n"
    )
    assert errors_of(text) == ["gw.yaml:25:5: routes[1].backend: Field required"]


def test_bad_values_explain_themselves() -> None:
    text = (
        GOOD.replace("http://127.0.0.1:8001", "https://127.0.0.1:8001")
        .replace("request: 5s", "request: soon")
        .replace("/v1/blogs/{id}", "/v1/blogs/{id}x")
    )
    problems = errors_of(text)
    assert "gw.yaml:6:5: server.timeouts.request: a duration is a number of seconds" in problems[0]
    assert (
        "gw.yaml:14:9: backends.blog.instances[0].url: instances are plain http:// URLs"
        in problems[1]
    )
    assert "gw.yaml:20:5: routes[0].path: segment '{id}x'" in problems[2]


def test_duplicate_keys_and_yaml_syntax_errors_have_positions() -> None:
    assert errors_of("backends: {}\nroutes: []\nbackends: {}\n") == [
        "gw.yaml:3:1: duplicate key 'backends'"
    ]
    (problem,) = errors_of("routes:\n  - path: [unclosed\n")
    assert problem.startswith("gw.yaml:3:1: ")


def test_strip_prefix_must_be_a_literal_prefix_of_the_path() -> None:
    text = GOOD.replace("strip_prefix: /v1}", "strip_prefix: /v1/blo}")
    assert errors_of(text) == [
        "gw.yaml:23:15: routes[0].rewrite.strip_prefix: '/v1/blo' is not a leading run of "
        "literal segments of '/v1/blogs/{id}'"
    ]


def test_conflicting_routes_name_the_later_one() -> None:
    text = GOOD + "  - path: /v1/blogs/{id}\n    methods: [GET]\n    backend: blog\n"
    (problem,) = errors_of(text)
    assert problem.startswith("gw.yaml:29:5: routes[2].path: GET /v1/blogs/{id} is already routed")


def test_a_backend_without_instances_and_duplicate_instances_are_rejected() -> None:
    text = GOOD.replace(
        "      - url: http://127.0.0.1:8002\n        weight: 3\n", "      - http://127.0.0.1:8001\n"
    )
    assert "is listed twice" in errors_of(text)[0]
    text = "backends:\n  b:\n    instances: []\nroutes: []\n"
    assert errors_of(text) == [
        "gw.yaml:3:5: backends.b.instances: a backend needs at least one instance"
    ]


def test_an_empty_or_unreadable_file_is_an_error(tmp_path: Path) -> None:
    assert errors_of("") == [
        "gw.yaml:1:1: the file must hold a mapping with 'backends' and 'routes'"
    ]
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_units() -> None:
    assert parse_duration(2) == 2.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration("1.5m") == 90.0
    assert parse_size("1MiB") == 1024 * 1024
    assert parse_size("10MB") == 10_000_000
    for bad in ("fast", "-1s", True):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="a size is"):
        parse_size("1.5MiB")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mosaic_gateway", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_command_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD)
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: ok (2 routes, 1 backends)"


def test_check_command_prints_every_problem_and_fails(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        GOOD.replace("backend: blog\n    rewrite", "backend: nope\n    rewrite").replace(
            "port: 8080", "port: -1"
        )
    )
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"{path}:2:3: server.port: ")
    # Cross-checks run only once the file is structurally valid: one round of errors at a time.
    assert len(lines) == 1


def test_serve_refuses_a_bad_file_before_starting(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(GOOD.replace("backend: blog\n    rewrite", "backend: nope\n    rewrite"))
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 1
    assert f"{path}:22:5: routes[0].backend: unknown backend 'nope'" in result.stderr


def test_the_documented_example_is_valid() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()
    example = doc.split("## Example", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(example, "docs/gateway.md")
    assert set(config.backends) == {"auth", "blog"}
    assert config.routes[-1].rewrite is not None


def test_retries_and_breaker_settings() -> None:
    config = parse_config(GOOD, "gw.yaml")
    retries = config.backends["blog"].retries
    assert (retries.attempts, retries.on, retries.budget) == (1, ("connect_error", 503), 0.2)
    assert config.backends["blog"].breaker.open_for == 1.0
    text = GOOD.replace(
        "    ejection: {consecutive_failures: 2, duration: 30s}\n",
        "    ejection: {consecutive_failures: 2, duration: 30s}\n"
        "    retries: {attempts: 2, on: [connect_error, 502, 503], budget: 0.5}\n"
        "    breaker: {failure_threshold: 4, open_for: 500ms, max_open_for: 10s}\n",
    )
    blog = parse_config(text, "gw.yaml").backends["blog"]
    assert blog.retries.on == ("connect_error", 502, 503)
    assert (blog.breaker.failure_threshold, blog.breaker.open_for) == (4, 0.5)
    bad = GOOD.replace(
        "    ejection: {consecutive_failures: 2, duration: 30s}\n",
        "    retries: {on: [timeout, 404], budget: 2}\n",
    )
    problems = errors_of(bad)
    assert any("backends.blog.retries.on: " in p and "'timeout'" in p for p in problems)
    assert any("backends.blog.retries.budget: " in p for p in problems)
