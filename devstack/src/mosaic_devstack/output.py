"""Terminal output: name-prefixed lines, tables, and URLs with their passwords hidden."""

from __future__ import annotations

import contextlib
import os
import sys
import zlib
from collections.abc import Sequence
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

_COLORS = (36, 33, 32, 35, 34, 96, 93, 92, 95, 94)


def use_color(stream: BinaryIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (ValueError, OSError):
        return False


class Console:
    """Writes lines as `name | text`, and survives a reader that goes away (`mosaic up | head`)."""

    def __init__(self, stream: BinaryIO | None = None, *, color: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.color = use_color(self.stream) if color is None else color
        self.width = 6
        self.closed = False

    def prefix(self, name: str) -> bytes:
        padded = name.ljust(self.width)
        if self.color:
            code = _COLORS[zlib.crc32(name.encode()) % len(_COLORS)]
            padded = f"\x1b[{code}m{padded}\x1b[0m"
        return padded.encode() + b" | "

    def line(self, name: str, text: bytes) -> None:
        self.write(self.prefix(name) + text.rstrip(b"\r\n") + b"\n")

    def say(self, text: str) -> None:
        self.write(text.encode() + b"\n")

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.stream.write(data)
            self.stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.closed = True
            self._silence()

    def _silence(self) -> None:
        # Point the descriptor at /dev/null so the interpreter's final flush does not fail too.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***` (fit for a terminal or a log)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        netloc = f"{parts.username or ''}:***@{host}{port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparseable url>"
