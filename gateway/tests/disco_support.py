"""Helpers for the discovery and reload tests: gateways started with extra CLI flags, their
JSON logs, configuration files rewritten the way editors do, and `nats.micro` services that
announce an HTTP instance the way Mosaic's services do (`mosaic_kit.nats.rpc.discovery_metadata`)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml
from gateway_support import Gateway, GatewayFactory, plain_client

from mosaic_kit.nats.connection import Client
from mosaic_kit.nats.rpc import RpcService, serve

# The server section each gateway was started with (its file may be broken on purpose).
_servers: dict[Path, dict[str, Any]] = {}


class Gateways(GatewayFactory):
    """GatewayFactory that remembers each gateway's server section, for `rewrite`."""

    def __call__(
        self, config: dict[str, Any], workers: int = 1, args: Sequence[str] = ()
    ) -> Gateway:
        gateway = super().__call__(config, workers, args)
        started_with = yaml.safe_load(gateway.config_path.read_text())
        _servers[gateway.config_path] = started_with["server"]
        return gateway


def rewrite(gateway: Gateway, config: dict[str, Any] | str) -> None:
    """Replace the gateway's file whole (write aside, rename over), as editors and tools do.

    The server section is the running one, with what `config` says of it on top."""
    if isinstance(config, dict):
        server = {**_servers[gateway.config_path], **(config.get("server") or {})}
        text = yaml.safe_dump({**config, "server": server}, sort_keys=False)
    else:
        text = config
    aside = gateway.config_path.with_suffix(".tmp")
    aside.write_text(text)
    os.replace(aside, gateway.config_path)


def events(gateway: Gateway, name: str | None = None) -> list[dict[str, Any]]:
    """The gateway's JSON log lines (all processes), or those of one event."""
    found = []
    for line in gateway.process.output().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if name is None or event.get("event") == name:
                found.append(event)
    return found


async def wait_for_event(
    gateway: Gateway, name: str, count: int = 1, timeout: float = 15
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = events(gateway, name)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{count} x {name} not logged in time:\n{gateway.process.output()}")


async def admin(gateway: Gateway, path: str) -> Any:
    async with plain_client(timeout=5) as client:
        return (await client.get(f"http://127.0.0.1:{gateway.admin_port}{path}")).json()


async def instance_urls(gateway: Gateway, backend: str) -> set[str]:
    document = await admin(gateway, "/admin/backends")
    return {instance["url"] for instance in document["backends"][backend]["instances"]}


async def until(check: Callable[[], Any], timeout: float = 15, interval: float = 0.1) -> Any:
    """Await `check()` (a coroutine function or plain) until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value or time.monotonic() > deadline:
            assert value, "condition not reached in time"
            return value
        await asyncio.sleep(interval)


async def announce(nc: Client, service: str, http_url: str | None) -> RpcService:
    """A running `nats.micro` service instance that says where its HTTP API is."""
    metadata = {"instance": "test-" + uuid.uuid4().hex[:6]}
    if http_url is not None:
        metadata["http"] = http_url
    return await serve(
        nc,
        name=service,
        version="1.0.0",
        description="discovery test instance",
        endpoints={},
        metadata=metadata,
    )


class Traffic:
    """Steady GET traffic from a few concurrent clients; counts answers per instance and failures."""

    def __init__(self, client: httpx.AsyncClient, path: str, concurrency: int = 4) -> None:
        self.client = client
        self.path = path
        self.concurrency = concurrency
        self.by_instance: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Traffic:
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self.concurrency)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    @property
    def total(self) -> int:
        return sum(self.by_instance.values())

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = await self.client.get(self.path)
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
                continue
            if response.status_code != 200:
                self.failures.append(f"{response.status_code} {response.text[:200]}")
                continue
            name = response.json()["instance"]
            self.by_instance[name] = self.by_instance.get(name, 0) + 1
            await asyncio.sleep(0.01)
