"""The configuration file's JSON Schema (gateway/gateway.schema.json, `mosaic-gateway schema`):
generated from the models, never out of date, accepting what the gateway accepts and rejecting
what a model rejects by shape (the cross-checks between sections are the gateway's alone)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from config_schema_support import SCHEMA_FILE, schema_errors
from test_config import GOOD

from mosaic_gateway.cli import main
from mosaic_gateway.config import ConfigError, parse_config, render_json_schema

ROOT = Path(__file__).resolve().parents[2]

# Every spelling the models take that a plain reading of their types would not: unit strings and
# plain numbers, the instance shorthand, an unquoted `on:`, and the optional sections.
EVERY_FORM = """\
server:
  admin: {port: 0}
  timeouts: {connect: 250ms, request: 1.5m, keep_alive: 1h, header: 10, shutdown_grace: 0s}
  limits: {max_body_bytes: 1MiB, max_header_bytes: 16384}
nats: {url: "nats://127.0.0.1:4222", connect_timeout: 2s}
security:
  api_keys: {ttl: 5m, negative_ttl: 0}
  jwt: {leeway: 5s, max_token_ttl: 24h}
rate_limits: {store: nats, timeout: 250ms}
cache: {max_bytes: 64MiB, max_entry_bytes: 512KB}
observability:
  access_log: {enabled: true}
  metrics: {buckets: [0.01, 0.1, 1]}
  tracing: {enabled: true, sample_ratio: 0.5, otlp_endpoint: "http://127.0.0.1:4318"}
docs: {path: /docs, sources: {blog: /openapi.json}, refresh: 10m}
defaults:
  auth: {api_key: required, jwt: "off"}
  headers: {allow: [accept, content-type]}
  query: {allow: []}
backends:
  blog:
    instances:
      - http://127.0.0.1:8001
      - {url: "http://127.0.0.1:8002", weight: 2}
    connect_timeout: 500ms
    pool: {idle_timeout: 4s}
    health_check: {interval: 2s, timeout: 1}
    ejection: {duration: 30s, statuses: [503]}
    retries:
      attempts: 2
      on: [connect_error, 502]
      per_try_timeout: 300ms
    breaker: {open_for: 500ms, max_open_for: 1m}
  reco:
    discovery:
      nats: {service: reco, interval: 2s, timeout: 500ms}
  auth:
    discovery:
      dns: {name: localhost, port: 8000, family: ipv4}
routes:
  - path: /v1/blogs/{id}
    methods: [get]
    backend: blog
    rewrite: {strip_prefix: /v1, add_prefix: /api}
    timeout: 2s
    max_body_bytes: 0
    claims: {sub: x-user-id}
    auth: {jwt: required, roles: [AUTHOR]}
    cors: {origins: ["*"], max_age: 10m}
    rate_limit: {requests: 10, per: 1s, by: user, shared: true}
    cache: {ttl: 30s, vary_headers: [authorization], invalidate_on: [blog.post.*]}
  - path: /v1/feed
    methods: [GET]
    aggregate:
      sequential: true
      timeout: 3s
      max_response_bytes: 256KiB
      backends:
        - {backend: reco, path: /feed, group: feed}
        - {backend: blog, path: "/posts/{resp0.first.id}", target: data, required: true}
"""


def test_the_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render_json_schema(), (
        "gateway/gateway.schema.json is out of date: "
        "mosaic-gateway schema --output gateway/gateway.schema.json"
    )


def test_the_schema_command_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert printed == SCHEMA_FILE.read_text(encoding="utf-8")
    schema = json.loads(printed)
    assert schema["required"] == ["backends", "routes"]
    timeout = schema["$defs"]["RouteSpec"]["properties"]["timeout"]
    assert "Overrides timeouts.request" in timeout["description"]


def test_every_form_the_gateway_takes_is_valid() -> None:
    parse_config(EVERY_FORM, "every.yaml")
    assert schema_errors(EVERY_FORM) == []
    assert schema_errors(GOOD) == []


def test_the_repositorys_files_and_documented_configurations_are_valid() -> None:
    compose = (ROOT / "deploy" / "compose" / "gateway.yaml").read_text(encoding="utf-8")
    parse_config(compose, "gateway.yaml")
    assert schema_errors(compose) == []
    doc = (ROOT / "docs" / "gateway.md").read_text(encoding="utf-8")
    complete = []
    for block in re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL):
        try:
            parse_config(block, "docs/gateway.md")
        except ConfigError:
            continue  # a fragment of a file, shown beside its section's fields
        complete.append(block)
        assert schema_errors(block) == [], block
    assert len(complete) >= 2


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("  port: 8080", "  port: eighty", "server.port"),
        ("    request: 5s", "    request: soon", "server.timeouts.request"),
        ("    request: 5s", "    request: -5", "server.timeouts.request"),
        ("    max_body_bytes: 64KiB", "    max_body_bytes: 1.5MiB", "server.limits.max_body_bytes"),
        ("        weight: 3", "        wieght: 3", "backends.blog.instances[1]"),
        ("balancing: least_outstanding", "balancing: random", "backends.blog.balancing"),
        ("    methods: [GET]\n", "    methods: GET\n", "routes[1].methods"),
        (
            "    ejection: {consecutive_failures: 2",
            "    ejection: {consecutive_failures: 0",
            "backends.blog.ejection.consecutive_failures",
        ),
    ],
)
def test_a_broken_file_is_rejected_where_the_gateway_rejects_it(
    old: str, new: str, where: str
) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new)
    with pytest.raises(ConfigError, match=re.escape(where)):
        parse_config(text, "gw.yaml")
    errors = schema_errors(text)
    assert errors, text
    assert all(error.startswith(where) for error in errors), errors


def test_a_file_without_routes_is_rejected() -> None:
    text = GOOD.split("routes:\n", 1)[0]
    assert schema_errors(text) == [": 'routes' is a required property"]
