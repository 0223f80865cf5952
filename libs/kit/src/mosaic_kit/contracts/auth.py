"""The auth service's contracts that other services use: its user events and `auth.users.get`.

auth produces them; blog (and any service keeping a read model of users) consumes them. Both
sides import these models, so a change to the contract is a change to one class, caught by both
sides' tests.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from mosaic_kit.events import EventPayload

__all__ = [
    "AUTH_EVENTS",
    "MAX_USER_IDS",
    "USERS_GET",
    "ApiKeyCreated",
    "ApiKeyRevoked",
    "ClientCreated",
    "ClientDisabled",
    "ClientEnabled",
    "ClientTokenRevoked",
    "KeysRotated",
    "PublicUser",
    "SessionRevoked",
    "UserCreated",
    "UserDisabled",
    "UserEnabled",
    "UserProfile",
    "UserRolesChanged",
    "UserUpdated",
    "Users",
    "UsersQuery",
]

USERS_GET = "auth.users.get"
MAX_USER_IDS = 100


class UserProfile(EventPayload):
    """A user's public profile and roles (never the e-mail)."""

    id: uuid.UUID
    name: str
    profile_pic_url: str | None = None
    roles: list[str] = Field(default_factory=list)


class UserCreated(UserProfile):
    """`auth.user.created`: sign-up, or the seed creating the admin."""

    TYPE: ClassVar[str] = "auth.user.created"


class UserUpdated(UserProfile):
    """`auth.user.updated`: the user changed their name or picture."""

    TYPE: ClassVar[str] = "auth.user.updated"


class UserRolesChanged(EventPayload):
    """`auth.user.roles_changed`: an admin set the user's roles."""

    TYPE: ClassVar[str] = "auth.user.roles_changed"
    user_id: uuid.UUID
    roles: list[str]
    removed_roles: list[str] = Field(description="May be empty.")
    tokens_valid_after: int = Field(
        description="Epoch seconds; moved forward only when a role was removed: older tokens die."
    )


class UserDisabled(EventPayload):
    """`auth.user.disabled`: an admin disabled the user; their tokens stop working."""

    TYPE: ClassVar[str] = "auth.user.disabled"
    user_id: uuid.UUID
    tokens_valid_after: int


class UserEnabled(EventPayload):
    """`auth.user.enabled`: an admin enabled a disabled user again."""

    TYPE: ClassVar[str] = "auth.user.enabled"
    user_id: uuid.UUID


class SessionRevoked(EventPayload):
    """`auth.session.revoked`: a session ended (sign-out, reuse, password change, disabling)."""

    TYPE: ClassVar[str] = "auth.session.revoked"
    session_id: uuid.UUID
    user_id: uuid.UUID
    expires_at: int = Field(description="Epoch seconds until which its access tokens are refused.")
    reason: str


class ApiKeyCreated(EventPayload):
    """`auth.apikey.created`: an admin created an API key (never the key itself)."""

    TYPE: ClassVar[str] = "auth.apikey.created"
    id: uuid.UUID
    name: str


class ApiKeyRevoked(EventPayload):
    """`auth.apikey.revoked`: gateways drop the key's cached verdict."""

    TYPE: ClassVar[str] = "auth.apikey.revoked"
    id: uuid.UUID


class KeysRotated(EventPayload):
    """`auth.keys.rotated`: a new signing key is active; verifiers refresh their JWKS."""

    TYPE: ClassVar[str] = "auth.keys.rotated"
    kid: str


class ClientCreated(EventPayload):
    """`auth.client.created`: an admin registered a client application (never its secret)."""

    TYPE: ClassVar[str] = "auth.client.created"
    client_id: uuid.UUID
    name: str
    scopes: list[str]


class ClientDisabled(EventPayload):
    """`auth.client.disabled`: a client application was disabled or deleted; its tokens issued
    before `tokensValidAfter` stop working (`mosaic_kit.revocation`). Enabling it again never
    lowers the cut-off: only tokens issued after it work."""

    TYPE: ClassVar[str] = "auth.client.disabled"
    client_id: uuid.UUID
    tokens_valid_after: int = Field(description="Epoch seconds.")


class ClientEnabled(EventPayload):
    """`auth.client.enabled`: a disabled client application may get tokens again."""

    TYPE: ClassVar[str] = "auth.client.enabled"
    client_id: uuid.UUID


class ClientTokenRevoked(EventPayload):
    """`auth.client.token_revoked`: one client token revoked by its client (RFC 7009)."""

    TYPE: ClassVar[str] = "auth.client.token_revoked"
    jti: str
    expires_at: int = Field(description="Epoch seconds: the token's `exp`, when it dies anyway.")


AUTH_EVENTS: tuple[type[EventPayload], ...] = (
    UserCreated,
    UserUpdated,
    UserRolesChanged,
    UserDisabled,
    UserEnabled,
    SessionRevoked,
    ApiKeyCreated,
    ApiKeyRevoked,
    KeysRotated,
    ClientCreated,
    ClientDisabled,
    ClientEnabled,
    ClientTokenRevoked,
)
"""Every event auth publishes."""


class UsersQuery(BaseModel):
    """`auth.users.get`: the users to describe."""

    ids: list[uuid.UUID] = Field(
        max_length=MAX_USER_IDS, description="User ids; unknown ones are left out."
    )


class PublicUser(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    name: str
    profile_pic_url: str | None = Field(alias="profilePicUrl")


class Users(BaseModel):
    """The answer of `auth.users.get`."""

    users: list[PublicUser]
