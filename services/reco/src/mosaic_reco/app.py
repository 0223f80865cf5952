"""The reco service on the kit's chassis: what it adds to it.

Its read model is fed only by events: the blog's (blogs, readers' signals) and auth's (author
names), each through a durable consumer that applies an event once. It publishes none. Tokens
are verified from the keys auth publishes on NATS, fetched at start and then followed: no call
to another service while answering.
"""

from __future__ import annotations

from datetime import timedelta

from mosaic_kit.chassis.assembly import Assembly, ServiceDefinition
from mosaic_kit.nats.keys import NatsKeySource
from mosaic_reco import __version__, api
from mosaic_reco.rpc import endpoints
from mosaic_reco.service import BLOG_EVENTS, USER_EVENTS, RecoService
from mosaic_reco.settings import RecoSettings


async def assemble(kit: Assembly[RecoSettings]) -> None:
    settings = kit.settings
    svc = RecoService(kit.db, trending_half_life_hours=settings.reco_trending_half_life)
    kit.provide(api.SERVICE, svc)
    kit.verify_tokens(
        NatsKeySource(kit.nats, settings.reco_jwks_subject, timeout=settings.nats_request_timeout),
        issuer=settings.reco_jwt_issuer,
        audience=settings.reco_jwt_audience,
        revocation_window=timedelta(seconds=settings.reco_revocation_window),
    )
    kit.consume(
        stream="blog",
        durable=settings.reco_blog_consumer,
        events=BLOG_EVENTS,
        handler=svc.apply_blog_event,
    )
    kit.consume(
        stream="auth",
        durable=settings.reco_authors_consumer,
        events=USER_EVENTS,
        handler=svc.apply_user_event,
    )
    kit.serve(endpoints(svc))


RECO = ServiceDefinition(
    name="reco",
    package="mosaic_reco",
    settings=RecoSettings,
    title="Mosaic reco",
    description="Recommendations for readers of the Mosaic platform, from events only.",
    version=__version__,
    routers=[api.router],
    assemble=assemble,
    publishes_events=False,
    rpc_description="Mosaic reco: a reader's recommendations",
)
