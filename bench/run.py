"""`make bench`: every benchmark in turn; each prints its table and writes bench/results/*.json."""

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
    "oauth.py",
    "service_chassis.py",
    "gateway_worker_start.py",
    "reco_eval.py",
    "reco_latency.py",
    "infra_capacity.py",
]


def main() -> int:
    selected = sys.argv[1:] or BENCHMARKS
    for name in selected:
        print(f"== {name}", flush=True)
        done = subprocess.run([sys.executable, str(HERE / name)], cwd=HERE, check=False)
        if done.returncode != 0:
            print(f"{name} failed with exit code {done.returncode}", file=sys.stderr)
            return done.returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
