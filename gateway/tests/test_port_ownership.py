"""The gateway's ports are its own: a second gateway (or anything else) on them fails at once.

With SO_REUSEPORT a second gateway of the same user would bind the same port and the kernel
would split the clients between two systems; the workers share one inherited socket instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from gateway_support import BackendFactory, GatewayFactory, free_port, gateway_config, plain_client

pytestmark = pytest.mark.timeout(60)


def echo_config(url: str, **server: object) -> dict[str, object]:
    return gateway_config(
        {"echo": {"instances": [url]}},
        [{"path": "/*", "methods": ["GET"], "backend": "echo"}],
        **server,
    )


def joins(port: int) -> bool:
    """Whether a socket of this user may bind `port` too, as a gateway's workers used to."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_a_second_gateway_on_the_port_exits_at_once_and_the_first_keeps_every_client(
    backends: BackendFactory, gateways: GatewayFactory, tmp_path: Path
) -> None:
    first_backend, second_backend = backends("first"), backends("second")
    first = gateways(echo_config(first_backend.url), workers=2)
    assert not joins(first.port)
    assert not joins(first.admin_port)

    # Another gateway (another stack, the same user) asks for the same port.
    config = echo_config(
        second_backend.url, listen="127.0.0.1", port=first.port, admin={"port": free_port()}
    )
    config["server"]["workers"] = 2  # type: ignore[index]
    path = tmp_path / "second.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "mosaic_gateway", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        env={**os.environ, "LOG_FORMAT": "json"},
    )
    took = time.monotonic() - started
    assert second.returncode != 0, second.stdout + second.stderr
    assert f"port 127.0.0.1:{first.port} is in use" in second.stderr
    assert took < 10

    # Every client still reaches the first gateway's backend (new connections each time).
    seen: Counter[str] = Counter()
    for _ in range(50):
        async with plain_client(base_url=first.url, timeout=5) as client:
            seen[(await client.get("/x")).json()["instance"]] += 1
    assert seen == {"first": 50}
    assert second_backend.stats()["requests"] == 0
