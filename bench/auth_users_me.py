"""`GET /v1/users/me` requests per second against one auth instance, measured with wrk.

Starts its own embedded PostgreSQL and NATS, migrates, runs one `mosaic-auth serve` process,
signs a user up for a token, then loads the route. Writes bench/results/auth_users_me.json.
Run: .venv/bin/python bench/auth_users_me.py [--seconds 10] [--connections 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from loadgen import auth_with_user, print_table, run_wrk, write_results

from mosaic_devstack.embedded import EmbeddedNats, EmbeddedPostgres

RESULTS = Path(__file__).resolve().parent / "results" / "auth_users_me.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mosaic-bench-"))
    pg, nats = EmbeddedPostgres(root / "pg", durable=False), EmbeddedNats(root / "nats")
    pg.start()
    nats.start()
    env = {
        **os.environ,
        "DATABASE_URL": pg.url,
        "NATS_URL": nats.url,
        "LOG_LEVEL": "WARNING",
        # auth refuses to keep its signing keys in plaintext
        "AUTH_SIGNING_KEY_SECRET": os.urandom(32).hex(),
        "LOG_FORMAT": "json",
    }
    try:
        with auth_with_user(env) as (_server, url, token):
            result = run_wrk(
                "GET /v1/users/me (1 auth instance)",
                url + "/v1/users/me",
                headers={"Authorization": f"Bearer {token}"},
                seconds=args.seconds,
                connections=args.connections,
            )
    finally:
        nats.stop()
        pg.stop()
    print_table("auth service", [result])
    write_results(
        RESULTS,
        "auth_users_me",
        {
            "machine": {"cpus": os.cpu_count()},
            "load": {"tool": "wrk", "connections": args.connections, "seconds": args.seconds},
            "results": [result.to_json()],
        },
    )


if __name__ == "__main__":
    main()
