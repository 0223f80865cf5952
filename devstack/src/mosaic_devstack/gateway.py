"""The gateway process `mosaic up` puts in front of the services: `mosaic-gateway serve`.

Supervised like a service instance (same log handling, restarts and stop), but started from the
configuration file the devstack writes (gateway_config.py, from the services' OpenAPI), and
ready only when it can really route: its admin `/readyz` answers, every worker sees an available instance of every backend, and
a request through it reaches the auth service.

Its ports are bound here, by `hold_port`, when `mosaic up` picks them, and the gateway is handed
the listening sockets (`serve --listen-fd/--admin-fd`): so nobody can take the port between the
check and the gateway's start, or while a crashed gateway is being restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Mapping
from pathlib import Path

import httpx

from mosaic_devstack.instance import HOST, Instance
from mosaic_devstack.services import Service
from mosaic_devstack.state import GatewayInfo
from mosaic_devstack.streams import LineSink
from mosaic_gateway.http.listener import bind_socket

NAME = "gateway"
GATEWAY = Service(NAME, ("mosaic-gateway",), migrate=False, seed=False, replicas=1)
# Public, needs no API key, answered by auth: a request that proves the whole path works.
ROUTED_PROBE = "/v1/auth/jwks.json"
# Each probe asks for a new connection, so that they spread over the workers (they share the
# listening socket) and every worker's view is seen.
_FRESH = {"connection": "close"}


def hold_port(port: int) -> socket.socket:
    """A listening socket on HOST:`port` (0: a free port) that no one else can bind while it is
    open (no SO_REUSEPORT); OSError when the port is taken."""
    return bind_socket(HOST, port)


class GatewayInstance(Instance):
    def __init__(
        self,
        *,
        listener: socket.socket,
        admin_listener: socket.socket,
        workers: int,
        config_file: Path,
        env: Mapping[str, str],
        sink: LineSink,
    ) -> None:
        """`listener` and `admin_listener` come from `hold_port`; they stay the caller's."""
        port = listener.getsockname()[1]
        admin_port = admin_listener.getsockname()[1]
        super().__init__(GATEWAY, NAME, port, env, sink)
        self.listen_fds = (listener.fileno(), admin_listener.fileno())
        self.pass_fds = self.listen_fds
        self.workers = workers
        self.config_file = config_file
        self.admin_url = f"http://{HOST}:{admin_port}"
        self.info = self.gateway_info = GatewayInfo(
            service=NAME,
            instance=NAME,
            url=self.url,
            port=port,
            ready_path=GATEWAY.ready_path,
            admin_url=self.admin_url,
            config_file=str(config_file),
            workers=workers,
        )
        self._routing_workers: set[int] = set()

    @staticmethod
    def check_installed() -> None:
        """RegistryError (naming the program) when `mosaic-gateway` cannot be found."""
        GATEWAY.argv()

    def serve_argv(self) -> list[str]:
        listen_fd, admin_fd = self.listen_fds
        return self.service.argv(
            "serve",
            "--config",
            str(self.config_file),
            "--workers",
            str(self.workers),
            "--listen-fd",
            str(listen_fd),
            "--admin-fd",
            str(admin_fd),
        )

    async def spawn(self) -> None:
        self._routing_workers.clear()
        await super().spawn()

    async def probe(self, client: httpx.AsyncClient) -> str | None:
        url = f"{self.admin_url}/readyz"
        try:
            answer = await client.get(url, headers=_FRESH, timeout=1.0)
            if answer.status_code != 200:
                return f"GET {url}: last answer {answer.status_code}"
            url = f"{self.admin_url}/admin/backends"
            # A few tries per call: whichever worker accepts first answers, not one we pick.
            for _ in range(2 * self.workers):
                if len(self._routing_workers) >= self.workers:
                    break
                view = (await client.get(url, headers=_FRESH, timeout=1.0)).json()
                empty = [name for name, b in view["backends"].items() if not b.get("available")]
                if empty:
                    return f"GET {url}: no available instance of {', '.join(sorted(empty))}"
                self._routing_workers.add(int(view["worker"]))
            if len(self._routing_workers) < self.workers:
                return f"GET {url}: heard from {len(self._routing_workers)} worker(s) so far"
            url = f"{self.url}{ROUTED_PROBE}"
            answer = await client.get(url, headers=_FRESH, timeout=2.0)
        except httpx.HTTPError as exc:
            return f"GET {url}: last attempt: {type(exc).__name__}"
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return f"GET {url}: unexpected answer ({exc!r})"
        if answer.status_code != 200:
            return f"GET {url}: last answer {answer.status_code}"
        return None

    async def wait_exit(self) -> int:
        assert self.process is not None
        # Workers whose supervisor was killed outright live on, holding the output pipe (so
        # `process.wait()` would not return) and still listening on the port (they share it).
        # So watch the supervisor itself, and end what it leaves before a new gateway starts.
        while self.process.returncode is None:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return await super().wait_exit()
