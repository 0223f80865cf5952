"""A backend's instances found at run time: from a DNS name, or from NATS service discovery.

A watcher is a runtime component: `start` runs one round before the runtime serves (so a new
runtime starts with its instances, not empty), then a task repeats the round every `interval`,
off the request path. A round's result replaces the backend's instances through
`Backend.update_instances`, which keeps the instances that stay (their ejection, breaker and
health state, their pools) and drains the ones that go.

An empty or failed round never empties a backend: it keeps the last set that was found (and
logs a warning once), since "nothing answered" is more often a resolver or NATS hiccup than
every replica gone at once; if they really are gone, ejection and the breakers deal with it.

- DNS (`dns: {name, port}`): the loop's `getaddrinfo` (a thread, never the loop) resolves A
  and/or AAAA records; each address is an instance `http://address:port`.
- NATS (`nats: {service}`): the `nats.micro` discovery pattern: publish `$SRV.INFO.<service>`
  with a reply inbox and gather every reply for `timeout`. Each reply is one running service
  instance; its `metadata.http` (published by `mosaic_kit.nats.rpc.discovery_metadata`) is where its
  HTTP API answers. An instance that misses `missing_rounds` rounds in a row is taken out.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from urllib.parse import urlsplit

import nats.errors
import orjson
from nats.aio.client import Client

from mosaic_gateway.upstream.balancer import Address, Backend
from mosaic_kit.logging import get_logger

_log = get_logger("mosaic_gateway.upstream.discovery")

_FAMILIES = {"any": socket.AF_UNSPEC, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
# How long the first round may take before the runtime starts without it.
_FIRST_ROUND_LIMIT = 5.0
_STOP_RECHECK = 0.1  # s: how often `stop` asks again while a round ignores its cancellation


def http_address(url: str) -> Address | None:
    """The address in a discovered `http://host:port` URL, or None if it is not usable."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if (
        parts.scheme != "http"
        or not host
        or not port
        or parts.path not in ("", "/")
        or parts.query
        or parts.username
        or host in ("0.0.0.0", "::")  # a bind-everything address names no one to call
    ):
        return None
    return Address(url.rstrip("/"), host, port)


class DiscoveryWatcher:
    """Runs discovery rounds for one backend and applies their results."""

    kind = "static"

    def __init__(self, backend: Backend, interval: float) -> None:
        self.backend = backend
        self.interval = interval
        self.rounds = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stale = False  # the last round kept the previous set (empty or failed)
        self._update_source()

    def describe(self) -> dict[str, object]:
        return {}

    async def discover(self) -> list[Address]:
        raise NotImplementedError

    async def start(self) -> None:
        try:
            async with asyncio.timeout(_FIRST_ROUND_LIMIT + self.interval):
                await self.run_round()
        except TimeoutError:
            self._failed("the first round did not finish in time")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            while not task.done():
                # A cancellation can be lost in a library call that finished at the same moment
                # (asyncio.wait_for on Python 3.11, inside nats-py's next_msg): the loop then
                # carries on, and one cancel would wait for it forever (seen as a reload whose
                # old runtime never retired). Ask again until the task has really ended.
                await asyncio.wait({task}, timeout=_STOP_RECHECK)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.run_round()

    async def run_round(self) -> None:
        try:
            found = await self.discover()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a resolver or NATS error: keep what we have
            self._failed(f"{type(exc).__name__}: {exc}")
        else:
            self.rounds += 1
            self.last_error = None
            self._apply(found)
        self._update_source()

    def _apply(self, found: list[Address]) -> None:
        backend = self.backend
        if not found:
            if not self._stale:
                self._stale = True
                _log.warning(
                    "discovery_empty",
                    backend=backend.name,
                    **self.describe(),
                    kept=[instance.url for instance in backend.instances],
                )
            return
        if self._stale:
            self._stale = False
            _log.info("discovery_recovered", backend=backend.name, **self.describe())
        added, removed = backend.update_instances(found)
        if added or removed:
            _log.info(
                "instances_discovered",
                backend=backend.name,
                added=added,
                removed=removed,
                instances=[instance.url for instance in backend.instances],
            )

    def _failed(self, error: str) -> None:
        self.last_error = error
        if not self._stale:
            self._stale = True
            _log.warning(
                "discovery_failed",
                backend=self.backend.name,
                **self.describe(),
                error=error,
                kept=[instance.url for instance in self.backend.instances],
            )

    def _update_source(self) -> None:
        self.backend.source = {
            "kind": self.kind,
            **self.describe(),
            "interval": self.interval,
            "rounds": self.rounds,
            "stale": self._stale,
            "last_error": self.last_error,
        }


class DnsWatcher(DiscoveryWatcher):
    kind = "dns"

    def __init__(
        self,
        backend: Backend,
        *,
        name: str,
        port: int,
        interval: float,
        family: str = "any",
    ) -> None:
        self.name = name
        self.port = port
        self.family = family
        super().__init__(backend, interval)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "port": self.port, "family": self.family}

    async def discover(self) -> list[Address]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                self.name,
                self.port,
                family=_FAMILIES[self.family],
                type=socket.SOCK_STREAM,
                proto=socket.IPPROTO_TCP,
            )
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
                return []  # the name has no addresses (now): an empty result, not a failure
            raise
        hosts: set[str] = set()
        for family, _, _, _, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6):
                hosts.add(str(sockaddr[0]))
        found = []
        for host in sorted(hosts):
            shown = f"[{host}]" if ":" in host else host
            found.append(Address(f"http://{shown}:{self.port}", host, self.port))
        return found


class NatsWatcher(DiscoveryWatcher):
    kind = "nats"

    def __init__(
        self,
        backend: Backend,
        nc: Client,
        *,
        service: str,
        interval: float,
        timeout: float,
        missing_rounds: int,
    ) -> None:
        self.nc = nc
        self.service = service
        self.subject = f"$SRV.INFO.{service}"
        self.timeout = timeout
        self.missing_rounds = missing_rounds
        # url -> (the round it last answered in, its address, its instance id)
        self._seen: dict[str, tuple[int, Address, str]] = {}
        self._asked = 0
        self._unusable: set[str] = set()  # URLs already warned about
        super().__init__(backend, interval)

    def describe(self) -> dict[str, object]:
        return {
            "service": self.service,
            "ids": {url: seen[2] for url, seen in self._seen.items()},
        }

    async def discover(self) -> list[Address]:
        replies = await self._ask()
        self._asked += 1
        asked = self._asked
        for address, instance_id in replies:
            self._seen[address.url] = (asked, address, instance_id)
        for url, (last, _, _) in list(self._seen.items()):
            if asked - last >= self.missing_rounds:
                del self._seen[url]
        return [address for _, address, _ in self._seen.values()]

    async def _ask(self) -> list[tuple[Address, str]]:
        """Every reply to `$SRV.INFO.<service>` within `timeout`."""
        nc = self.nc
        loop = asyncio.get_running_loop()
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        found: list[tuple[Address, str]] = []
        try:
            await nc.publish(self.subject, b"", reply=inbox)
            deadline = loop.time() + self.timeout
            while (left := deadline - loop.time()) > 0:
                try:
                    msg = await sub.next_msg(timeout=left)
                except nats.errors.TimeoutError:
                    break
                reply = self._read(msg.data)
                if reply is not None:
                    found.append(reply)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return found

    def _read(self, data: bytes) -> tuple[Address, str] | None:
        try:
            info = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(info, dict) or info.get("name") != self.service:
            return None
        metadata = info.get("metadata")
        url = metadata.get("http") if isinstance(metadata, dict) else None
        address = http_address(url) if isinstance(url, str) else None
        if address is None:
            key = repr(url)
            if key not in self._unusable:
                self._unusable.add(key)
                _log.warning(
                    "discovery_unusable_instance",
                    backend=self.backend.name,
                    service=self.service,
                    id=info.get("id"),
                    http=url,
                    reason="metadata.http is not an http://host:port URL",
                )
            return None
        instance_id = metadata.get("instance") if isinstance(metadata, dict) else None
        return address, str(instance_id or info.get("id") or "")
