"""NATS request-reply endpoints of the reco service (transport only).

`reco.recommendations.get` answers a reader's recommendations to other services (a newsletter,
a notification sender) with the same blend as `GET /v1/recommendations/me`. Typed
(`mosaic_kit.nats.rpc.typed`): the request is validated before the service sees it and both
JSON Schemas are published in the endpoint's `$SRV.INFO` metadata.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from mosaic_kit.nats.rpc import Endpoint, typed
from mosaic_reco.service import MAX_LIMIT, RecoService


class _Camel(BaseModel):
    """camelCase on the wire, like the HTTP bodies and the events."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class RecommendationsQuery(_Camel):
    user_id: uuid.UUID
    limit: int = Field(10, ge=1, le=MAX_LIMIT)


class Recommendation(_Camel):
    blog_id: uuid.UUID
    reason: Literal["tag", "co_engagement", "trending", "similar"]


class Recommendations(_Camel):
    items: list[Recommendation]


def endpoints(svc: RecoService) -> Mapping[str, Endpoint]:
    async def recommendations_get(query: RecommendationsQuery) -> Recommendations:
        picks = await svc.for_user(query.user_id, query.limit)
        return Recommendations(
            items=[Recommendation(blog_id=p.card.blog_id, reason=p.reason) for p in picks]
        )

    return {
        "reco.recommendations.get": typed(
            RecommendationsQuery, Recommendations, recommendations_get
        )
    }
