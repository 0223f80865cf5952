"""`mosaic up` puts the gateway in front: a real `mosaic-gateway` process, supervised like the
services, in front of fake services registered as `auth` and `blog` (found through NATS)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import time

import psutil
from devstack_support import Stack, family, get, occupy, under, wait_all_gone

from mosaic_devstack.embedded import free_port
from mosaic_devstack.procs import ProcessRef
from mosaic_gateway.config import load_config


def _gateway_workers(pid: int) -> list[ProcessRef]:
    return [ProcessRef.of(child.pid) for child in psutil.Process(pid).children()]


def _joins(port: int) -> bool:
    """Whether another process of this user could bind `port` too, as a second gateway's
    SO_REUSEPORT workers used to (the kernel then splits the clients between the two)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_the_gateway_routes_to_the_services_is_restarted_and_stops_first(
    stack: Stack, pg_url: str, nats_url: str
) -> None:
    stack.use_services("auth", "blog")
    stack.env.update(DATABASE_URL=pg_url, NATS_URL=nats_url)
    proc = stack.up_foreground("--replicas", "1", "--grace", "5", "--gateway-port", "0")
    state = stack.wait_ready(60)

    gateway = state["gateway"]
    assert gateway["state"] == "ready"
    assert gateway["workers"] == 2
    assert len(_gateway_workers(gateway["pid"])) == 2
    url = gateway["url"]
    assert url == f"http://127.0.0.1:{gateway['port']}"
    config_file = stack.data / "gateway.yaml"
    assert gateway["config_file"] == str(config_file)
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    config = load_config(config_file)
    assert config.server.port == gateway["port"]
    assert config.server.admin is not None
    assert gateway["admin_url"] == f"http://127.0.0.1:{config.server.admin.port}"
    assert config.nats is not None
    assert config.nats.url == nats_url

    # The gateway is THE address: printed as such, and reported by `mosaic status`.
    assert f"Call the gateway: {url}" in stack.output()
    status = stack.status_json()
    assert status["gateway"]["url"] == url
    assert status["gateway"]["admin_url"] == gateway["admin_url"]
    assert status["gateway"]["ready"] is True
    assert get(f"{gateway['admin_url']}/readyz").status_code == 200
    # Its ports are its own.
    assert not _joins(gateway["port"])
    assert not _joins(config.server.admin.port)

    # A routed request reaches a service instance (found through NATS discovery).
    probe = get(f"{url}/v1/auth/jwks.json")
    assert probe.status_code == 200
    assert probe.json() == {"keys": []}
    assert '"path": "/v1/auth/jwks.json"' in stack.log("auth-1")
    unknown = get(f"{url}/v1/nothing-here")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert unknown.json()["code"] == "gateway.no_route"

    # Killed outright, it is restarted on the same address, and its orphaned workers go.
    old_workers = _gateway_workers(gateway["pid"])
    os.kill(gateway["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        again = stack.state()["gateway"]
        if again["pid"] != gateway["pid"] and again["state"] == "ready":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the gateway was not restarted:\n{stack.output()}")
    assert again["url"] == url
    assert again["restarts"] == 1
    assert not _joins(gateway["port"])
    assert wait_all_gone(old_workers) == []
    assert get(f"{url}/v1/auth/jwks.json").status_code == 200
    assert "gateway died unexpectedly (killed by SIGKILL); restarting" in stack.log("mosaic")

    everything = family(stack.state())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert wait_all_gone(everything) == []
    assert under(stack.data) == []
    out = stack.output()
    # Clients stop getting in before the services behind the gateway go.
    assert out.index("stopping the gateway") < out.index("stopping 2 service")


def test_the_gateway_port_is_the_one_asked_for_or_a_free_one(
    stack: Stack, pg_url: str, nats_url: str
) -> None:
    stack.use_services("auth", "blog")
    stack.env.update(DATABASE_URL=pg_url, NATS_URL=nats_url)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused = stack.up_detached("--replicas", "1", "--gateway-port", str(port))
    assert refused.returncode == 1
    assert f"gateway: port {port} is in use" in refused.stdout
    assert not (stack.data / "state.json").exists()
    assert under(stack.data) == []

    # By default 8080, which is busy here (held by this test if nobody else holds it).
    with occupy(8080):
        result = stack.up_detached("--replicas", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    state = stack.state()
    assert state["gateway"]["port"] != 8080
    assert f"Call the gateway: {state['gateway']['url']}" in result.stdout
    assert "gateway: port 8080 is in use; using a free one" in stack.log("mosaic")
    assert get(f"{state['gateway']['url']}/v1/auth/jwks.json").status_code == 200
    everything = family(state)
    assert stack.mosaic("down").returncode == 0
    assert wait_all_gone(everything) == []

    without = stack.up_detached("--replicas", "1", "--no-gateway")
    assert without.returncode == 0, without.stdout + without.stderr
    assert stack.state()["gateway"] is None
    assert stack.status_json()["gateway"] is None
    assert "No gateway runs" in without.stdout
    assert stack.mosaic("down").returncode == 0


def test_the_gateway_port_is_held_from_the_check_on(
    stack: Stack, pg_url: str, nats_url: str
) -> None:
    """Between the port check and the gateway's start (services migrating, seeding, getting
    ready) no other stack may take the port: a second `mosaic up` asking for it fails at once."""
    stack.use_services("auth", "blog")
    stack.env.update(DATABASE_URL=pg_url, NATS_URL=nats_url, FAKE_NEVER_READY="1")
    port = free_port()
    proc = stack.up_foreground("--replicas", "1", "--gateway-port", str(port))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the services are starting: the port was checked
        assert proc.poll() is None, stack.output()
        if (stack.data / "state.json").exists() and stack.state()["instances"]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"no service started:\n{stack.output()}")
    assert stack.state()["gateway"] is None
    assert not _joins(port)

    (stack.root / "other").mkdir()
    other = Stack(stack.root / "other")
    other.use_services("auth", "blog")
    other.env.update(DATABASE_URL=pg_url, NATS_URL=nats_url)
    started = time.monotonic()
    refused = other.up_detached("--replicas", "1", "--gateway-port", str(port))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"gateway: port {port} is in use" in refused.stdout
    assert time.monotonic() - started < 15
    assert under(other.data) == []

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert under(stack.data) == []
    assert _joins(port)  # released with the stack
