"""`mosaic up --nats-cluster 3`: three embedded NATS servers as one JetStream cluster.

The fault test runs the nodes exactly as the supervisor does (`nats_cluster`, `wait_jetstream`),
kills the stream's leader with SIGKILL while events flow, and checks that every event was
applied once, and that the killed node catches up when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pydantic
import pytest
from devstack_support import Stack, get, recorded, under, wait_all_gone
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamInfo

from mosaic_devstack.cli import build_parser
from mosaic_devstack.embedded import (
    EmbeddedNats,
    cluster_url,
    free_port,
    nats_cluster,
    pid_alive,
    wait_jetstream,
)
from mosaic_kit.events import EVENT_PREFIX, stream_name
from mosaic_kit.nats.jetstream import ensure_stream
from mosaic_kit.settings import ServiceSettings

SERVICE = "clustertest"
SUBJECT = f"{EVENT_PREFIX}{SERVICE}.happened"
EVENTS = 300
KILL_AT = 100


def _ports() -> Iterator[int]:
    seen: set[int] = set()
    while True:
        port = free_port()
        if port not in seen:
            seen.add(port)
            yield port


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[EmbeddedNats]]:
    ports = _ports()
    nodes = nats_cluster(tmp_path / "nats", 3, lambda: next(ports), tmp_path / "logs")
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        pids = [node.pid for node in nodes if node.pid is not None]
        for node in nodes:
            node.stop()
        assert not [pid for pid in pids if pid_alive(pid)]


async def _connect(url: str, name: str) -> Client:
    # As the kit's clients do: every node listed, reconnecting for good.
    return await nats.connect(
        servers=url.split(","),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        connect_timeout=2,
    )


async def _publish(js: JetStreamContext, event_id: str) -> int:
    """Publish until stored; a retry after a lost ack carries the same Nats-Msg-Id, so the
    stream drops the copy. Returns the attempts it took."""
    attempts = 0
    deadline = time.monotonic() + 30.0
    while True:
        attempts += 1
        try:
            await js.publish(
                SUBJECT, event_id.encode(), timeout=1.0, headers={"Nats-Msg-Id": event_id}
            )
            return attempts
        except (nats.errors.Error, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _stream_info(js: JetStreamContext) -> StreamInfo | None:
    try:
        return await js.stream_info(stream_name(SERVICE))
    except (nats.errors.Error, TimeoutError):
        return None


async def test_cluster_keeps_every_event_when_a_node_is_killed(
    cluster: list[EmbeddedNats], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `mosaic up --nats-cluster 3` gives the services, who create their streams with it.
    monkeypatch.setenv("NATS_STREAM_REPLICAS", "3")
    settings = ServiceSettings.load()
    began = time.monotonic()
    url = cluster_url(cluster)
    await wait_jetstream(url, timeout=30.0)
    publisher, applier = await _connect(url, "publisher"), await _connect(url, "applier")
    try:
        js = publisher.jetstream(timeout=2.0)
        await ensure_stream(js, SERVICE, replicas=settings.nats_stream_replicas)
        info = await js.stream_info(stream_name(SERVICE))
        assert info.config.num_replicas == 3
        sub = await applier.jetstream(timeout=2.0).pull_subscribe(
            SUBJECT,
            durable="applier",
            stream=stream_name(SERVICE),
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=2.0),
        )
        applied: set[str] = set()
        deliveries = 0
        done = asyncio.Event()

        async def apply() -> None:
            # The effect is keyed by the event id, as the kit's consumer dedups by it: a
            # redelivery (an ack lost in the failover) is acknowledged, not applied again.
            nonlocal deliveries
            while not done.is_set():
                try:
                    batch = await sub.fetch(50, timeout=0.5)
                except (nats.errors.Error, TimeoutError):
                    continue
                for msg in batch:
                    deliveries += 1
                    applied.add(msg.data.decode())
                    with contextlib.suppress(nats.errors.Error, TimeoutError):
                        await msg.ack()

        consumer = asyncio.create_task(apply())
        assert info.cluster is not None
        leader = next(n for n in cluster if n.peer and n.peer.name == info.cluster.leader)
        victim_pid = leader.pid
        assert victim_pid is not None
        retries = 0
        ids = [f"evt-{i:04d}" for i in range(EVENTS)]
        for i, event_id in enumerate(ids):
            if i == KILL_AT:
                # The stream's leader: the case where the remaining two must elect a new one.
                os.kill(victim_pid, signal.SIGKILL)
                assert leader.process is not None
                leader.process.wait(5)
                killed_at = time.monotonic()
            retries += await _publish(js, event_id) - 1
            await asyncio.sleep(0.005)
        published = time.monotonic()
        deadline = published + 20.0
        while len(applied) < EVENTS and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        done.set()
        await consumer

        assert applied == set(ids), f"missing: {sorted(set(ids) - applied)[:10]}"
        after = await js.stream_info(stream_name(SERVICE))
        # Retried publications were dropped as duplicates: one stored message per event.
        assert after.state.messages == EVENTS
        assert after.cluster is not None
        assert leader.peer is not None
        assert after.cluster.leader != leader.peer.name
        print(
            f"\npublished {EVENTS} events in {published - began:.1f}s; leader killed "
            f"{published - killed_at:.1f}s before the end; {retries} publish retries, "
            f"{deliveries - EVENTS} redeliveries"
        )

        # Back with the same name and storage, it rejoins and catches up.
        leader.start()
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            now = await _stream_info(js)
            peers = (now.cluster.replicas or []) if now and now.cluster else []
            if len(peers) == 2 and all(p.current and not p.offline for p in peers):
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail(f"the restarted node did not catch up: {now and now.cluster}")
        names = {now.cluster.leader, *(p.name for p in peers)} if now and now.cluster else set()
        assert names == {n.peer.name for n in cluster if n.peer}
        print(f"rejoined; whole test {time.monotonic() - began:.1f}s")
    finally:
        await publisher.close()
        await applier.close()


@pytest.mark.parametrize("value", ["0", "2", "4", "7", "-1", "three"])
def test_nats_cluster_refuses_sizes_without_a_quorum(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["up", "--nats-cluster", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--nats-cluster" in err
    if value == "2":
        assert "odd number of at least 3" in err


@pytest.mark.parametrize("value", ["1", "3", "5"])
def test_nats_cluster_accepts_sizes_with_a_quorum(value: str) -> None:
    args = build_parser().parse_args(["up", "--nats-cluster", value])
    assert args.nats_cluster == int(value)


def test_nats_cluster_defaults_to_the_single_server() -> None:
    assert build_parser().parse_args(["up"]).nats_cluster == 1


def test_up_with_a_cluster_gives_services_every_node_and_down_stops_them(stack: Stack) -> None:
    result = stack.up_detached("--replicas", "1", "--no-gateway", "--nats-cluster", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    state = stack.state()
    nodes = state["nats_nodes"]
    assert len(nodes) == 3
    assert all(node["embedded"] and node["pid"] for node in nodes)
    urls = [node["url"] for node in nodes]
    assert state["nats"]["url"] == ",".join(urls)
    assert (stack.data / "nats" / "node-2").is_dir()

    env = get(f"{state['instances'][0]['url']}/env").json()
    assert env["NATS_URL"] == ",".join(urls)
    assert env["NATS_STREAM_REPLICAS"] == "3"  # the kit's ensure_stream makes R3 streams
    status = stack.status_json()
    assert [node["reachable"] for node in status["nats_nodes"]] == [True, True, True]
    shown = stack.mosaic("status")
    assert all(f"nats-{i}" in shown.stdout for i in (1, 2, 3)), shown.stdout

    # A node that dies is restarted on its port, and recorded with its new pid.
    os.kill(nodes[1]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and stack.state()["nats_nodes"][1]["pid"] == nodes[1]["pid"]:
        time.sleep(0.1)
    again = stack.state()["nats_nodes"]
    assert again[1]["pid"] != nodes[1]["pid"], stack.log("mosaic")
    assert [node["url"] for node in again] == urls
    assert [node["pid"] for node in again[::2]] == [nodes[0]["pid"], nodes[2]["pid"]]
    assert "NATS node 2 died unexpectedly (killed by SIGKILL)" in stack.log("mosaic")
    assert stack.status_json()["nats_nodes"][1]["reachable"]

    refs = recorded(stack.state())
    down = stack.mosaic("down", timeout=90)
    assert down.returncode == 0, down.stdout + down.stderr
    assert wait_all_gone(refs) == []
    assert under(stack.data) == []


def test_stream_replicas_are_a_validated_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NATS_STREAM_REPLICAS", raising=False)
    assert ServiceSettings.load().nats_stream_replicas == 1  # a single server, as before
    monkeypatch.setenv("NATS_STREAM_REPLICAS", "3")
    assert ServiceSettings.load().nats_stream_replicas == 3
    for bad in ("0", "6", "many"):
        monkeypatch.setenv("NATS_STREAM_REPLICAS", bad)
        with pytest.raises(pydantic.ValidationError, match="nats_stream_replicas"):
            ServiceSettings.load()
