"""One service assembly: a service declares what it has, the kit builds, runs and drains it.

A service is a `ServiceDefinition`: its name, package (migrations, build stamp), settings class,
routes, and an `assemble(kit)` coroutine that builds its domain objects from the connections the
kit opened and declares on `kit` what runs beside the routes: the parts its routes depend on,
token verification, event consumers, NATS endpoints, periodic jobs, readiness checks and what to
close. `assemble` starts nothing itself; the kit starts everything in one order and stops it in
the reverse one:

    start: database -> NATS (with backoff) -> its event stream -> assemble -> token keys and the
           revocation feed -> consumers -> outbox relay -> periodic jobs -> NATS micro service
    stop:  NATS micro service (the gateway stops discovering the instance) -> periodic jobs ->
           outbox relay -> consumers -> revocation feed and keys -> what assemble registered with
           `on_stop` (last registered, first closed) -> NATS drain -> database

HTTP has drained before the stop begins (uvicorn finishes in-flight requests first), so nothing
a request uses closes under it; the micro service registers last so that an instance is
discovered only once everything else runs. If any step of the start fails, what already started
is stopped in the same reverse order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

from fastapi import APIRouter, FastAPI
from nats.aio.client import Client
from nats.js import JetStreamContext

from mosaic_kit import asyncapi, events
from mosaic_kit import events as _events
from mosaic_kit.fastapi.app import create_app
from mosaic_kit.fastapi.auth import TOKEN_VERIFIER
from mosaic_kit.fastapi.health import ASYNCAPI, ReadinessCheck
from mosaic_kit.fastapi.parts import DATABASE, Part
from mosaic_kit.jwks import JwksCache, KeySource
from mosaic_kit.logging import describe_error, get_logger
from mosaic_kit.nats import jetstream, rpc
from mosaic_kit.nats.connection import NatsCredentials, connect, readiness_check
from mosaic_kit.nats.consumer import DurableConsumer, EventHandler
from mosaic_kit.nats.relay import OutboxRelay
from mosaic_kit.nats.revocation import follow_revocations
from mosaic_kit.periodic import Periodic
from mosaic_kit.revocation import RevocationSet
from mosaic_kit.settings import ServiceSettings
from mosaic_kit.sql.db import Database
from mosaic_kit.tokens import TokenVerifier

__all__ = ["NATS", "Assembly", "ServiceDefinition"]

S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")

NATS: Part[Client] = Part("the service's NATS connection")

_log = get_logger("mosaic_kit.chassis")


@dataclass(frozen=True)
class _TokenCheck:
    keys: KeySource
    issuer: str
    audience: str
    revocation_window: timedelta


@dataclass(frozen=True)
class _Consumer:
    stream: str
    durable: str
    subjects: tuple[str, ...]
    handler: EventHandler
    after_commit: Callable[[events.Event], Awaitable[None]] | None
    models: tuple[type[events.EventPayload], ...]


class Assembly(Generic[S]):
    """What `assemble` gets: the open connections, and where it declares the rest.

    `db`, `nats` and `js` are connected when `assemble` runs. `revocations` is the set that the
    revocation feed fills once `verify_tokens` was called (a service may also read it, as auth
    does to refuse revoked refresh tokens).
    """

    def __init__(
        self,
        app: FastAPI,
        settings: S,
        db: Database,
        nats: Client,
        stack: AsyncExitStack,
    ) -> None:
        self.app = app
        self.settings = settings
        self.db = db
        self.nats = nats
        self.js: JetStreamContext = nats.jetstream()
        self.revocations = RevocationSet()
        self._stack = stack
        self.tokens: _TokenCheck | None = None
        self.consumers: list[_Consumer] = []
        self.endpoints: dict[str, rpc.Handler | rpc.Endpoint] = {}
        self.jobs: list[Periodic] = []
        self.readiness: dict[str, ReadinessCheck] = {}

    def provide(self, part: Part[T], value: T) -> None:
        """Hand `value` to the routes that depend on `part`."""
        part.provide(self.app, value)

    def on_stop(self, close: Callable[[], Awaitable[object]]) -> None:
        """Run `close()` at shutdown, after everything the kit runs has stopped and before the
        NATS connection drains (the last one registered runs first)."""
        self._stack.push_async_callback(close)

    def verify_tokens(
        self, keys: KeySource, *, issuer: str, audience: str, revocation_window: timedelta
    ) -> None:
        """Accept bearer tokens signed by `keys` for `issuer`/`audience`, rejecting revoked ones.

        `revocation_window` is how far back revocations are replayed at start: at least the
        access-token lifetime, so a restarted replica still rejects what was revoked before.
        """
        self.tokens = _TokenCheck(keys, issuer, audience, revocation_window)

    def consume(
        self,
        *,
        stream: str,
        durable: str,
        handler: EventHandler,
        events: Sequence[type[events.EventPayload]] = (),
        subjects: Sequence[str] = (),
        after_commit: Callable[[events.Event], Awaitable[None]] | None = None,
    ) -> None:
        """Apply the events of service `stream` once each, durably
        (`mosaic_kit.nats.consumer.DurableConsumer`): those of the payload models `events`
        (their subjects, and listed in the AsyncAPI document), plus any other `subjects`."""
        wanted = [*(_events.event_subject(model.TYPE) for model in events), *subjects]
        if not wanted:
            raise ValueError(f"consumer {durable!r} names no events and no subjects")
        self.consumers.append(
            _Consumer(stream, durable, tuple(wanted), handler, after_commit, tuple(events))
        )

    def serve(self, endpoints: Mapping[str, rpc.Handler | rpc.Endpoint]) -> None:
        """Answer these NATS request-reply subjects in the service's micro service."""
        overlap = self.endpoints.keys() & endpoints.keys()
        if overlap:
            raise ValueError(f"NATS endpoints declared twice: {sorted(overlap)}")
        self.endpoints.update(endpoints)

    def every(self, name: str, seconds: float, job: Callable[[], Awaitable[object]]) -> None:
        """Run `job` every `seconds` in each replica (it must be safe to run concurrently)."""
        self.jobs.append(Periodic(name, seconds, job))

    def ready_when(self, name: str, check: ReadinessCheck) -> None:
        """Add a `/readyz` check besides the database and NATS ones."""
        if name in self.readiness or name in ("db", "nats"):
            raise ValueError(f"readiness check {name!r} declared twice")
        self.readiness[name] = check


@dataclass(frozen=True)
class ServiceDefinition(Generic[S]):
    """A Mosaic service as the kit sees it.

    `name` names its NATS micro service, its event stream (`events.<name>.>`, relayed from its
    outbox when `publishes_events`) and its command (`mosaic-<name>`); `package` holds its
    `migrations/` and its build stamp.
    """

    name: str
    package: str
    settings: type[S]
    title: str
    description: str
    version: str
    routers: Sequence[APIRouter]
    assemble: Callable[[Assembly[S]], Awaitable[None]]
    publishes_events: bool = True
    publishes: Sequence[type[events.EventPayload]] = ()
    """The payload models of the events it publishes (for its AsyncAPI document)."""
    rpc_description: str = field(default="")

    def app(self, settings: S) -> FastAPI:
        """The service's ASGI app; nothing connects until its lifespan starts."""

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            async with AsyncExitStack() as stack:
                await self._start(app, settings, stack)
                yield

        return create_app(
            settings,
            title=self.title,
            description=self.description,
            version=self.version,
            routers=self.routers,
            lifespan=lifespan,
        )

    async def _start(self, app: FastAPI, settings: S, stack: AsyncExitStack) -> None:
        db = Database.from_settings(settings)
        stack.push_async_callback(db.dispose)
        nc = await connect(
            settings.nats_url,
            name=f"{self.name}/{settings.instance_id}",
            credentials=NatsCredentials.from_settings(settings),
        )
        stack.push_async_callback(nc.drain)
        DATABASE.provide(app, db)
        NATS.provide(app, nc)
        kit = Assembly(app, settings, db, nc, stack)
        if self.publishes_events:
            await jetstream.ensure_stream(kit.js, self.name, replicas=settings.nats_stream_replicas)

        await self.assemble(kit)

        if kit.tokens is not None:
            await _verify_tokens(kit, kit.tokens, stack)
        for spec in kit.consumers:
            consumer = DurableConsumer(
                kit.js,
                db,
                stream=events.stream_name(spec.stream),
                durable=spec.durable,
                filter_subjects=spec.subjects,
                handler=spec.handler,
                after_commit=spec.after_commit,
            )
            await consumer.start()
            stack.push_async_callback(consumer.stop)
        if self.publishes_events:
            relay = OutboxRelay(db, kit.js, service=self.name)
            await relay.start()
            stack.push_async_callback(relay.stop)
        for job in kit.jobs:
            job.start()
            stack.push_async_callback(job.stop)
        micro = await rpc.serve(
            nc,
            name=self.name,
            version=self.version,
            description=self.rpc_description or self.description,
            endpoints=kit.endpoints,
            metadata=rpc.discovery_metadata(settings),
        )
        stack.push_async_callback(micro.stop)
        app.state.readiness = {"db": db.ping, "nats": readiness_check(nc), **kit.readiness}
        ASYNCAPI.provide(app, self._asyncapi(kit))

    def _asyncapi(self, kit: Assembly[S]) -> dict[str, Any]:
        typed = {
            subject: (endpoint.request_model, endpoint.response_model)
            if isinstance(endpoint, rpc.Endpoint)
            else None
            for subject, endpoint in kit.endpoints.items()
        }
        consumed: list[type[events.EventPayload] | str] = []
        for consumer in kit.consumers:
            consumed += consumer.models
            modelled = {_events.event_subject(m.TYPE) for m in consumer.models}
            consumed += [s for s in consumer.subjects if s not in modelled]
        return asyncapi.document(
            title=self.title,
            version=self.version,
            description=self.rpc_description or self.description,
            publishes=self.publishes,
            consumes=consumed,
            endpoints=typed,
        )


async def _verify_tokens(kit: Assembly[Any], check: _TokenCheck, stack: AsyncExitStack) -> None:
    jwks = JwksCache(check.keys)
    stack.push_async_callback(jwks.aclose)
    try:
        await jwks.refresh()
    except Exception as exc:  # the issuer may start later: keys are fetched on first use
        _log.warning("jwks_not_loaded_at_start", error=describe_error(exc))
    TOKEN_VERIFIER.provide(
        kit.app,
        TokenVerifier(
            jwks, revocations=kit.revocations, issuer=check.issuer, audience=check.audience
        ),
    )
    feed = await follow_revocations(kit.js, kit.revocations, since=check.revocation_window)
    stack.push_async_callback(feed.stop)
