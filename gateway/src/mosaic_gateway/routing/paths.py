"""Which request paths the gateway refuses before routing, and why.

Routing matches the raw path (no percent-decoding), and the path goes upstream as it came. A
backend, though, decodes it, and some (or a proxy or framework behind them) treat `\\` as `/`,
decode twice, or take `..;x` for `..`. A path that means one thing to the router and another to
the backend is how `/a/{id}` with `id = ..%2Fadmin` becomes `/admin`. So the gateway refuses
(400 `gateway.bad_path`, never normalised, never forwarded) a path in which:

* a segment is `.` or `..` (raw or percent-encoded, any case: `%2e%2E`, `.%2e`), also before a
  `;` parameter (`..;x`);
* percent-decoding a segment would give `/` or `\\` (`%2F`, `%5C`, any case), a NUL or another
  control character (`%00`, `%0D%0A`, `%7F`);
* a raw `\\` appears;
* any of the above appears after decoding again: a segment is decoded repeatedly while that
  changes it (`%252e` -> `%2e` -> `.`), up to `MAX_DECODES` times; one still holding escapes
  after that is refused too. A literal `%` stays usable: `100%25` is `100%` once decoded.

Raw control characters, spaces and bytes over 0x7F never get here: the HTTP parser refuses them
in the request line (400 `gateway.bad_request`).

`refusal(path)` is called once per request, before routing. Paths without `%`, `\\` or `/.` (nearly
all) cost three substring scans; only the others are split and decoded.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_to_bytes

from mosaic_gateway.http.problems import BAD_PATH, GatewayProblem

__all__ = ["MAX_DECODES", "refusal"]

MAX_DECODES: Final = 3

ENCODED_SEPARATOR = GatewayProblem(
    400, "gateway.bad_path", "The path holds an encoded '/' or '\\' (%2F, %5C)"
)
BACKSLASH = GatewayProblem(400, "gateway.bad_path", "The path holds a '\\'")
ENCODED_CONTROL = GatewayProblem(
    400, "gateway.bad_path", "The path holds an encoded control character (%00-%1F, %7F)"
)
OVER_ENCODED = GatewayProblem(
    400, "gateway.bad_path", f"The path is still percent-encoded after {MAX_DECODES} decodings"
)

_DOTS: Final = (b".", b"..")
_CONTROL: Final = re.compile(rb"[\x00-\x1f\x7f]")


def refusal(path: bytes) -> GatewayProblem | None:
    """The problem to answer for `path`, or None when it may be routed."""
    if b"%" not in path and b"\\" not in path and b"/." not in path:
        return None
    if b"\\" in path:
        return BACKSLASH
    for segment in path.split(b"/"):
        problem = _segment_refusal(segment)
        if problem is not None:
            return problem
    return None


def _segment_refusal(segment: bytes) -> GatewayProblem | None:
    for _ in range(MAX_DECODES):
        if _is_dot_segment(segment):
            return BAD_PATH
        if b"%" not in segment:
            return None
        decoded = unquote_to_bytes(segment)
        if decoded == segment:  # a `%` not followed by two hex digits: nothing to decode
            return None
        if b"/" in decoded or b"\\" in decoded:
            return ENCODED_SEPARATOR
        if _CONTROL.search(decoded):
            return ENCODED_CONTROL
        segment = decoded
    if _is_dot_segment(segment):
        return BAD_PATH
    if b"%" in segment and unquote_to_bytes(segment) != segment:
        return OVER_ENCODED
    return None


def _is_dot_segment(segment: bytes) -> bool:
    # `..;x` is `..` to servlet containers (path parameters are dropped before resolving).
    return segment.partition(b";")[0] in _DOTS
