"""The gateway's request path in Python alone: microseconds per request, no sockets, no wrk.

A real worker's path — the server protocol, the dispatcher, the route's filters, forwarding, the
upstream connection, and for the full route the access log and metrics — is built from a
configuration with `build_runtime` and driven over fake transports: one keep-alive client
connection sends a request, the one upstream connection answers, 20 000 times. What remains is
the Python the gateway runs per request, measured without the kernel's socket calls, the event
loop's polling or the load generator sharing the two cores, which make `gateway_proxy.py`'s rows
move by ±30 % on this machine. It answers "did this change make the request path cheaper?" to a
few per cent; `gateway_proxy.py --rounds` answers the same for the whole process.

Two routes, the same as gateway_proxy.py's: `plain` (headers and query pass, no auth) and `full`
(API key + JWT required, access log to /dev/null, metrics). The full route's credentials are
cache hits after the first request, as in a steady run: the API key is put in the verifier's
cache and the token is verified once against a JWKS made here (no NATS, no auth).

With `--baseline DIR` (a checkout of another commit: `git worktree add DIR <commit>`) the same
is measured for DIR's gateway, alternated with this checkout's (ABBA), each in its own process.
Both the package layout of today and the flat one before the filter chain (a9cefd8) are known.

    make bench ARGS="gateway_path.py --baseline /work/wt-base --rounds 6"

Time still moves by a few per cent from process to process on a shared VM (where its memory
lands, what the other core does). With `--instructions`, each side is instead counted in machine
instructions per request, under valgrind's cachegrind (no cache simulation): the child runs twice,
with 500 and with 1500 requests, and the difference is divided by 1000, so the start-up, the
configuration and the first requests cancel out. With PYTHONHASHSEED fixed the count repeats to
about 0.05 %: a change of 1 % is a change. It is the CPU's work, not its time (cache misses and
branch mispredictions are not in it), so it answers "does the path do more?", and the timed
modes answer "is it slower?". About 12 s per child; skipped with a message if valgrind is absent.

    make bench ARGS="gateway_path.py --baseline /work/wt-base --instructions"

Prints a table, writes bench/results/gateway_path.json. No assertions on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvloop
import yaml
from ab import BASELINE, HEAD, abba_order
from loadgen import write_results

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "gateway_path.json"
ROUTES = ("plain", "full")

REQUEST = (
    b"GET /v1/bench/items/42 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
)
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: application/json\r\n"
    b'Date: Mon, 07 Dec 2026 10:00:00 GMT\r\n\r\n{"id":42,"x"}'
)
API_KEY = b"mk_bench_" + b"a" * 40


def route_config(route: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"listen": "127.0.0.1", "port": 1},
        "defaults": {"headers": {"allow": ["*"]}, "query": {"allow": ["*"]}},
        "backends": {"bench": {"instances": ["http://10.0.0.1:8001"]}},
        "routes": [{"path": "/v1/bench/*", "methods": ["GET"], "backend": "bench"}],
    }
    if route == "full":
        config["server"]["admin"] = {"listen": "127.0.0.1", "port": 2}
        config["nats"] = {"url": "nats://127.0.0.1:1"}  # never dialled here
        config["observability"] = {
            "access_log": {"enabled": True, "path": os.devnull},
            "metrics": {"enabled": True},
        }
        config["routes"][0]["auth"] = {"api_key": "required", "jwt": "required"}
    return config


# -- the child: one checkout, one route ------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    """Keeps what is written; never pauses. (Not gateway/tests/wire_support.py's: that one
    imports today's package layout, and this runs against older checkouts too.)"""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default


def _modules() -> dict[str, Any]:
    """The gateway's parts, in the layout of the checkout on the path."""
    if importlib.util.find_spec("mosaic_gateway.http") is not None:
        names = {
            "config": "mosaic_gateway.config",
            "context": "mosaic_gateway.filters.context",
            "apikeys": "mosaic_gateway.filters.apikeys",
            "server": "mosaic_gateway.http.server",
            "runtime": "mosaic_gateway.lifecycle.runtime",
            "observer": "mosaic_gateway.lifecycle.observer",
            "upstream": "mosaic_gateway.upstream.connection",
            "forward": "mosaic_gateway.handlers.forward",
            "dispatch": "mosaic_gateway.routing.dispatch",
        }
    else:  # the flat layout, before the filter chain
        names = {
            "config": "mosaic_gateway.config",
            "context": "mosaic_gateway.context",
            "apikeys": "mosaic_gateway.apikeys",
            "server": "mosaic_gateway.server",
            "runtime": "mosaic_gateway.runtime",
            "observer": "mosaic_gateway.observe",
            "upstream": "mosaic_gateway.upstream",
            "proxy": "mosaic_gateway.proxy",
        }
    return {key: importlib.import_module(name) for key, name in names.items()}


def measure_here(route: str, requests: int, repeats: int) -> dict[str, Any]:
    """Microseconds per request of this process's gateway on `route` (the best of `repeats`)."""
    from mosaic_devstack.issuer import TokenIssuer
    from mosaic_kit.jwks import JwksCache, StaticKeySource

    m = _modules()
    loop = uvloop.new_event_loop()  # a worker's loop (lifecycle/worker.py): its time() is C
    config = m["config"].parse_config(yaml.safe_dump(route_config(route)), "<bench>")
    context = m["context"].WorkerContext(loop, nc=object())  # a placeholder: never used
    if "dispatch" in m:
        forwarder = m["forward"].Forwarder(loop, trust_forwarded=False)
        runtime = m["runtime"].build_runtime(config, context, forwarder)
        handler = m["dispatch"].Dispatcher(runtime.router)
    else:
        runtime = m["runtime"].build_runtime(config, context)
        handler = m["proxy"].Proxy(loop, runtime.router, trust_forwarded=False)
    request = REQUEST
    if route == "full":
        issuer = TokenIssuer()
        token = issuer.token(ttl=3600)
        services = context.security
        keys = services.api_keys
        identity = m["apikeys"].ApiKeyIdentity(id="key-bench", name="bench")
        keys._accepted[hashlib.sha256(API_KEY).digest()] = (identity, keys._clock() + 3600)
        tokens = services.tokens
        tokens.jwks = JwksCache(StaticKeySource(issuer.jwks()))
        loop.run_until_complete(tokens.jwks.refresh())
        loop.run_until_complete(tokens.verify(token))
        request += (
            b"x-api-key: " + API_KEY + b"\r\nAuthorization: Bearer " + token.encode() + b"\r\n"
        )
    request += b"\r\n"
    upstreams: list[tuple[Any, FakeTransport]] = []
    for backend in runtime.backends.values():
        for instance in backend.instances:
            pool = instance.pool

            def open_for(client: Any, pool: Any = pool) -> None:
                pool.open += 1
                conn = m["upstream"].UpstreamConnection(pool)
                transport = FakeTransport()
                conn.connection_made(transport)
                upstreams.append((conn, transport))
                client.attach(conn, False)

            pool._open_for = open_for
    limits = m["server"].ServerLimits(
        max_body_bytes=1 << 20, max_header_bytes=8192, keep_alive=5.0, header_timeout=5.0
    )
    server = m["server"].Server(loop, limits)
    # Metrics only where an admin listener could serve them, as in a worker.
    admin = config.server.admin is not None
    observer = m["observer"].build_observer(config.observability, loop, admin=admin)
    server.on_end = observer.on_end
    if hasattr(observer, "reads_upstream_instance"):  # as lifecycle/worker.py wires it
        forwarder.note_instance = observer.reads_upstream_instance
    client = m["server"].ClientConnection(server, handler)
    client_transport = FakeTransport()
    client.connection_made(client_transport)

    def one() -> None:
        client.data_received(request)
        upstreams[-1][0].data_received(ANSWER)

    one()
    answer = bytes(client_transport.written)
    if not answer.startswith(b"HTTP/1.1 200 OK") or len(upstreams) != 1:
        raise SystemExit(f"{route}: the request path did not answer as expected: {answer[:200]!r}")

    def run(count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            one()
            client_transport.written.clear()
            upstreams[-1][1].written.clear()
        elapsed = time.perf_counter() - started
        log = observer.access_log
        if log is not None:  # lines wait for a loop turn that never comes here
            log._pending.clear()
            log._size = 0
        return elapsed / count * 1e6

    runs = sorted(run(requests) for _ in range(repeats))
    loop.close()
    return {"min_us": round(runs[0], 3), "median_us": round(statistics.median(runs), 3)}


# -- the parent: alternate the checkouts -----------------------------------------------------------


def run_child(
    src: Path | None, route: str, requests: int, repeats: int, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """One measuring child on `src`'s gateway (None: this checkout's), under `prefix` if any."""
    env = dict(os.environ, LOG_LEVEL="WARNING", PYTHONHASHSEED="0")
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [
            *prefix,
            *(sys.executable, __file__, "--child", route),
            *("--requests", str(requests), "--repeats", str(repeats)),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{route} ({src or 'HEAD'}): {done.stderr.strip()[-2000:]}")
    return done


def child(src: Path | None, route: str, requests: int, repeats: int) -> dict[str, Any]:
    done = run_child(src, route, requests, repeats)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# The two counted runs' sizes: their difference is what is divided out (see the docstring).
COUNTED_REQUESTS = (500, 1500)
_VALGRIND = ("valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null")
_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def count_instructions(src: Path | None, route: str, requests: int) -> int:
    """Instructions one child executes, start to end, serving `requests` requests."""
    done = run_child(src, route, requests, 1, _VALGRIND)
    found = _IREFS.search(done.stderr)
    if found is None:
        raise SystemExit(
            f"{route} ({src or 'HEAD'}): no count from valgrind: {done.stderr[-2000:]}"
        )
    return int(found.group(1).replace(",", ""))


def main_instructions(sides: dict[str, Path | None], output: Path) -> int:
    if shutil.which("valgrind") is None:
        print("-- gateway_path.py --instructions: valgrind is not installed; nothing counted")
        return 0
    print("-- gateway request path over fake sockets: instructions per request (cachegrind)")
    # Counts do not depend on what else runs: the children run side by side, one per core.
    jobs = [(route, side, n) for route in ROUTES for side in sides for n in COUNTED_REQUESTS]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counted = dict(
            zip(
                jobs,
                pool.map(lambda job: count_instructions(sides[job[1]], job[0], job[2]), jobs),
                strict=True,
            )
        )
    small, large = COUNTED_REQUESTS
    report: dict[str, Any] = {"unit": "instructions per request", "routes": {}}
    for route in ROUTES:
        counts = {}
        for side in sides:
            total = counted[route, side, large] - counted[route, side, small]
            counts[side] = total / (large - small)
            print(f"   {route:<6} {side:<9} {counts[side]:>10,.0f}")
        report["routes"][route] = counts
    print(f"\n{'route':<8}" + "".join(f"{side + ' instr/req':>20}" for side in sides), end="")
    print(f"{'HEAD/baseline':>15}" if BASELINE in sides else "")
    for route in ROUTES:
        counts = report["routes"][route]
        line = f"{route:<8}" + "".join(f"{counts[side]:>20,.0f}" for side in sides)
        if BASELINE in sides:
            counts["head_over_baseline"] = round(counts[HEAD] / counts[BASELINE], 4)
            line += f"{counts['head_over_baseline']:>14.4f}x"
        print(line)
    print("counted by valgrind (deterministic to ~0.05 %); HEAD/baseline < 1: HEAD does less")
    write_results(output, "gateway_path_instructions", report)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="another checkout, measured alternately")
    parser.add_argument("--rounds", type=int, default=6, help="ABBA rounds with --baseline")
    parser.add_argument("--requests", type=int, default=20_000, help="per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per process (best)")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions under valgrind instead"
    )
    parser.add_argument("--child", choices=ROUTES, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_here(args.child, args.requests, args.repeats)))
        return 0
    baseline_src = None
    if args.baseline is not None:
        baseline_src = args.baseline / "gateway" / "src"
        if not baseline_src.is_dir():
            parser.error(f"--baseline {args.baseline}: no gateway/src there")
    sides: dict[str, Path | None] = {HEAD: None}
    if args.instructions:
        if baseline_src is not None:
            sides[BASELINE] = baseline_src
        output = args.output
        if output == RESULTS:
            output = RESULTS.with_name("gateway_path_instructions.json")
        return main_instructions(sides, output)
    rounds = 1
    order = [HEAD]
    if baseline_src is not None:
        sides[BASELINE] = baseline_src
        rounds = args.rounds
        order = abba_order(rounds)
    report: dict[str, Any] = {"requests_per_run": args.requests, "rounds": rounds, "routes": {}}
    print(f"-- gateway request path over fake sockets: {args.requests} requests a run")
    for route in ROUTES:
        runs: dict[str, list[float]] = {side: [] for side in sides}
        for index, side in enumerate(order):
            result = child(sides[side], route, args.requests, args.repeats)
            runs[side].append(result["min_us"])
            number = index // 2 + 1
            print(f"   {route:<6} round {number}/{rounds} {side:<9} {result['min_us']:7.2f} us")
        report["routes"][route] = dict(runs)
    print(
        f"\n{'route':<8}"
        + "".join(f"{side + ' us/req':>22}" for side in sides)
        + (f"{'HEAD/baseline':>15}" if baseline_src else "")
    )
    for route in ROUTES:
        line = f"{route:<8}"
        medians = {}
        for side in sides:
            values = report["routes"][route][side]
            medians[side] = statistics.median(values)
            line += f"{medians[side]:>10.2f} [{min(values):.2f}-{max(values):.2f}]"
        if baseline_src is not None:
            ratio = medians[HEAD] / medians[BASELINE]
            report["routes"][route]["head_over_baseline"] = round(ratio, 3)
            line += f"{ratio:>14.3f}x"
        print(line)
    print("medians of each process's best run [min-max]; HEAD/baseline < 1: HEAD needs less")
    if args.baseline is not None:
        report["baseline"] = str(args.baseline)
    write_results(args.output, "gateway_path", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
