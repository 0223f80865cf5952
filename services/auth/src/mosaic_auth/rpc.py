"""NATS request-reply endpoints of the auth service (transport only)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from mosaic_auth.service import AuthService
from mosaic_kit.nats.rpc import Handler
from mosaic_kit.problem import Problem

MAX_IDS = 100


def _bad(field: str, message: str) -> Problem:
    return Problem(422, "validation_failed", message, errors=[{"field": field, "message": message}])


def endpoints(svc: AuthService) -> Mapping[str, Handler]:
    async def users_get(request: dict[str, Any]) -> dict[str, Any]:
        raw = request.get("ids")
        if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
            raise _bad("ids", "ids must be a list of user ids")
        if len(raw) > MAX_IDS:
            raise _bad("ids", f"at most {MAX_IDS} ids per request")
        ids: list[uuid.UUID] = []
        for value in raw:
            try:
                ids.append(uuid.UUID(value))
            except ValueError as exc:
                raise _bad("ids", f"not a user id: {value[:64]}") from exc
        users = await svc.public_profiles(ids)
        return {"users": [u.public_view() for u in users]}

    async def apikeys_verify(request: dict[str, Any]) -> dict[str, Any]:
        key = request.get("key")
        if not isinstance(key, str) or not key:
            raise _bad("key", "key is required")
        record = await svc.verify_api_key(key)
        return {"id": str(record.id), "name": record.name}

    async def jwks_get(_request: dict[str, Any]) -> dict[str, Any]:
        return await svc.jwks()

    return {
        "auth.users.get": users_get,
        "auth.apikeys.verify": apikeys_verify,
        "auth.jwks.get": jwks_get,
    }
