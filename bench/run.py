"""`make bench`: every benchmark in turn; each prints its table and writes bench/results/*.json.

`make bench ARGS="gateway_proxy.py --seconds 5 oauth.py"` runs the benchmarks named, each with the
flags that follow its name.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "kit_token_verify.py",
    "auth_users_me.py",
    "blog_reads.py",
    "gateway_proxy.py",
    "gateway_path.py",
    "oauth.py",
    "service_chassis.py",
    "gateway_worker_start.py",
    "reco_eval.py",
    "reco_latency.py",
    "infra_capacity.py",
]


def plan(argv: list[str]) -> list[tuple[str, list[str]]]:
    """Each benchmark named in `argv` (a script in bench/) with the flags after its name; all of
    them, without flags, for an empty `argv`."""
    if not argv:
        return [(name, []) for name in BENCHMARKS]
    selected: list[tuple[str, list[str]]] = []
    for arg in argv:
        if arg.endswith(".py") and not arg.startswith("-"):
            if not (HERE / arg).is_file():
                raise SystemExit(f"{arg}: no such benchmark in bench/")
            selected.append((arg, []))
        elif selected:
            selected[-1][1].append(arg)
        else:
            raise SystemExit(f"{arg}: a benchmark's flags go after its name (e.g. oauth.py {arg})")
    return selected


def main() -> int:
    for name, flags in plan(sys.argv[1:]):
        print(f"== {' '.join([name, *flags])}", flush=True)
        command = [sys.executable, str(HERE / name), *flags]
        done = subprocess.run(command, cwd=HERE, check=False)
        if done.returncode != 0:
            print(f"{name} failed with exit code {done.returncode}", file=sys.stderr)
            return done.returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
