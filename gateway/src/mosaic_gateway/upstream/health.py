"""Active health checks: `GET <path>` on every instance of a backend, every `interval`.

Each round checks the instances the backend has then, so discovered instances are checked
from the round after they appear (until then they count as healthy).

A check uses its own short-lived connection (not the request pool), so it tests what a new
connection would meet and never competes with traffic for pooled connections. Any 2xx is healthy;
anything else, a timeout or a connection error is not.
"""

from __future__ import annotations

import asyncio
import contextlib

from mosaic_gateway.upstream.balancer import Backend, Instance
from mosaic_kit.logging import get_logger

_log = get_logger("mosaic_gateway.upstream.health")


async def probe(host: str, port: int, path: str, limit: float) -> bool:
    """True if `GET path` answers 2xx within `limit` seconds."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(limit):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nhost: {host}:{port}\r\n"
                "user-agent: mosaic-gateway-health\r\nconnection: close\r\n\r\n".encode("latin-1")
            )
            status_line = await reader.readline()
        parts = status_line.split(None, 2)
        return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1][:1] == b"2"
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(limit):
                    await writer.wait_closed()


class HealthChecker:
    def __init__(
        self,
        backend: Backend,
        *,
        path: str,
        interval: float,
        timeout: float,
        healthy_after: int,
        unhealthy_after: int,
    ) -> None:
        self.backend = backend
        self.path = path
        self.interval = interval
        self.timeout = timeout
        self.healthy_after = healthy_after
        self.unhealthy_after = unhealthy_after
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.gather(*(self._check(i) for i in self.backend.instances))
            except Exception:
                _log.exception("health_check_error", backend=self.backend.name)
            await asyncio.sleep(self.interval)

    async def _check(self, instance: Instance) -> None:
        ok = await probe(instance.host, instance.port, self.path, self.timeout)
        if instance not in self.backend.instances:
            return  # removed by discovery meanwhile: its state no longer matters
        self.backend.check_result(
            instance, ok, healthy_after=self.healthy_after, unhealthy_after=self.unhealthy_after
        )
