"""Assembles the blog service: database, NATS, cache, author read model, outbox, HTTP routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from mosaic_blog import __version__
from mosaic_blog.api import router
from mosaic_blog.service import BlogService
from mosaic_blog.settings import BlogSettings
from mosaic_kit import events
from mosaic_kit.chassis.cache import cache_from_settings
from mosaic_kit.fastapi.app import create_app
from mosaic_kit.jwks import JwksCache
from mosaic_kit.logging import get_logger
from mosaic_kit.nats import jetstream, rpc
from mosaic_kit.nats.connection import connect, readiness_check
from mosaic_kit.nats.consumer import DurableConsumer
from mosaic_kit.nats.keys import NatsKeySource
from mosaic_kit.nats.relay import OutboxRelay
from mosaic_kit.nats.revocation import follow_revocations
from mosaic_kit.periodic import Periodic
from mosaic_kit.revocation import RevocationSet
from mosaic_kit.sql import idempotency
from mosaic_kit.sql.db import Database
from mosaic_kit.tokens import TokenVerifier

log = get_logger("mosaic_blog.app")

USER_EVENTS = ["events.auth.user.created", "events.auth.user.updated"]


def create_blog_app(settings: BlogSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            db = Database.from_settings(settings)
            stack.push_async_callback(db.dispose)
            nc = await connect(settings.nats_url, name=f"blog/{settings.instance_id}")
            stack.push_async_callback(nc.drain)
            js = nc.jetstream()
            await jetstream.ensure_stream(js, "blog")

            cache = await cache_from_settings(
                settings,
                nc,
                namespace=settings.blog_cache_namespace,
                bucket=settings.blog_cache_bucket,
                max_ttl=settings.blog_cache_ttl,
            )
            stack.push_async_callback(cache.close)
            svc = BlogService(
                db,
                cache,
                nc,
                cache_ttl=settings.blog_cache_ttl,
                auth_timeout=settings.blog_auth_timeout,
            )
            # Closed before the cache and NATS: pending bumps get a last, bounded chance.
            stack.push_async_callback(svc.invalidator.close)
            app.state.blog_service = svc
            app.state.db = db

            # Tokens are verified here, from auth's published keys: no call to auth per request.
            jwks = JwksCache(NatsKeySource(nc, timeout=settings.nats_request_timeout))
            stack.push_async_callback(jwks.aclose)
            try:
                await jwks.refresh()
            except Exception as exc:  # auth may start later; keys are fetched on first use
                log.warning("jwks_not_loaded_at_start", error=type(exc).__name__)
            revocations = RevocationSet()
            app.state.token_verifier = TokenVerifier(
                jwks,
                revocations=revocations,
                issuer=settings.blog_jwt_issuer,
                audience=settings.blog_jwt_audience,
            )
            feed = await follow_revocations(
                js, revocations, since=timedelta(seconds=settings.blog_revocation_window)
            )
            stack.push_async_callback(feed.stop)

            authors = DurableConsumer(
                js,
                db,
                stream=events.stream_name("auth"),
                durable=settings.blog_authors_consumer,
                filter_subjects=USER_EVENTS,
                handler=svc.apply_user_event,
                after_commit=svc.after_user_event,
            )
            await authors.start()
            stack.push_async_callback(authors.stop)
            relay = OutboxRelay(db, js, service="blog")
            await relay.start()
            stack.push_async_callback(relay.stop)
            housekeeping = Periodic("blog.prune", 600.0, lambda: idempotency.prune(db))
            housekeeping.start()
            stack.push_async_callback(housekeeping.stop)

            # No request-reply endpoints (yet): the service registers for discovery only.
            micro = await rpc.serve(
                nc,
                name="blog",
                version=__version__,
                description="Mosaic blog: blogs and their public reads",
                endpoints={},
                metadata=rpc.discovery_metadata(settings),
            )
            stack.push_async_callback(micro.stop)

            app.state.readiness = {"db": db.ping, "nats": readiness_check(nc)}
            yield

    return create_app(
        settings,
        title="Mosaic blog",
        description="Blogs, their editorial workflow and the public reading API.",
        version=__version__,
        routers=[router],
        lifespan=lifespan,
    )
