"""The process's NATS connection: bounded retries on start, then reconnection forever.

A service that starts before NATS (compose, Kubernetes, `mosaic up`) should wait a little rather
than crash, but not hang forever on a wrong URL: the first connection is retried with exponential
backoff and jitter for at most `max_wait` seconds. Once connected, the client reconnects for as
long as the process lives; subscriptions are restored by the client and publishes made meanwhile
are buffered. Server URLs are logged without their credentials.

On a server with authorization each process connects as its service's user (`NatsCredentials`:
user and password, a .creds file, or an NKey seed) and makes its reply subjects under its own
inbox prefix, the only inboxes its permissions let it subscribe to. A refused login is not
retried: wrong credentials do not get better by waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import nats.errors
from nats.aio.client import Client

from mosaic_kit.logging import describe_error, get_logger
from mosaic_kit.nats import outages
from mosaic_kit.problem import treat_as_unreachable

if TYPE_CHECKING:
    from mosaic_kit.settings import ServiceSettings

__all__ = ["Client", "NatsCredentials", "connect", "readiness_check", "redact_url"]

# Any process that talks to NATS answers its outages as 503s, not as bugs.
treat_as_unreachable(outages.nats_unreachable)

_log = get_logger("mosaic_kit.nats")

# Backoff of the first connection: 0.1 s, 0.2 s, ... capped, each scaled by a random factor so
# that replicas restarted together do not hit the server in lockstep.
_FIRST_DELAY = 0.1
_MAX_DELAY = 5.0


def redact_url(url: str) -> str:
    """`url` (one server or a comma-separated list) with user names and passwords removed."""
    safe = []
    for part in url.split(","):
        server = part.strip()
        if not server:
            continue
        parsed = urlsplit(server if "://" in server else f"nats://{server}")
        host = parsed.hostname or ""
        port = f":{parsed.port}" if parsed.port else ""
        safe.append(f"{parsed.scheme}://{host}{port}")
    return ",".join(safe)


@dataclass(frozen=True)
class NatsCredentials:
    """Who a process is on NATS. All unset (the default) connects anonymously."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    """A .creds file: the user's JWT and NKey seed (a server run with accounts)."""
    nkey_seed_file: str | None = None
    inbox_prefix: str = "_INBOX"

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> NatsCredentials:
        password = settings.nats_password
        return cls(
            user=settings.nats_user,
            password=password.get_secret_value() if password is not None else None,
            creds_file=settings.nats_creds_file,
            nkey_seed_file=settings.nats_nkey_seed_file,
            inbox_prefix=settings.nats_inbox_prefix,
        )

    def options(self) -> dict[str, Any]:
        """The `nats.connect` keyword arguments for these credentials."""
        if self.password is not None and self.user is None:
            raise ValueError("a NATS password needs a NATS user")
        options: dict[str, Any] = {"inbox_prefix": self.inbox_prefix}
        if self.user is not None:
            options["user"] = self.user
            options["password"] = self.password or ""
        if self.creds_file is not None:
            options["user_credentials"] = self.creds_file
        if self.nkey_seed_file is not None:
            options["nkeys_seed"] = self.nkey_seed_file
        return options


def _login_refused(exc: BaseException) -> bool:
    # The client reports a refused CONNECT as a bare Error carrying the server's -ERR text.
    return isinstance(exc, nats.errors.AuthorizationError) or (
        isinstance(exc, nats.errors.Error) and "authorization violation" in str(exc).lower()
    )


def _servers(url: str) -> list[str]:
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError("no NATS server URL given")
    return servers


async def connect(
    url: str,
    name: str,
    *,
    connect_timeout: float = 2.0,
    max_wait: float = 30.0,
    reconnect_wait: float = 2.0,
    credentials: NatsCredentials | None = None,
) -> Client:
    """Connect to the NATS server(s) in `url` as client `name`, as `credentials` say.

    Raises the last connection error when no server answered within `max_wait` seconds.
    `reconnect_wait` is the pause between reconnection attempts after a connection was lost.
    """
    servers = _servers(url)
    auth = (credentials or NatsCredentials()).options()
    where = redact_url(url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait
    delay = _FIRST_DELAY
    attempt = 0
    while True:
        attempt += 1
        client = Client()
        causes: list[BaseException] = []
        try:
            await _connect_once(
                client,
                servers=servers,
                name=name,
                connect_timeout=connect_timeout,
                where=where,
                causes=causes,
                auth=auth,
            )
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await client.close()
            # The client reports "no servers available"; the reason is the error before it.
            cause = causes[-1] if causes else exc
            error = describe_error(cause)
            if _login_refused(cause):
                _log.error("nats_login_refused", server=where, client=name, error=error)
                raise cause from None
            remaining = deadline - loop.time()
            if remaining <= 0:
                _log.error("nats_connect_failed", server=where, attempts=attempt, error=error)
                raise
            pause = min(delay * random.uniform(0.5, 1.5), remaining)
            _log.warning(
                "nats_connect_retry",
                server=where,
                attempt=attempt,
                error=error,
                retry_in=round(pause, 2),
            )
            await asyncio.sleep(pause)
            delay = min(delay * 2, _MAX_DELAY)
            continue
        # The client's own loop retries a server at a fixed pace and, with unlimited attempts,
        # never gives up on the first connection; we bounded that ourselves above, so only now
        # switch it to reconnect forever.
        client.options["max_reconnect_attempts"] = -1
        client.options["reconnect_time_wait"] = reconnect_wait
        _log.info("nats_connected", server=where, client=name, attempts=attempt)
        return client


async def _connect_once(
    client: Client,
    *,
    servers: list[str],
    name: str,
    connect_timeout: float,
    where: str,
    causes: list[BaseException],
    auth: dict[str, Any],
) -> None:
    connected = False

    async def on_error(exc: Exception) -> None:
        if client.is_reconnecting:
            # Each failed attempt during an outage; the disconnection itself was logged.
            _log.debug("nats_reconnect_failed", server=where, error=describe_error(exc))
        elif connected:
            _log.warning("nats_error", server=where, error=describe_error(exc))
        else:
            # Failures of the first connection are reported once, by the retry loop.
            causes.append(exc)

    async def on_disconnected() -> None:
        _log.warning("nats_disconnected", server=where)

    async def on_reconnected() -> None:
        _log.info("nats_reconnected", server=_current(client))

    async def on_closed() -> None:
        _log.info("nats_closed", server=where)

    # Typed as int in the client although fractions of seconds work; passed untyped.
    options: dict[str, Any] = {
        "name": name,
        "connect_timeout": connect_timeout,
        "allow_reconnect": True,
        # One retry per server inside the client; our loop does the backing off.
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
        "closed_cb": on_closed,
        **auth,
    }
    await client.connect(servers, **options)
    connected = True


def _current(client: Client) -> str:
    current = client.connected_url
    if current is None:
        return ""
    port = f":{current.port}" if current.port else ""
    return f"{current.scheme}://{current.hostname or ''}{port}"


def readiness_check(client: Client) -> Callable[[], Awaitable[None]]:
    """A `/readyz` check that fails while `client` is not connected."""

    async def check() -> None:
        if not client.is_connected:
            raise ConnectionError("NATS is not connected")

    return check
