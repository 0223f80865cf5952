"""The blog service on the kit's chassis: what blog adds to it.

Blog keeps a shared cache of public reads, a read model of authors fed by auth's user events, and
verifies tokens from the keys auth publishes on NATS (no call to auth per request).
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI

from mosaic_blog import __version__, api
from mosaic_blog.service import BlogService
from mosaic_blog.settings import BlogSettings
from mosaic_kit.chassis.assembly import Assembly, ServiceDefinition
from mosaic_kit.chassis.cache import cache_from_settings
from mosaic_kit.contracts import blog as blog_contracts
from mosaic_kit.contracts.auth import UserCreated, UserUpdated
from mosaic_kit.nats.keys import NatsKeySource
from mosaic_kit.sql import idempotency


async def assemble(kit: Assembly[BlogSettings]) -> None:
    settings = kit.settings
    cache = await cache_from_settings(
        settings,
        kit.nats,
        namespace=settings.blog_cache_namespace,
        bucket=settings.blog_cache_bucket,
        max_ttl=settings.blog_cache_ttl,
    )
    kit.on_stop(cache.close)
    svc = BlogService(
        kit.db,
        cache,
        kit.nats,
        cache_ttl=settings.blog_cache_ttl,
        auth_timeout=settings.blog_auth_timeout,
    )
    # Closed before the cache and NATS: pending bumps get a last, bounded chance.
    kit.on_stop(svc.invalidator.close)
    kit.provide(api.SERVICE, svc)
    kit.verify_tokens(
        NatsKeySource(kit.nats, timeout=settings.nats_request_timeout),
        issuer=settings.blog_jwt_issuer,
        audience=settings.blog_jwt_audience,
        revocation_window=timedelta(seconds=settings.blog_revocation_window),
    )
    kit.consume(
        stream="auth",
        durable=settings.blog_authors_consumer,
        events=[UserCreated, UserUpdated],
        handler=svc.apply_user_event,
        after_commit=svc.after_user_event,
    )
    kit.every("blog.prune", 600.0, lambda: idempotency.prune(kit.db))


BLOG = ServiceDefinition(
    name="blog",
    package="mosaic_blog",
    settings=BlogSettings,
    title="Mosaic blog",
    description="Blogs, their editorial workflow and the public reading API.",
    rpc_description="Mosaic blog: blogs and their public reads",
    version=__version__,
    routers=[api.router],
    assemble=assemble,
    publishes=blog_contracts.BLOG_EVENTS,
)


def create_blog_app(settings: BlogSettings) -> FastAPI:
    return BLOG.app(settings)
