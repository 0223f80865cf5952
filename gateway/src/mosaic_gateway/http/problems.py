"""The gateway's own errors as RFC 9457 `application/problem+json`.

Same shape as `mosaic_kit.problem.Problem.to_dict` (type `urn:mosaic:problem:<code>`, title,
status, detail, code, instance), built here because that module pulls FastAPI into every worker.
Upstream errors are never rewritten: only responses the gateway itself produces use these.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

import orjson

PROBLEM_CONTENT_TYPE = b"application/problem+json"


@dataclass(frozen=True)
class GatewayProblem:
    status: int
    code: str
    detail: str

    def body(self, instance: str | None = None) -> bytes:
        document: dict[str, object] = {
            "type": f"urn:mosaic:problem:{self.code}",
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance is not None:
            document["instance"] = instance
        return orjson.dumps(document)


NO_ROUTE = GatewayProblem(404, "gateway.no_route", "No route matches this path")
METHOD_NOT_ALLOWED = GatewayProblem(
    405, "gateway.method_not_allowed", "This path does not accept this method"
)
BODY_TOO_LARGE = GatewayProblem(413, "gateway.body_too_large", "The request body is too large")
HEADERS_TOO_LARGE = GatewayProblem(
    431, "gateway.headers_too_large", "The request line and headers are too large"
)
BAD_REQUEST = GatewayProblem(400, "gateway.bad_request", "The request is not valid HTTP/1.1")
BAD_PATH = GatewayProblem(400, "gateway.bad_path", "The path holds '.' or '..' segments")
# Requests whose extent the gateway and a backend could disagree on: refused, connection closed.
BAD_VERSION = GatewayProblem(400, "gateway.bad_version", "Only HTTP/1.1 and HTTP/1.0 are served")
UPGRADE_WITH_BODY = GatewayProblem(
    400, "gateway.bad_framing", "A request asking for a protocol upgrade cannot carry a body"
)
CONNECT_REFUSED = GatewayProblem(400, "gateway.bad_framing", "CONNECT tunnels are not offered")
BAD_TRANSFER_ENCODING = GatewayProblem(
    400,
    "gateway.bad_framing",
    "Transfer-Encoding must be one 'chunked' header, on an HTTP/1.1 request",
)
# Headers read once by the gateway and possibly otherwise by a backend.
DUPLICATE_CREDENTIALS = GatewayProblem(
    400,
    "gateway.duplicate_credentials",
    "The request carries more than one Authorization or X-Api-Key header",
)
DUPLICATE_HOST = GatewayProblem(
    400, "gateway.duplicate_host", "The request carries more than one Host header"
)
REQUEST_TIMEOUT = GatewayProblem(
    408, "gateway.request_timeout", "The request did not arrive in time"
)
BAD_GATEWAY = GatewayProblem(502, "gateway.bad_gateway", "The upstream service failed to answer")
UNAVAILABLE = GatewayProblem(503, "gateway.unavailable", "No instance of the service is available")
UPSTREAM_TIMEOUT = GatewayProblem(
    504, "gateway.timeout", "The upstream service did not answer in time"
)
SHUTTING_DOWN = GatewayProblem(503, "gateway.unavailable", "The gateway is shutting down")
INTERNAL = GatewayProblem(500, "gateway.internal", "The gateway failed to handle the request")
