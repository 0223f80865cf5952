"""Helpers for the observability tests: access log lines, Prometheus text, an OTLP collector."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gateway_support import Gateway, plain_get
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def access_lines(text: str) -> list[dict[str, Any]]:
    """The access log lines (`event: access`) in a gateway's output or access log file."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == "access":
                lines.append(record)
    return lines


def gateway_access_lines(gateway: Gateway, path: Path | None = None) -> list[dict[str, Any]]:
    if path is not None:
        return access_lines(path.read_text()) if path.exists() else []
    return access_lines(gateway.process.output())


_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Scrape:
    """One `/metrics` answer, parsed; `worker` is the pid of the worker that answered."""

    def __init__(self, text: str, worker: str | None) -> None:
        self.text = text
        self.worker = worker
        self.samples: list[tuple[str, dict[str, str], float]] = []
        self.types: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                self.types[name] = kind
                continue
            if not line or line.startswith("#"):
                continue
            match = _SAMPLE.match(line)
            assert match, f"not a Prometheus sample line: {line!r}"
            labels = dict(_LABEL.findall(match.group(3) or ""))
            self.samples.append((match.group(1), labels, float(match.group(4))))

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample of `name` whose labels include `labels` (None if there is none)."""
        found = [
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(key) == want for key, want in labels.items())
        ]
        assert len(found) <= 1, f"{name} {labels} matches {len(found)} samples"
        return found[0] if found else None

    def all(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (have, value)
            for sample, have, value in self.samples
            if sample == name and all(have.get(key) == want for key, want in labels.items())
        ]


def scrape(gateway: Gateway) -> Scrape:
    """`/metrics` on a new connection (so successive scrapes may reach other workers)."""
    response = plain_get(
        f"http://127.0.0.1:{gateway.admin_port}/metrics",
        headers={"connection": "close"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return Scrape(response.text, response.headers.get("x-gateway-worker"))


class OtlpCollector:
    """An OTLP/HTTP (protobuf) trace receiver on a thread: keeps the spans it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests = 0
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if self.path == "/v1/traces":
                    collector._receive(body)
                    self.send_response(200)
                else:
                    self.send_response(404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _receive(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.requests += 1
        for resource_spans in request.resource_spans:
            resource = {
                attribute.key: _any_value(attribute.value)
                for attribute in resource_spans.resource.attributes
            }
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        {
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "name": span.name,
                            "kind": span.kind,
                            "status": span.status.code,
                            "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                            "attributes": {
                                attribute.key: _any_value(attribute.value)
                                for attribute in span.attributes
                            },
                            "resource": resource,
                        }
                    )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def upstream_headers(echo: dict[str, Any], name: str) -> list[str]:
    """The values of header `name` the echo backend received."""
    return [value for key, value in echo["headers"] if key == name]
