"""`mosaic status`: what state.json says runs, checked against what actually answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import httpx

from mosaic_devstack.embedded import port_open
from mosaic_devstack.output import Console, mask_url
from mosaic_devstack.report import gateway_text, stack_table
from mosaic_devstack.state import (
    DataDir,
    GatewayInfo,
    InstanceInfo,
    ServerInfo,
    State,
    StateError,
    read_credentials,
    read_state,
)


async def _probe(client: httpx.AsyncClient, inst: InstanceInfo) -> str:
    proc = inst.process()
    if proc is not None and not proc.alive():
        return "failed" if inst.state == "failed" else "down"
    # The gateway's health is on its admin port; its own port only has the routes.
    base = inst.admin_url if isinstance(inst, GatewayInfo) else inst.url
    try:
        answer = await client.get(base + inst.ready_path)
    except httpx.HTTPError:
        return "restarting" if inst.state == "restarting" else "unreachable"
    return "ready" if answer.status_code == 200 else f"not ready ({answer.status_code})"


async def probe_instances(state: State) -> dict[str, str]:
    """Live state of every instance, and of the gateway (under its name, `gateway`)."""
    every = [state.gateway, *state.instances] if state.gateway else state.instances
    async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
        states = await asyncio.gather(*(_probe(client, inst) for inst in every))
    return {inst.instance: st for inst, st in zip(every, states, strict=True)}


def server_reachable(info: ServerInfo) -> bool:
    # The first of possibly several comma-separated URLs is enough to say "it answers".
    try:
        parts = urlsplit(info.url.split(",")[0].strip())
        return port_open(parts.hostname or "127.0.0.1", parts.port or 0, timeout=1.0)
    except ValueError:
        return False


def _server_json(info: ServerInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {
        "url": info.url,
        "embedded": info.embedded,
        "pid": info.pid,
        "reachable": server_reachable(info),
    }


def _gateway_json(gateway: GatewayInfo | None, probed: dict[str, str]) -> dict[str, Any] | None:
    if gateway is None:
        return None
    return {
        "url": gateway.url,
        "admin_url": gateway.admin_url,
        "port": gateway.port,
        "workers": gateway.workers,
        "config_file": gateway.config_file,
        "pid": gateway.pid,
        "state": probed[gateway.instance],
        "ready": probed[gateway.instance] == "ready",
        "restarts": gateway.restarts,
    }


def status_document(data: DataDir, state: State, probed: dict[str, str]) -> dict[str, Any]:
    return {
        "running": True,
        "status": state.status,
        "data_dir": state.data_dir,
        "supervisor_pid": state.supervisor_pid,
        "started_at": state.started_at,
        "ready_at": state.ready_at,
        # What clients call (null when the stack runs without one).
        "gateway": _gateway_json(state.gateway, probed),
        "postgres": _server_json(state.postgres),
        "nats": _server_json(state.nats),
        "nats_nodes": [_server_json(node) for node in state.nats_nodes],
        "instances": [
            {
                "service": inst.service,
                "instance": inst.instance,
                "url": inst.url,
                "port": inst.port,
                "pid": inst.pid,
                "state": probed[inst.instance],
                "ready": probed[inst.instance] == "ready",
                "restarts": inst.restarts,
            }
            for inst in state.instances
        ],
        "logs_dir": state.logs_dir,
        "credentials_file": state.credentials_file,
        "credentials": _credentials(data),
    }


def _credentials(data: DataDir) -> dict[str, Any]:
    try:
        return read_credentials(data)
    except StateError as exc:
        return {"error": str(exc)}


def status(data: DataDir, *, as_json: bool, console: Console) -> int:
    try:
        state = read_state(data)
    except StateError as exc:
        console.say(str(exc))
        return 1
    if state is None or not state.supervisor().alive():
        left = [ref.pid for ref in state.processes() if ref.alive()] if state else []
        if as_json:
            doc = {"running": False, "data_dir": str(data.root), "leftover_pids": left}
            console.say(json.dumps(doc, indent=2))
        elif state is None:
            console.say(f"mosaic is not running on {data.root}")
        else:
            hint = f"; still alive: {left} (`mosaic down` stops them)" if left else ""
            console.say(f"mosaic is not running on {data.root}: its supervisor died{hint}")
        return 1
    probed = asyncio.run(probe_instances(state))
    if as_json:
        console.say(json.dumps(status_document(data, state, probed), indent=2))
        return 0
    console.say(
        f"mosaic {state.status} on {state.data_dir} since {state.started_at} "
        f"(supervisor pid {state.supervisor_pid})"
    )
    console.say("")
    console.say(stack_table(state, probed))
    servers = [("postgres", state.postgres), ("nats", state.nats)]
    servers += [(f"nats-{i}", node) for i, node in enumerate(state.nats_nodes, start=1)]
    for name, info in servers:
        if info is not None and not server_reachable(info):
            console.say(f"warning: {name} at {mask_url(info.url)} does not answer")
    console.say("")
    console.say(gateway_text(state, None))
    console.say(f"Credentials: {state.credentials_file} (or `mosaic status --json`)")
    return 0
