"""What a gateway worker costs to start: time to its first proxied answer, its RSS, what it imports.

The chassis issue splits `mosaic_kit` into a framework-free core and adapters so that a gateway
worker no longer drags FastAPI, Starlette and SQLAlchemy in through `tokens → jwks → rpc → errors`.
This measures that, for the checkout it runs in and, with `--compare REV`, for another commit in the
same run (a `git worktree` of REV whose `gateway/src` and `libs/kit/src` go first on `PYTHONPATH`,
so both run on the same interpreter and the same installed libraries).

Per code base, `--runs` times (default 5, the median is reported):

1. `mosaic-gateway serve --workers 1` (one process: with one worker the supervisor runs it in
   place) with one plain route to a static backend; the time from the spawn to the first 200
   through the gateway, then the process's RSS (psutil, after 20 requests, so it has done what it
   does per request once);
2. in a fresh interpreter, `import` of the modules a worker loads (cli, worker, security, apikeys,
   context, docs): wall time, number of modules, and which of the heavy frameworks are among them.

Writes bench/results/gateway_worker_start.json.

Run: .venv/bin/python bench/gateway_worker_start.py [--runs 5] [--compare 4ac1049]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from backend_static import StaticBackend
from loadgen import write_results

from mosaic_devstack.embedded import free_port, stop_process

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "gateway_worker_start.json"
BIN = Path(sys.executable).parent
PATH = "/v1/bench/items/42"

WORKER_MODULES = [
    "mosaic_gateway.cli",
    "mosaic_gateway.lifecycle.worker",
    "mosaic_gateway.filters.security",
    "mosaic_gateway.filters.apikeys",
    "mosaic_gateway.filters.context",
    "mosaic_gateway.handlers.docs",
]
HEAVY = ["fastapi", "starlette", "sqlalchemy", "asyncpg", "alembic", "uvicorn", "pydantic_settings"]

IMPORT_PROBE = f"""
import json, sys, time
t = time.perf_counter()
for name in {WORKER_MODULES!r}:
    __import__(name)
took = time.perf_counter() - t
tops = {{m.split('.')[0] for m in sys.modules}}
print(json.dumps({{"seconds": took, "modules": len(sys.modules),
                  "heavy": sorted(m for m in {HEAVY!r} if m in tops)}}))
"""


@dataclass
class Sample:
    ready_seconds: float
    worker_rss_mb: float
    import_seconds: float
    modules: int
    heavy: list[str]


@dataclass
class Row:
    name: str
    source: str
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)


def environment(source: Path | None) -> dict[str, str]:
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    if source is not None:
        paths = [str(source / "gateway" / "src"), str(source / "libs" / "kit" / "src")]
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def one_start(work: Path, backend_url: str, env: dict[str, str]) -> tuple[float, float]:
    port = free_port()
    config = {
        "server": {"listen": "127.0.0.1", "port": port},
        "defaults": {"headers": {"allow": ["*"]}, "query": {"allow": ["*"]}},
        "backends": {"bench": {"instances": [backend_url]}},
        "routes": [{"path": "/v1/bench/items/{id}", "methods": ["GET"], "backend": "bench"}],
    }
    path = work / f"gateway-{port}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = work / f"gateway-{port}.out"
    command = [str(BIN / "mosaic-gateway"), "serve", "--config", str(path), "--workers", "1"]
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        ready = wait_ready(f"http://127.0.0.1:{port}{PATH}", proc, log) - started
        with httpx.Client(timeout=5) as client:
            for _ in range(20):
                client.get(f"http://127.0.0.1:{port}{PATH}")
        worker = psutil.Process(proc.pid)
        if worker.children(recursive=True):
            raise RuntimeError("expected the single worker to run in the gateway's own process")
        return ready, worker.memory_info().rss / (1024 * 1024)
    finally:
        children: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(proc.pid).children(recursive=True)
        stop_process(proc.pid, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        for child in children:
            stop_process(child.pid, timeout=5)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the gateway exited ({proc.returncode}):\n{log.read_text()[-2000:]}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return time.perf_counter()
        time.sleep(0.01)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s")


def import_probe(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@contextlib.contextmanager
def worktree(rev: str, into: Path) -> Any:
    target = into / f"rev-{rev}"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(target), rev],
        check=True,
        capture_output=True,
    )
    try:
        yield target
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(target)],
            check=False,
            capture_output=True,
        )


def measure(row: Row, source: Path | None, runs: int, work: Path, backend_url: str) -> None:
    env = environment(source)
    for _ in range(runs):
        ready, rss = one_start(work, backend_url, env)
        probe = import_probe(env)
        row.samples.append(Sample(ready, rss, probe["seconds"], probe["modules"], probe["heavy"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compare", help="another commit to measure in the same run")
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    rows: list[Row] = []
    backend = StaticBackend(free_port(), processes=1)
    with tempfile.TemporaryDirectory(prefix="mosaic-start-") as tmp, backend:
        work = Path(tmp)
        if args.compare:
            with worktree(args.compare, work) as source:
                row = Row(f"at {args.compare}", args.compare)
                measure(row, source, args.runs, work, backend.url)
                rows.append(row)
        row = Row(f"this checkout ({commit})", commit)
        measure(row, None, args.runs, work, backend.url)
        rows.append(row)

    header = f"{'code base':<28}{'ready s':>9}{'worker MB':>11}{'import s':>10}{'modules':>9}  heavy imports"
    print(f"gateway worker start, median of {args.runs} ({os.cpu_count()} cores)")
    print(header)
    print("-" * len(header))
    for row in rows:
        heavy = ", ".join(row.samples[-1].heavy) or "none"
        print(
            f"{row.name:<28}{row.median('ready_seconds'):>9.2f}{row.median('worker_rss_mb'):>11.1f}"
            f"{row.median('import_seconds'):>10.2f}"
            f"{row.median('modules'):>9.0f}  {heavy}"
        )
    if len(rows) == 2:
        before, after = rows
        print(
            f"ratio after/before: ready {after.median('ready_seconds') / before.median('ready_seconds'):.2f}, "
            f"worker RSS {after.median('worker_rss_mb') / before.median('worker_rss_mb'):.2f}"
        )
    write_results(
        RESULTS,
        "gateway_worker_start",
        {
            "cores": os.cpu_count(),
            "runs": args.runs,
            "rows": [
                {
                    "name": r.name,
                    "source": r.source,
                    "median": {
                        k: r.median(k)
                        for k in (
                            "ready_seconds",
                            "worker_rss_mb",
                            "import_seconds",
                            "modules",
                        )
                    },
                    "samples": [asdict(s) for s in r.samples],
                }
                for r in rows
            ],
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
