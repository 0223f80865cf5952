"""Which still-unexpired access tokens must no longer be accepted.

Access tokens are verified locally, so signing out or losing a role would not take effect until the
token expires. The auth service therefore publishes revocation events; every verifying process
applies them to its `RevocationSet`, which the verifier consults on every request. A user's token
is revoked when its session was revoked, or when it was issued before its user's
`tokensValidAfter`; a client application's token (OAuth2 client credentials) when its `jti` was
revoked (RFC 7009), or when it was issued before its client's cut-off (the client was disabled,
deleted, or its secret withdrawn).

Entries are kept only while a token they could reject may still be alive, then pruned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from mosaic_kit.events import Event
from mosaic_kit.logging import get_logger

__all__ = [
    "CLIENT_DISABLED",
    "CLIENT_TOKEN_REVOKED",
    "REVOCATION_SUBJECTS",
    "ROLES_CHANGED",
    "SESSION_REVOKED",
    "USER_DISABLED",
    "RevocationSet",
]

if TYPE_CHECKING:
    from mosaic_kit.tokens import ClientPrincipal, Principal

_log = get_logger("mosaic_kit.revocation")

SESSION_REVOKED = "auth.session.revoked"
ROLES_CHANGED = "auth.user.roles_changed"
USER_DISABLED = "auth.user.disabled"
# A client's tokens issued before `tokensValidAfter` stop working: disabled, deleted, or a secret
# withdrawn in a hurry ({clientId, tokensValidAfter}).
CLIENT_DISABLED = "auth.client.disabled"
# One client token revoked (RFC 7009): {jti, expiresAt}.
CLIENT_TOKEN_REVOKED = "auth.client.token_revoked"  # noqa: S105 - an event type
REVOCATION_SUBJECTS = [
    f"events.{t}"
    for t in (SESSION_REVOKED, ROLES_CHANGED, USER_DISABLED, CLIENT_DISABLED, CLIENT_TOKEN_REVOKED)
]


def _epoch(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    # bool is an int subclass; `true` as a timestamp is a producer bug, not epoch 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be an epoch in seconds")
    return int(value)


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


class RevocationSet:
    """Revoked sessions and per-user "tokens valid after" cut-offs, held in memory.

    `max_token_ttl` must be at least the lifetime of the access tokens auth issues: a user cut-off
    is kept that long after it, since any token it rejects has expired by then. `grace` keeps
    entries a little past their end to cover the verifier's clock leeway and skew between hosts.
    """

    def __init__(
        self,
        *,
        max_token_ttl: timedelta = timedelta(hours=24),
        grace: timedelta = timedelta(minutes=1),
        prune_every: timedelta = timedelta(minutes=1),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._max_ttl = int(max_token_ttl.total_seconds())
        self._grace = grace.total_seconds()
        self._prune_every = prune_every.total_seconds()
        self._clock = clock
        self._sessions: dict[str, float] = {}
        self._users: dict[str, tuple[int, float]] = {}
        self._token_ids: dict[str, float] = {}
        self._clients: dict[str, tuple[int, float]] = {}
        self._next_prune = clock() + self._prune_every

    def __len__(self) -> int:
        return len(self._sessions) + len(self._users) + len(self._token_ids) + len(self._clients)

    def revoke_session(self, session_id: str, until_epoch: float) -> None:
        """Reject every token of `session_id` until `until_epoch` (when they have all expired)."""
        self._sessions[session_id] = max(until_epoch, self._sessions.get(session_id, until_epoch))
        self._maybe_prune()

    def revoke_user_before(
        self, user_id: str, tokens_valid_after_epoch: int, until_epoch: float
    ) -> None:
        """Reject `user_id`'s tokens issued before `tokens_valid_after_epoch`, until `until_epoch`.

        Cut-offs only move forward: a replayed older event cannot re-admit tokens.
        """
        current = self._users.get(user_id)
        if current is not None:
            tokens_valid_after_epoch = max(tokens_valid_after_epoch, current[0])
            until_epoch = max(until_epoch, current[1])
        self._users[user_id] = (tokens_valid_after_epoch, until_epoch)
        self._maybe_prune()

    def revoke_token_id(self, token_id: str, until_epoch: float) -> None:
        """Reject the client token `token_id` (its `jti`) until it has expired."""
        self._token_ids[token_id] = max(until_epoch, self._token_ids.get(token_id, until_epoch))
        self._maybe_prune()

    def revoke_client_before(
        self, client_id: str, tokens_valid_after_epoch: int, until_epoch: float
    ) -> None:
        """Reject `client_id`'s tokens issued before `tokens_valid_after_epoch`; moves forward
        only, as for users."""
        current = self._clients.get(client_id)
        if current is not None:
            tokens_valid_after_epoch = max(tokens_valid_after_epoch, current[0])
            until_epoch = max(until_epoch, current[1])
        self._clients[client_id] = (tokens_valid_after_epoch, until_epoch)
        self._maybe_prune()

    def is_client_revoked(self, principal: ClientPrincipal) -> bool:
        if principal.token_id in self._token_ids:
            return True
        cutoff = self._clients.get(principal.client_id)
        return cutoff is not None and principal.issued_at < cutoff[0]

    def is_revoked(self, principal: Principal) -> bool:
        # Hot path (every request): two dict lookups. Expired entries need no time check here
        # because every token they reject has expired anyway; pruning just frees the memory.
        if principal.session_id in self._sessions:
            return True
        cutoff = self._users.get(principal.user_id)
        return cutoff is not None and principal.issued_at < cutoff[0]

    def prune(self, now: float | None = None) -> int:
        """Drop entries whose tokens have all expired; returns how many were dropped."""
        horizon = (self._clock() if now is None else now) - self._grace
        stale_sessions = [sid for sid, until in self._sessions.items() if until < horizon]
        stale_users = [uid for uid, (_, until) in self._users.items() if until < horizon]
        stale_tokens = [jti for jti, until in self._token_ids.items() if until < horizon]
        stale_clients = [cid for cid, (_, until) in self._clients.items() if until < horizon]
        for sid in stale_sessions:
            del self._sessions[sid]
        for uid in stale_users:
            del self._users[uid]
        for jti in stale_tokens:
            del self._token_ids[jti]
        for cid in stale_clients:
            del self._clients[cid]
        self._next_prune = self._clock() + self._prune_every
        return len(stale_sessions) + len(stale_users) + len(stale_tokens) + len(stale_clients)

    def _maybe_prune(self) -> None:
        if self._clock() >= self._next_prune:
            self.prune()

    async def apply_event(self, event: Event) -> None:
        """Apply one auth event; other types and malformed payloads are logged and skipped."""
        try:
            self._apply(event.type, event.data)
        except ValueError as exc:
            # Nothing better to do than shout: the event cannot be interpreted.
            _log.error("revocation_event_malformed", event_type=event.type, reason=str(exc))

    def _apply(self, event_type: str, data: Mapping[str, Any]) -> None:
        if not isinstance(data, Mapping):
            raise ValueError("data must be an object")
        if event_type == SESSION_REVOKED:
            self.revoke_session(_text(data, "sessionId"), _epoch(data, "expiresAt"))
        elif event_type == ROLES_CHANGED:
            removed = data.get("removedRoles")
            if not isinstance(removed, list):
                raise ValueError("removedRoles must be a list")
            # Only losing a role makes old tokens dangerous; a role gained shows up at refresh.
            if removed:
                self._cut_off_user(data)
        elif event_type == USER_DISABLED:
            self._cut_off_user(data)
        elif event_type == CLIENT_DISABLED:
            valid_after = _epoch(data, "tokensValidAfter")
            self.revoke_client_before(
                _text(data, "clientId"), valid_after, valid_after + self._max_ttl
            )
        elif event_type == CLIENT_TOKEN_REVOKED:
            self.revoke_token_id(_text(data, "jti"), _epoch(data, "expiresAt"))
        else:
            _log.debug("revocation_event_ignored", event_type=event_type)

    def _cut_off_user(self, data: Mapping[str, Any]) -> None:
        valid_after = _epoch(data, "tokensValidAfter")
        self.revoke_user_before(_text(data, "userId"), valid_after, valid_after + self._max_ttl)
