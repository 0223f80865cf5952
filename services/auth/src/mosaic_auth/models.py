"""What the auth service's layers hand each other (no framework types)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str
    name: str
    profile_pic_url: str | None
    roles: frozenset[str]
    created_at: datetime
    disabled_at: datetime | None
    tokens_valid_after: int
    password_hash: str

    def private_view(self) -> dict[str, object]:
        return {
            "id": str(self.id),
            "email": self.email,
            "name": self.name,
            "profilePicUrl": self.profile_pic_url,
            "roles": sorted(self.roles),
            "createdAt": self.created_at.isoformat(),
        }

    def admin_view(self) -> dict[str, object]:
        return {
            **self.private_view(),
            "disabled": self.disabled_at is not None,
        }

    def public_view(self) -> dict[str, object]:
        return {"id": str(self.id), "name": self.name, "profilePicUrl": self.profile_pic_url}


@dataclass(frozen=True)
class Session:
    id: uuid.UUID
    user_id: uuid.UUID
    expires_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    name: str
    comment: str | None
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None

    def view(self) -> dict[str, object]:
        return {
            "id": str(self.id),
            "name": self.name,
            "comment": self.comment,
            "prefix": self.key_prefix,
            "createdAt": self.created_at.isoformat(),
            "revoked": self.revoked_at is not None,
        }


@dataclass(frozen=True)
class Throttle:
    failures: int
    window_started_at: datetime
    locked_until: datetime | None


@dataclass(frozen=True)
class ClientSecret:
    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime | None

    def view(self) -> dict[str, object]:
        return {
            "id": str(self.id),
            "createdAt": self.created_at.isoformat(),
            "lastUsedAt": self.last_used_at.isoformat() if self.last_used_at else None,
        }


@dataclass(frozen=True)
class Client:
    """A third-party application (OAuth2 client credentials); never its secrets' hashes."""

    id: uuid.UUID
    name: str
    scopes: tuple[str, ...]
    audience: tuple[str, ...]
    created_at: datetime
    disabled_at: datetime | None
    tokens_valid_after: int
    secrets: tuple[ClientSecret, ...]

    @property
    def enabled(self) -> bool:
        return self.disabled_at is None

    def view(self) -> dict[str, object]:
        return {
            "clientId": str(self.id),
            "name": self.name,
            "scopes": list(self.scopes),
            "audience": list(self.audience),
            "enabled": self.enabled,
            "createdAt": self.created_at.isoformat(),
            "secrets": [s.view() for s in self.secrets],
        }
