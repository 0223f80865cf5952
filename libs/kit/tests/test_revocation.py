"""RevocationSet: what each auth event revokes, for how long, and robustness to bad events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from mosaic_devstack.embedded import EmbeddedNats
from mosaic_kit.events import Event, new_event
from mosaic_kit.nats.connection import connect
from mosaic_kit.nats.jetstream import ensure_stream, publish
from mosaic_kit.nats.revocation import follow_revocations
from mosaic_kit.revocation import RevocationSet
from mosaic_kit.tokens import Principal

NOW = 1_750_000_000


class Clock:
    def __init__(self) -> None:
        self.now: float = NOW

    def __call__(self) -> float:
        return self.now


def principal(user: str = "u1", session: str = "s1", iat: int = NOW) -> Principal:
    return Principal(user, frozenset({"USER"}), session, iat, iat + 900)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def revocations(clock: Clock) -> RevocationSet:
    return RevocationSet(max_token_ttl=timedelta(hours=1), grace=timedelta(seconds=60), clock=clock)


def test_session_revocation_is_per_session(revocations: RevocationSet) -> None:
    revocations.revoke_session("s1", NOW + 100)
    assert revocations.is_revoked(principal(session="s1"))
    assert not revocations.is_revoked(principal(session="s2"))


def test_user_cutoff_compares_issued_at(revocations: RevocationSet) -> None:
    revocations.revoke_user_before("u1", NOW, NOW + 3600)
    assert revocations.is_revoked(principal(iat=NOW - 1))
    assert not revocations.is_revoked(principal(iat=NOW))
    assert not revocations.is_revoked(principal(user="u2", iat=NOW - 1))


def test_user_cutoff_only_moves_forward(revocations: RevocationSet) -> None:
    revocations.revoke_user_before("u1", NOW, NOW + 3600)
    # An older event (e.g. replayed on startup after a newer one) must not re-admit tokens.
    revocations.revoke_user_before("u1", NOW - 500, NOW + 100)
    assert revocations.is_revoked(principal(iat=NOW - 1))
    revocations.prune(NOW + 3000)
    assert revocations.is_revoked(principal(iat=NOW - 1))


def test_prune_drops_entries_past_until_plus_grace(revocations: RevocationSet) -> None:
    revocations.revoke_session("s1", NOW + 100)
    revocations.revoke_session("s2", NOW + 1000)
    revocations.revoke_user_before("u1", NOW, NOW + 100)
    assert revocations.prune(NOW + 150) == 0  # still within the grace period
    assert revocations.prune(NOW + 161) == 2
    assert len(revocations) == 1
    assert revocations.is_revoked(principal(session="s2"))
    assert not revocations.is_revoked(principal(session="s1", iat=NOW - 10))


def test_pruning_happens_on_its_own_as_revocations_arrive(
    revocations: RevocationSet, clock: Clock
) -> None:
    revocations.revoke_session("old", NOW + 10)
    clock.now = NOW + 3600
    revocations.revoke_session("new", NOW + 7200)
    assert len(revocations) == 1


def event(type_: str, data: dict[str, Any]) -> Event:
    return new_event(type_, data)


async def test_session_revoked_event(revocations: RevocationSet) -> None:
    await revocations.apply_event(
        event("auth.session.revoked", {"sessionId": "s1", "userId": "u1", "expiresAt": NOW + 60})
    )
    assert revocations.is_revoked(principal(session="s1"))
    revocations.prune(NOW + 60 + 61)
    assert len(revocations) == 0


async def test_roles_changed_event_needs_removed_roles(revocations: RevocationSet) -> None:
    data = {"userId": "u1", "roles": ["USER"], "tokensValidAfter": NOW}
    await revocations.apply_event(event("auth.user.roles_changed", {**data, "removedRoles": []}))
    assert len(revocations) == 0
    await revocations.apply_event(
        event("auth.user.roles_changed", {**data, "removedRoles": ["EDITOR"]})
    )
    assert revocations.is_revoked(principal(iat=NOW - 1))
    assert not revocations.is_revoked(principal(iat=NOW))


async def test_user_cutoff_is_kept_for_the_max_token_ttl(revocations: RevocationSet) -> None:
    await revocations.apply_event(
        event("auth.user.disabled", {"userId": "u1", "tokensValidAfter": NOW})
    )
    assert revocations.is_revoked(principal(iat=NOW - 1))
    revocations.prune(NOW + 3600)  # a token issued just before NOW may live until NOW + 1h
    assert revocations.is_revoked(principal(iat=NOW - 1))
    revocations.prune(NOW + 3600 + 61)
    assert len(revocations) == 0


@pytest.mark.parametrize(
    ("type_", "data"),
    [
        ("auth.session.revoked", {"userId": "u1", "expiresAt": NOW}),
        ("auth.session.revoked", {"sessionId": "s1", "expiresAt": "soon"}),
        ("auth.session.revoked", {"sessionId": "s1", "expiresAt": True}),
        ("auth.user.roles_changed", {"userId": "u1", "tokensValidAfter": NOW}),
        ("auth.user.roles_changed", {"userId": "u1", "removedRoles": ["A"]}),
        ("auth.user.disabled", {"userId": 5, "tokensValidAfter": NOW}),
    ],
)
async def test_malformed_events_are_skipped(
    revocations: RevocationSet, type_: str, data: dict[str, Any]
) -> None:
    await revocations.apply_event(event(type_, data))
    assert len(revocations) == 0


async def test_unrelated_events_are_ignored(revocations: RevocationSet) -> None:
    await revocations.apply_event(event("auth.user.created", {"userId": "u1"}))
    assert len(revocations) == 0


# --- following auth's events on a real JetStream --------------------------------------------


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_follow_replays_recent_events_then_applies_live_ones(own_nats: EmbeddedNats) -> None:
    nc = await connect(own_nats.url, "test-revocations")
    js = nc.jetstream()
    feed = None
    try:
        await ensure_stream(js, "auth")
        await publish(
            js,
            new_event(
                "auth.session.revoked", {"sessionId": "s-old", "userId": "u1", "expiresAt": NOW}
            ),
        )
        await publish(
            js,
            new_event(
                "auth.user.roles_changed",
                {"userId": "u2", "roles": [], "removedRoles": ["EDITOR"], "tokensValidAfter": NOW},
            ),
        )
        # Another auth event on the same stream, which the feed must not even need.
        await publish(js, new_event("auth.user.created", {"userId": "u3"}))

        revocations = RevocationSet()
        feed = await follow_revocations(js, revocations, since=timedelta(hours=1))
        assert await feed.wait_caught_up(10.0)
        assert revocations.is_revoked(principal(session="s-old"))
        assert revocations.is_revoked(principal(user="u2", session="x", iat=NOW - 1))
        assert not revocations.is_revoked(principal(user="u2", session="x", iat=NOW))

        await publish(
            js, new_event("auth.user.disabled", {"userId": "u4", "tokensValidAfter": NOW})
        )
        await wait_for(lambda: revocations.is_revoked(principal(user="u4", iat=NOW - 1)))
    finally:
        if feed is not None:
            await feed.stop()
        await nc.drain()


async def test_follow_waits_for_auth_stream_to_appear(own_nats: EmbeddedNats) -> None:
    nc = await connect(own_nats.url, "test-revocations-early")
    js = nc.jetstream()
    feed = None
    try:
        revocations = RevocationSet()
        # The gateway may start before auth has created its stream: that is not an error.
        feed = await follow_revocations(
            js, revocations, since=timedelta(hours=1), retry_interval=0.1
        )
        assert not feed.following
        assert not await feed.wait_caught_up(0.05)

        await ensure_stream(js, "auth")
        await publish(
            js,
            new_event(
                "auth.session.revoked", {"sessionId": "s-1", "userId": "u1", "expiresAt": NOW}
            ),
        )
        await wait_for(lambda: revocations.is_revoked(principal(session="s-1")))
        assert feed.following
    finally:
        if feed is not None:
            await feed.stop()
        await nc.drain()
