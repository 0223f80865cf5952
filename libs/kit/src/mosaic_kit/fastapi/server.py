"""The ASGI server `serve` runs: uvicorn, with what the kit adds once it listens."""

from __future__ import annotations

import gc
from typing import Any

import uvicorn

from mosaic_kit.logging import get_logger

__all__ = ["Server"]

_log = get_logger("mosaic_kit.cli")


class Server(uvicorn.Server):
    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            # Modules, the app and its lifespan's objects live as long as the process: moved out
            # of the collector's generations, the periodic full collections no longer walk them
            # (about 14 % more requests/s on `GET /v1/users/me`, see docs/operations.md).
            gc.freeze()
            # With `--port 0` this line is the only place the chosen port shows up.
            ports = [sock.getsockname()[1] for server in self.servers for sock in server.sockets]
            _log.info("http_listening", host=self.config.host, ports=ports)
