"""The `Problem` exception (RFC 9457 problem details), free of any web framework.

Kept apart from `mosaic_kit.errors` (which renders problems through FastAPI) so code that runs
outside a FastAPI app, like the gateway's workers, can raise and read problems without importing
the framework.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

__all__ = ["Problem", "default_code"]

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}


def default_code(status: int) -> str:
    """The generic code for a status, e.g. 404 -> `http.not_found`."""
    return "http." + _STATUS_CODES.get(status, str(status))


class Problem(Exception):  # noqa: N818 - RFC 9457 calls it a problem
    """An error a client can act on. `code` is stable; `detail` is for humans."""

    def __init__(
        self,
        status: int,
        code: str | None = None,
        detail: str | None = None,
        *,
        title: str | None = None,
        errors: Sequence[Mapping[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code or default_code(status)
        self.title = title or HTTPStatus(status).phrase
        self.detail = detail or self.title
        self.errors = list(errors) if errors else None
        self.headers = dict(headers) if headers else {}
        super().__init__(f"{self.status} {self.code}: {self.detail}")

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"urn:mosaic:problem:{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        return body
