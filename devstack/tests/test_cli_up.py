"""`mosaic up/status/down` as real processes: embedded PostgreSQL and NATS, a real fake service."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import psutil
from devstack_support import (
    SECRET,
    Stack,
    family,
    get,
    logged_pids,
    occupy,
    recorded,
    under,
    wait_all_gone,
)

from mosaic_devstack.embedded import port_open
from mosaic_devstack.procs import ProcessRef


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_fresh_up_serves_restarts_a_killed_replica_and_stops_everything_on_sigterm(
    stack: Stack,
) -> None:
    with occupy(5432, 4222):  # the usual ports being taken must not matter
        proc = stack.up_foreground("--replicas", "2", "--grace", "5")
        state = stack.wait_ready()

    assert mode(stack.data / "state.json") == 0o600
    assert mode(stack.data / "credentials.json") == 0o600
    assert state["supervisor_pid"] == proc.pid
    assert state["postgres"]["embedded"]
    assert state["nats"]["embedded"]
    assert ":5432/" not in state["postgres"]["url"]
    assert not state["nats"]["url"].endswith(":4222")
    names = [i["instance"] for i in state["instances"]]
    assert names == ["fake-1", "fake-2"]
    assert len({i["port"] for i in state["instances"]}) == 2

    status = stack.status_json()
    assert [i["ready"] for i in status["instances"]] == [True, True]
    admin = status["credentials"]["admin"]
    assert status["credentials"]["apiKey"]["key"].startswith("mk_")
    # The password reported is the one the seed stored in the real database.
    first = state["instances"][0]
    assert get(f"{first['url']}/verify?password={admin['password']}").status_code == 200
    assert get(f"{first['url']}/verify?password=wrong").status_code == 401
    env = get(f"{first['url']}/env").json()
    assert env["INSTANCE_ID"] == "fake-1"
    assert env["DATABASE_URL"] == state["postgres"]["url"]
    assert env["NATS_URL"] == state["nats"]["url"]
    assert env["DB_SCHEMA"] == stack.schema
    assert env["LOG_FORMAT"] == "json"

    # Output is streamed with the instance's name, and kept per instance.
    assert '"event": "serving", "instance": "fake-2"' in stack.log("fake-2")
    assert any(
        line.startswith("fake-1") and '"event": "serving"' in line
        for line in stack.output().splitlines()
    )
    for log in (stack.data / "logs").iterdir():
        assert admin["password"] not in log.read_text(errors="replace"), log

    # A replica that dies is restarted on the same URL, and the supervisor says so.
    os.kill(first["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        again = stack.state()["instances"][0]
        if again["pid"] != first["pid"] and again["state"] == "ready":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"fake-1 not restarted:\n{stack.output()}")
    assert again["url"] == first["url"]
    assert again["restarts"] == 1
    assert get(f"{first['url']}/readyz").status_code == 200
    assert "fake-1 died unexpectedly (killed by SIGKILL); restarting" in stack.log("mosaic")

    # So is an embedded server, on the same URL (the services keep their configuration).
    nats = stack.state()["nats"]
    os.kill(nats["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and stack.state()["nats"]["pid"] == nats["pid"]:
        time.sleep(0.1)
    assert stack.state()["nats"]["url"] == nats["url"]
    assert stack.status_json()["nats"]["reachable"]
    assert "NATS died unexpectedly (killed by SIGKILL)" in stack.log("mosaic")

    everything = family(stack.state())
    assert len(everything) > 5  # supervisor, 2 services, nats, postmaster and its helpers
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert wait_all_gone(everything) == []
    assert under(stack.data) == []
    assert not (stack.data / "state.json").exists()
    out = stack.output()
    # Services first, then NATS, then PostgreSQL.
    assert (
        out.index("stopping 2 service")
        < out.index("stopping NATS")
        < out.index("stopping PostgreSQL")
    )
    assert stack.mosaic("status").returncode == 1


def test_second_up_reuses_data_and_credentials_and_down_stops_everything(stack: Stack) -> None:
    first = stack.up_detached("--replicas", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    credentials = (stack.data / "credentials.json").read_bytes()
    # The secret asked for in the registry: generated into the data folder, private, given to
    # the replica, shown nowhere.
    secret_file = stack.data / "secrets" / SECRET
    assert mode(secret_file) == 0o600
    assert mode(secret_file.parent) == 0o700
    secret = secret_file.read_text().strip()
    assert len(secret) >= 40
    assert psutil.Process(stack.state()["instances"][0]["pid"]).environ()[SECRET] == secret
    # No auth among the services: nothing to verify keys and tokens with.
    assert stack.state()["gateway"] is None
    assert "gateway: not started, it verifies API keys and tokens with auth" in stack.log("mosaic")
    password = stack.status_json()["credentials"]["admin"]["password"]
    assert password in first.stdout  # `up` prints the admin's password ...
    refused = stack.up_detached()  # ... and refuses a second supervisor on the same data
    assert refused.returncode == 1
    assert "already running" in refused.stdout
    down = stack.mosaic("down")
    assert down.returncode == 0, down.stdout + down.stderr
    pg_version = (stack.data / "pg" / "PG_VERSION").stat()

    second = stack.up_detached("--replicas", "1")
    assert second.returncode == 0, second.stdout + second.stderr
    state = stack.state()
    assert (stack.data / "pg" / "PG_VERSION").stat().st_mtime_ns == pg_version.st_mtime_ns
    assert (stack.data / "credentials.json").read_bytes() == credentials
    assert '"created": {"admin": false, "apikey": false}' in stack.log("fake-seed")
    # The same secret again, still private: what was stored with it stays readable.
    assert secret_file.read_text().strip() == secret
    assert mode(secret_file) == 0o600
    assert psutil.Process(state["instances"][0]["pid"]).environ()[SECRET] == secret
    shown = [
        first.stdout,
        first.stderr,
        second.stdout,
        second.stderr,
        stack.mosaic("status", "--json").stdout,
    ]
    shown += [log.read_text(errors="replace") for log in (stack.data / "logs").iterdir()]
    assert not [text for text in shown if secret in text]
    status = stack.status_json()
    assert status["credentials"]["admin"]["password"] == password
    url = state["instances"][0]["url"]
    assert get(f"{url}/verify?password={password}").status_code == 200

    everything = family(state)
    down = stack.mosaic("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert wait_all_gone(everything, timeout=1) == []
    assert under(stack.data) == []
    assert not (stack.data / "state.json").exists()
    assert stack.mosaic("status").returncode == 1


def test_a_service_that_never_gets_ready_fails_up_clearly_and_cleans_up(stack: Stack) -> None:
    stack.env["FAKE_NEVER_READY"] = "1"
    proc = stack.up_foreground("--replicas", "1", "--ready-timeout", "2", "--grace", "2")
    assert proc.wait(60) == 1
    out = stack.output()
    assert "fake-1 not ready after 2s" in out
    assert "last answer 503" in out
    assert '"never_ready": true' in out.split("fake-1 not ready after 2s")[1]  # the log's tail
    assert not (stack.data / "state.json").exists()
    assert under(stack.data) == []
    pids = logged_pids(stack.log("fake-1"))
    assert len(pids) == 1
    assert wait_all_gone([ProcessRef(pids[0])]) == []


def test_external_servers_are_used_and_never_stopped(
    stack: Stack, pg_url: str, nats_url: str
) -> None:
    stack.env["DATABASE_URL"] = pg_url
    stack.env["NATS_URL"] = nats_url
    result = stack.up_detached("--replicas", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    state = stack.state()
    expected = {"url": pg_url, "embedded": False, "pid": None, "pid_started": None}
    assert state["postgres"] == expected
    assert state["nats"]["embedded"] is False
    assert state["nats"]["url"] == nats_url
    assert not (stack.data / "pg").exists()
    assert not (stack.data / "nats").exists()
    env = get(f"{state['instances'][0]['url']}/env").json()
    assert (env["DATABASE_URL"], env["NATS_URL"]) == (pg_url, nats_url)
    status = stack.status_json()
    assert status["postgres"]["reachable"]
    assert status["nats"]["reachable"]

    assert stack.mosaic("down").returncode == 0
    assert wait_all_gone(recorded(state)) == []
    nats_port = int(nats_url.rsplit(":", 1)[1])
    assert port_open("127.0.0.1", nats_port)  # the external servers keep running


def test_a_service_ignoring_sigterm_is_killed_after_the_grace_period(
    stack: Stack, pg_url: str, nats_url: str
) -> None:
    stack.env.update(DATABASE_URL=pg_url, NATS_URL=nats_url, FAKE_IGNORE_SIGTERM="1")
    assert stack.up_detached("--replicas", "1", "--grace", "1").returncode == 0
    state = stack.state()
    started = time.monotonic()
    assert stack.mosaic("down").returncode == 0
    assert wait_all_gone(recorded(state), timeout=1) == []
    assert time.monotonic() - started < 20
    assert "(mosaic: fake-1 did not stop; killing it)" in stack.log("fake-1")


def test_down_cleans_up_after_a_supervisor_that_was_killed(stack: Stack) -> None:
    result = stack.up_detached("--replicas", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    state = stack.state()
    everything = family(state)
    os.kill(state["supervisor_pid"], signal.SIGKILL)
    assert wait_all_gone(recorded(state)[:1]) == []

    status = stack.mosaic("status")
    assert status.returncode == 1
    assert "supervisor died" in status.stdout
    assert str(state["instances"][0]["pid"]) in status.stdout  # still running, and said so

    down = stack.mosaic("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopping leftover processes" in down.stdout
    assert wait_all_gone(everything) == []
    assert under(stack.data) == []


def test_several_services_each_get_their_schema_and_stop_in_reverse_order(
    stack: Stack, pg_url: str, nats_url: str
) -> None:
    stack.use_services("first", "second")
    stack.env.update(DATABASE_URL=pg_url, NATS_URL=nats_url)
    result = stack.up_detached("--replicas", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    state = stack.state()
    assert [i["instance"] for i in state["instances"]] == ["first-1", "second-1"]
    schemas = [get(f"{i['url']}/env").json()["DB_SCHEMA"] for i in state["instances"]]
    assert schemas[0].startswith("first_")
    assert schemas[1].startswith("second_")
    # The one-shot steps ran against each service's own schema too.
    assert f'"schema": "{schemas[1]}"' in stack.log("second-migrate")

    assert stack.mosaic("down").returncode == 0
    stopped = {}
    for name in ("first-1", "second-1"):
        records = [json.loads(line) for line in stack.log(name).splitlines()]
        stopped[name] = next(r["time"] for r in records if r["event"] == "stopped")
    # The later service (think: the gateway) stops before the ones it depends on.
    assert stopped["second-1"] < stopped["first-1"]
