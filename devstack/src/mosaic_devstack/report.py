"""What `mosaic up` and `mosaic status` print: the stack as a table, and the seeded credentials."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mosaic_devstack.output import format_table, mask_url
from mosaic_devstack.state import ServerInfo, State

HEADERS = ("SERVICE", "INSTANCE", "URL", "STATE")


def server_state(info: ServerInfo) -> str:
    if info.embedded and info.pid is None:
        return "embedded cluster"  # its nodes have rows of their own
    return f"embedded (pid {info.pid})" if info.embedded else "external"


def stack_table(state: State, instance_states: Mapping[str, str] | None = None) -> str:
    """One row per server and per instance; `instance_states` overrides the recorded states."""
    rows: list[list[str]] = []
    for name, info in (("postgres", state.postgres), ("nats", state.nats)):
        if info is not None:
            rows.append([name, "-", mask_url(info.url), server_state(info)])
    for i, node in enumerate(state.nats_nodes, start=1):
        rows.append(["nats", f"nats-{i}", mask_url(node.url), server_state(node)])
    instances = [state.gateway, *state.instances] if state.gateway else state.instances
    for inst in instances:
        shown = (instance_states or {}).get(inst.instance, inst.state)
        if inst.restarts:
            shown += f" (restarted {inst.restarts}x)"
        rows.append([inst.service, inst.instance, inst.url, shown])
    return format_table(HEADERS, rows)


def credentials_text(credentials: Mapping[str, Any], path: Path) -> str:
    if not credentials:
        return (
            "No credentials recorded: the seed found everything already there and secrets "
            f"cannot be recovered ({path} is missing)."
        )
    lines = []
    for key, value in credentials.items():
        if key == "admin" and isinstance(value, dict):
            lines.append(f"Admin:    {value.get('email')}  password: {value.get('password')}")
        elif key == "apiKey" and isinstance(value, dict):
            name, ident = value.get("name"), value.get("id")
            lines.append(f"API key:  {value.get('key')}  (name: {name}, id: {ident})")
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    lines.append(f"(kept in {path}; `mosaic status --json` reports them)")
    return "\n".join(lines)


def gateway_text(state: State, credentials: Mapping[str, Any] | None) -> str:
    """The headline: where clients go (the gateway), and with which API key.

    `credentials` None: the key is not shown, only where to find it.
    """
    gateway = state.gateway
    if gateway is None:
        return "No gateway runs: clients call the instances above directly."
    lines = [f"Call the gateway: {gateway.url}"]
    api_key = (credentials or {}).get("apiKey")
    key = api_key.get("key") if isinstance(api_key, dict) else None
    if credentials is None:
        lines.append(
            "  every request carries an API key (x-api-key: the demo key is in "
            "`mosaic status --json`)"
        )
    elif key:
        lines.append(f"  every request carries the API key: curl -H 'x-api-key: {key}' \\")
        lines.append(f"    {gateway.url}/v1/blogs")
    else:
        lines.append(
            "  every request carries an API key (x-api-key); the demo key is not recorded: "
            "an admin creates one with POST /v1/api-keys"
        )
    lines.append(
        f"Gateway admin (this machine only): {gateway.admin_url}/admin/routes, /admin/backends"
    )
    return "\n".join(lines)
