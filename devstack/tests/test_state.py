"""state.json / credentials.json handling, and pid identity."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mosaic_devstack.procs import ProcessRef
from mosaic_devstack.state import (
    DataDir,
    InstanceInfo,
    ServerInfo,
    State,
    kept_secrets,
    merge_credentials,
    read_state,
    write_private_json,
    write_state,
)


def test_credentials_merge_keeps_secrets_the_seed_cannot_return() -> None:
    kept = {"admin": {"email": "a@x", "password": "p1"}, "apiKey": {"key": "k1"}}
    # Second run: everything existed, the seed answers null, what we hold stays.
    assert merge_credentials(kept, {"admin": None, "apiKey": None}) == kept
    # The database was wiped and the seed created a new admin: the new password is the one
    # that works, the old API key record stays.
    merged = merge_credentials(kept, {"admin": {"email": "a@x", "password": "p2"}, "apiKey": None})
    assert merged["admin"]["password"] == "p2"
    assert merged["apiKey"] == {"key": "k1"}
    assert merge_credentials({}, {"admin": None}) == {}


def test_private_json_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    target = tmp_path / "credentials.json"
    old = os.umask(0)
    try:
        write_private_json(target, {"secret": "x"})
        write_private_json(target, {"secret": "y"})  # replacing keeps it private
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text().strip().endswith("}")
    assert [p.name for p in tmp_path.iterdir()] == ["credentials.json"]  # no temp file left


def test_generated_secrets_are_private_kept_and_never_replaced(tmp_path: Path) -> None:
    data = DataDir.at(tmp_path / "data")
    data.create()
    old = os.umask(0)
    try:
        first = kept_secrets(data, ["AUTH_SIGNING_KEY_SECRET"], {})
    finally:
        os.umask(old)
    secret = first["AUTH_SIGNING_KEY_SECRET"]
    assert len(secret) >= 40
    path = data.secrets / "AUTH_SIGNING_KEY_SECRET"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.secrets.stat().st_mode) == 0o700
    assert kept_secrets(data, ["AUTH_SIGNING_KEY_SECRET"], {}) == first
    # Set by whoever runs `mosaic up`: theirs is used, nothing is generated for it.
    assert kept_secrets(data, ["AUTH_SIGNING_KEY_SECRET", "OTHER"], {"OTHER": "mine"}) == first
    assert not (data.secrets / "OTHER").exists()
    assert path.read_text().strip() == secret


def test_state_round_trip_and_stop_order(tmp_path: Path) -> None:
    data = DataDir.at(tmp_path)
    data.create()
    state = State(
        supervisor_pid=10,
        supervisor_started=1.5,
        started_at="2025-01-01T00:00:00Z",
        data_dir=str(tmp_path),
        credentials_file=str(data.credentials_file),
        logs_dir=str(data.logs),
        postgres=ServerInfo(url="postgresql+asyncpg://x", embedded=True, pid=20, pid_started=2.0),
        nats=ServerInfo(url="nats://elsewhere:4222", embedded=False),
        instances=[
            InstanceInfo(service="auth", instance="auth-1", url="http://h:1", port=1, pid=30),
            InstanceInfo(service="auth", instance="auth-2", url="http://h:2", port=2),
        ],
    )
    write_state(data, state)
    assert stat.S_IMODE(data.state_file.stat().st_mode) == 0o600
    again = read_state(data)
    assert again == state
    # Services before servers, and never a process of a server we did not start.
    assert [ref.pid for ref in again.processes()] == [30, 20]


def test_a_reused_pid_is_not_taken_for_ours() -> None:
    me = ProcessRef.of(os.getpid())
    assert me.alive()
    assert me.started is not None
    assert not ProcessRef(os.getpid(), me.started - 3600).alive()
