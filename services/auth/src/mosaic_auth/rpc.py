"""NATS request-reply endpoints of the auth service (transport only).

Each endpoint takes and answers a pydantic model (`mosaic_kit.nats.rpc.typed`), so a request is
validated before the service sees it (422 `validation_failed`) and both JSON Schemas are published
in the endpoint's `$SRV.INFO` metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from mosaic_auth.service import AuthService
from mosaic_kit.contracts.auth import USERS_GET, Users, UsersQuery
from mosaic_kit.nats.rpc import Endpoint, typed


class KeyQuery(BaseModel):
    """`auth.apikeys.verify`: the key a client sent (`x-api-key`)."""

    # No upper bound here: an over-long key is an invalid key (403), as the service decides.
    key: str = Field(min_length=1)


class VerifiedKey(BaseModel):
    id: str
    name: str


class NoArguments(BaseModel):
    pass


class Jwks(BaseModel):
    keys: list[dict[str, Any]]


def endpoints(svc: AuthService) -> Mapping[str, Endpoint]:
    async def users_get(query: UsersQuery) -> Users:
        users = await svc.public_profiles(query.ids)
        return Users.model_validate({"users": [u.public_view() for u in users]})

    async def apikeys_verify(query: KeyQuery) -> VerifiedKey:
        record = await svc.verify_api_key(query.key)
        return VerifiedKey(id=str(record.id), name=record.name)

    async def jwks_get(_query: NoArguments) -> Jwks:
        return Jwks.model_validate(await svc.jwks())

    return {
        USERS_GET: typed(UsersQuery, Users, users_get),
        "auth.apikeys.verify": typed(KeyQuery, VerifiedKey, apikeys_verify),
        "auth.jwks.get": typed(NoArguments, Jwks, jwks_get),
    }
