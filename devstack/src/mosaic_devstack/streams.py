"""Children's output: split into lines, appended to a log file, echoed with the child's name."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from mosaic_devstack.output import Console

# A child that prints without newlines must not grow our buffer forever.
_MAX_LINE = 1 << 20


class LineSink:
    """A log file (appended unbuffered: `mosaic logs -f` sees lines at once) plus the console."""

    def __init__(self, name: str, path: Path, console: Console | None) -> None:
        self.name = name
        self.path = path
        self.console = console
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, line: bytes) -> None:
        line = line.rstrip(b"\r\n")
        if self._fd >= 0:
            os.write(self._fd, line + b"\n")
        if self.console is not None:
            self.console.line(self.name, line)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


async def pump(reader: asyncio.StreamReader, sink: LineSink) -> None:
    """Copy `reader` to `sink` line by line until end of file."""
    pending = b""
    while chunk := await reader.read(65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            sink.write(line)
        while len(pending) > _MAX_LINE:
            sink.write(pending[:_MAX_LINE])
            pending = pending[_MAX_LINE:]
    if pending:
        sink.write(pending)


def tail(path: Path, lines: int = 20, *, max_bytes: int = 64 * 1024) -> list[bytes]:
    """The last `lines` lines of a file (fewer if it is short or missing)."""
    try:
        with path.open("rb") as src:
            size = src.seek(0, os.SEEK_END)
            src.seek(max(0, size - max_bytes))
            data = src.read()
    except OSError:
        return []
    chunks = data.splitlines()
    if size > max_bytes and chunks:
        chunks = chunks[1:]  # the first one is most likely cut
    return chunks[-lines:] if lines > 0 else chunks


def tail_text(path: Path, lines: int = 20) -> str:
    body = b"\n".join(tail(path, lines)).decode(errors="replace")
    if not body:
        return f"    ({path} is empty)"
    return "\n".join(f"    {line}" for line in body.splitlines())
