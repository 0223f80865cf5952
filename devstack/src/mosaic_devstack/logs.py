"""`mosaic logs`: the per-instance log files, name-prefixed, optionally followed."""

from __future__ import annotations

import re
import time
from pathlib import Path

from mosaic_devstack.output import Console
from mosaic_devstack.state import DataDir
from mosaic_devstack.streams import tail


def _natural(path: Path) -> tuple[str, int]:
    # auth-2 before auth-10
    match = re.fullmatch(r"(.*?)(\d+)", path.stem)
    return (match.group(1), int(match.group(2))) if match else (path.stem, -1)


def select_logs(data: DataDir, name: str | None) -> list[Path]:
    """Log files of `name`: a service (all its instances and steps), an instance, or everything."""
    files = data.logs.glob("*.log")
    if name:
        files = (f for f in files if f.stem == name or f.stem.startswith(name + "-"))
    return sorted(files, key=_natural)


def logs(data: DataDir, name: str | None, *, follow: bool, lines: int, console: Console) -> int:
    files = select_logs(data, name)
    if not files and not follow:
        what = f" for {name!r}" if name else ""
        console.say(f"no logs{what} in {data.logs}")
        return 1
    console.width = max([len(f.stem) for f in files] + [console.width])
    offsets: dict[Path, int] = {}
    for path in files:
        for line in tail(path, lines):
            console.line(path.stem, line)
        offsets[path] = path.stat().st_size
    if not follow:
        return 0
    try:
        while not console.closed:
            for path in select_logs(data, name):
                offsets[path] = _print_new(path, offsets.get(path, 0), console)
            time.sleep(0.25)
    except KeyboardInterrupt:
        pass
    return 0


def _print_new(path: Path, offset: int, console: Console) -> int:
    """Print complete lines added since `offset`; return the new offset."""
    try:
        size = path.stat().st_size
        if size < offset:  # truncated or replaced: start over
            offset = 0
        if size == offset:
            return offset
        with path.open("rb") as src:
            src.seek(offset)
            chunk = src.read(size - offset)
    except OSError:
        return offset
    complete, _, _ = chunk.rpartition(b"\n")
    if not complete and not chunk.endswith(b"\n"):
        return offset  # wait for the rest of the line
    console.width = max(console.width, len(path.stem))
    for line in complete.split(b"\n"):
        console.line(path.stem, line)
    return offset + len(complete) + 1
