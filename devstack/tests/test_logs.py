"""Children's output to log files and `mosaic logs`, following included."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mosaic_devstack.output import Console, mask_url
from mosaic_devstack.state import DataDir
from mosaic_devstack.streams import LineSink, pump, tail


async def test_pump_splits_lines_across_chunks_and_keeps_a_last_partial_line(
    tmp_path: Path,
) -> None:
    screen = io.BytesIO()
    console = Console(screen, color=False)
    console.width = 6
    sink = LineSink("auth-1", tmp_path / "auth-1.log", console)
    reader = asyncio.StreamReader()
    for chunk in (b'{"a": 1}\n{"b"', b": 2}\r\n\n", b"no newline at the end"):
        reader.feed_data(chunk)
    reader.feed_eof()
    await pump(reader, sink)
    sink.close()
    assert (tmp_path / "auth-1.log").read_bytes() == (
        b'{"a": 1}\n{"b": 2}\n\nno newline at the end\n'
    )
    assert screen.getvalue().splitlines()[:2] == [b'auth-1 | {"a": 1}', b'auth-1 | {"b": 2}']


def test_console_survives_a_reader_that_went_away() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = os.fdopen(write_end, "wb")
    console = Console(stream, color=False)
    console.line("auth-1", b"first")  # EPIPE: must not raise
    console.line("auth-1", b"second")
    assert console.closed
    stream.close()


def test_tail_returns_the_last_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(5000)))
    assert tail(path, 3) == [b"line 4997", b"line 4998", b"line 4999"]
    assert tail(tmp_path / "missing.log", 3) == []


def test_urls_shown_never_carry_passwords() -> None:
    assert mask_url("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert mask_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def _mosaic_logs(data: Path, *args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "mosaic_devstack.cli", "logs", "--data", str(data), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    return result.stdout.splitlines()


def test_logs_filters_by_service_or_instance_and_follows(tmp_path: Path) -> None:
    data = DataDir.at(tmp_path)
    data.create()
    for name in ("auth-1", "auth-2", "auth-10", "auth-migrate", "authz-1", "mosaic"):
        data.log(name).write_text(json.dumps({"from": name}) + "\n")

    lines = _mosaic_logs(tmp_path, "auth")
    assert [line.split(" | ")[0].strip() for line in lines] == [
        "auth-1",
        "auth-2",
        "auth-10",
        "auth-migrate",
    ]
    assert lines[0].endswith('{"from": "auth-1"}')
    assert [line.split(" | ")[0].strip() for line in _mosaic_logs(tmp_path, "auth-2")] == ["auth-2"]
    assert len(_mosaic_logs(tmp_path)) == 6

    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mosaic_devstack.cli",
            "logs",
            "auth",
            "-f",
            "--data",
            str(data.root),
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert follower.stdout is not None
        for _ in range(4):
            follower.stdout.readline()  # the existing lines
        time.sleep(0.3)
        with data.log("auth-2").open("a") as out:
            out.write("written later\n")
        data.log("auth-3").write_text("a new instance\n")
        seen = {follower.stdout.readline().decode() for _ in range(2)}
        assert {tuple(part.strip() for part in line.split(" | ")) for line in seen} == {
            ("auth-2", "written later"),
            ("auth-3", "a new instance"),
        }
    finally:
        follower.terminate()
        follower.wait(10)
