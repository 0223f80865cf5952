"""A real HTTP load generator (wrk) and the parsing of what it reports; what every benchmark
script shares (its results file, its entry point).

wrk comes from Debian's package; on a machine without it, `ensure_wrk` installs it through apt
when it can (root), so `make bench` needs nothing installed by hand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import httpx

from mosaic_devstack.embedded import free_port, stop_process

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass(frozen=True)
class LoadResult:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    non_2xx: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
        found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is needed for the HTTP benchmarks: apt-get install wrk")
    return found


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    if not match:
        raise ValueError(f"unexpected wrk latency {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(name: str, output: str) -> LoadResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if not rps or not total:
        raise RuntimeError(f"could not read wrk output:\n{output}")
    pct = dict(re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+(\S+)$", output, flags=re.M))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return LoadResult(
        name=name,
        requests_per_second=float(rps.group(1)),
        p50_ms=_ms(pct["50"]) if "50" in pct else float("nan"),
        p99_ms=_ms(pct["99"]) if "99" in pct else float("nan"),
        requests=int(total.group(1)),
        errors=errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run_wrk(
    name: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    seconds: int = 10,
    connections: int = 64,
    threads: int = 2,
    script: str | None = None,
) -> LoadResult:
    args = [ensure_wrk(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        args += ["-s", script]
    for key, value in (headers or {}).items():
        args += ["-H", f"{key}: {value}"]
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    )
    return parse_wrk(name, out.stdout)


def print_table(title: str, rows: list[LoadResult]) -> None:
    print(f"\n{title}")
    print(f"{'case':<44} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7} {'non-2xx':>8}")
    for r in rows:
        print(
            f"{r.name:<44} {r.requests_per_second:>10.0f} {r.p50_ms:>9.2f} {r.p99_ms:>9.2f}"
            f" {r.errors:>7} {r.non_2xx:>8}"
        )


def wait_ready(url: str, timeout: float = 30) -> None:
    """Wait until a service answers `GET /readyz` with 200 (bench scripts start their own)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not become ready in {timeout:.0f} s")


@contextmanager
def auth_with_user(env: Mapping[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    """`mosaic-auth` migrated and serving on a free port, once ready, with one user signed up:
    the server, its URL and that user's access token. The server is stopped on exit."""
    bin_ = str(Path(sys.executable).parent / "mosaic-auth")
    subprocess.run([bin_, "migrate"], env=env, check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(
        [bin_, "serve", "--port", str(port), "--instance-id", "auth-bench"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        signup = httpx.post(
            url + "/v1/auth/signup",
            json={"email": "bench@example.com", "password": "bench-password", "name": "Bench"},
            timeout=10,
        )
        signup.raise_for_status()
        yield server, url, signup.json()["tokens"]["accessToken"]
    finally:
        stop_process(server.pid)


def write_results(path: Path, benchmark: str, report: Mapping[str, Any]) -> None:
    """A benchmark's JSON results (bench/results/NAME.json): its name, when, then `report`."""
    body = {"benchmark": benchmark, "measured_at": datetime.now(UTC).isoformat(), **report}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {path}")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_main(main: Callable[[], int]) -> NoReturn:
    """A benchmark's entry point for scripts that start processes: SIGTERM (a CI timeout, `kill`)
    unwinds like Ctrl-C, so every `finally` runs and every process started is stopped; either
    exits 130."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted: every process started here was stopped", file=sys.stderr)
        code = 130
    sys.exit(code)
