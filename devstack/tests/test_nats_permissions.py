"""Service identities on NATS: the authorization `mosaic up` writes, against a real nats-server.

Each test starts nats-server with the configuration the supervisor writes for the registry
(`nats_auth.write_server_config`) and connects as the services do: a service is refused what
it does not own (another service's events, answering another service's endpoints, another
service's stream) while everything it needs works.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from mosaic_devstack import nats_auth
from mosaic_devstack.embedded import (
    EmbeddedNats,
    cluster_url,
    free_port,
    nats_cluster,
    wait_jetstream,
)
from mosaic_devstack.services import SERVICES
from mosaic_devstack.state import DataDir
from mosaic_kit.events import Event, new_event
from mosaic_kit.nats.connection import NatsCredentials, connect
from mosaic_kit.nats.jetstream import ensure_stream, publish, subscribe_recent
from mosaic_kit.nats.rpc import RpcUnavailable, request, serve


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    data = DataDir.at(tmp_path / "stack")
    data.create()
    return data


@pytest.fixture
def passwords(data: DataDir) -> dict[str, str]:
    return nats_auth.write_server_config(data, SERVICES)


@pytest.fixture
def server(data: DataDir, passwords: dict[str, str]) -> Iterator[EmbeddedNats]:
    node = EmbeddedNats(data.nats, free_port(), log=data.log("nats"), config=data.nats_config)
    node.start()
    try:
        yield node
    finally:
        node.stop()


class Login:
    """Connections as the stack's users; each records the errors the server sent it."""

    def __init__(self, url: str, passwords: dict[str, str]) -> None:
        self.url = url
        self.passwords = passwords
        self.errors: dict[str, list[str]] = {}
        self.clients: list[Client] = []

    async def kit(self, user: str) -> Client:
        """Connected exactly as a service is (`mosaic_kit.nats.connection.connect`)."""
        credentials = NatsCredentials(
            user=user, password=self.passwords[user], inbox_prefix=nats_auth.inbox_prefix(user)
        )
        client = await connect(self.url, f"test-{user}", credentials=credentials, max_wait=5)
        self.clients.append(client)
        return client

    async def raw(self, user: str) -> Client:
        """A plain client whose asynchronous errors (permission violations) are kept."""
        errors = self.errors.setdefault(user, [])

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        client = await nats.connect(
            self.url,
            user=user,
            password=self.passwords[user],
            inbox_prefix=nats_auth.inbox_prefix(user),
            error_cb=on_error,
            allow_reconnect=False,
        )
        self.clients.append(client)
        return client

    async def violations(self, user: str, client: Client) -> list[str]:
        await client.flush(timeout=2)
        await asyncio.sleep(0.2)  # the server's -ERR comes after the PONG at times
        return [e for e in self.errors.get(user, []) if "permissions violation" in e.lower()]

    async def close(self) -> None:
        for client in self.clients:
            if not client.is_closed:
                await client.close()


@pytest.fixture
async def login(server: EmbeddedNats, passwords: dict[str, str]) -> AsyncIterator[Login]:
    logins = Login(server.url, passwords)
    try:
        yield logins
    finally:
        await logins.close()


async def _received(client: Client, subject: str) -> list[Msg]:
    got: list[Msg] = []

    async def keep(msg: Msg) -> None:
        got.append(msg)

    await client.subscribe(subject, cb=keep)
    await client.flush()
    return got


def _event(kind: str) -> Event:
    return new_event(kind, {"userId": "u-1"})


def test_the_configuration_holds_every_user_and_is_private(
    data: DataDir, passwords: dict[str, str]
) -> None:
    assert set(passwords) == {"mosaic", "gateway", "auth", "blog", "reco"}
    assert len(set(passwords.values())) == len(passwords)  # one password each
    assert data.nats_config.stat().st_mode & 0o077 == 0
    for user in passwords:
        secret = data.secrets / nats_auth.password_secret(user)
        assert secret.stat().st_mode & 0o077 == 0
    # Kept: the next start writes the same passwords again.
    assert nats_auth.write_server_config(data, SERVICES) == passwords


async def test_a_connection_without_credentials_is_refused(server: EmbeddedNats) -> None:
    with pytest.raises(nats.errors.Error):
        await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await connect(server.url, "anonymous", max_wait=30)  # not retried for 30 s


async def test_a_wrong_password_is_refused(server: EmbeddedNats) -> None:
    wrong = NatsCredentials(user="blog", password="not-it", inbox_prefix="_INBOX_blog")
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await connect(server.url, "impostor", credentials=wrong, max_wait=5)


async def test_blog_cannot_publish_auth_events_but_publishes_its_own(login: Login) -> None:
    admin = await login.raw("mosaic")
    auth_events = await _received(admin, "events.auth.>")
    blog_events = await _received(admin, "events.blog.>")
    blog = await login.raw("blog")

    await blog.publish("events.auth.user.created", b"{}")
    assert await login.violations("blog", blog) == [
        'nats: permissions violation for publish to "events.auth.user.created"'
    ]
    await blog.publish("events.blog.blog.published", b"{}")
    await blog.flush()
    await asyncio.sleep(0.2)
    assert auth_events == []
    assert [msg.subject for msg in blog_events] == ["events.blog.blog.published"]


async def test_blog_cannot_answer_auth_requests(login: Login) -> None:
    blog = await login.raw("blog")
    await blog.subscribe("auth.apikeys.verify", queue="auth")
    assert len(await login.violations("blog", blog)) == 1
    # Nor impersonate auth in discovery, where the gateway finds instances.
    await blog.subscribe("$SRV.INFO.auth")
    assert len(await login.violations("blog", blog)) == 2
    # With nobody else serving it, a caller learns nobody answers: blog never got the request.
    gateway = await login.kit("gateway")
    with pytest.raises(RpcUnavailable):
        await request(gateway, "auth.apikeys.verify", {"key": "k"}, timeout=1)


async def test_services_answer_their_endpoints_and_call_those_they_need(login: Login) -> None:
    auth = await login.kit("auth")

    async def users_get(_: dict[str, object]) -> dict[str, object]:
        return {"users": []}

    async def verify(_: dict[str, object]) -> dict[str, object]:
        return {"id": "1", "name": "demo"}

    service = await serve(
        auth,
        name="auth",
        version="1.0.0",
        description="stand-in",
        endpoints={"auth.users.get": users_get, "auth.apikeys.verify": verify},
        queue_group="auth",
    )
    try:
        blog = await login.kit("blog")
        assert await request(blog, "auth.users.get", {"ids": []}, timeout=2) == {"users": []}
        gateway = await login.kit("gateway")
        assert await request(gateway, "auth.apikeys.verify", {"key": "k"}, timeout=2) == {
            "id": "1",
            "name": "demo",
        }
        # Discovery: the gateway asks, auth's micro service answers its inbox.
        reply = await gateway.request("$SRV.INFO.auth", b"", timeout=2)
        assert b'"name":"auth"' in reply.data.replace(b" ", b"")
        # Blog may not call an endpoint it has no business with (the gateway's API key check).
        raw_blog = await login.raw("blog")
        await raw_blog.publish("auth.apikeys.verify", b"{}")
        assert len(await login.violations("blog", raw_blog)) == 1
    finally:
        await service.stop()


async def test_streams_are_their_owners_and_readers_consume_them(login: Login) -> None:
    auth = await login.kit("auth")
    await ensure_stream(auth.jetstream(), "auth")
    await publish(auth.jetstream(), _event("auth.user.created"), timeout=2)

    reco = await login.raw("reco")
    js = reco.jetstream(timeout=1)
    # Not its stream: neither creating one in another service's name nor deleting auth's.
    with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error)):
        await js.add_stream(StreamConfig(name="EVENTS_BLOG", subjects=["events.blog.>"]))
    with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error)):
        await js.delete_stream("EVENTS_AUTH")
    with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error)):
        await js.purge_stream("EVENTS_AUTH")
    assert len(await login.violations("reco", reco)) == 3
    admin = (await login.raw("mosaic")).jetstream()
    assert (await admin.stream_info("EVENTS_AUTH")).state.messages == 1
    with pytest.raises(nats.js.errors.NotFoundError):
        await admin.stream_info("EVENTS_BLOG")

    # What it reads, it reads: a durable consumer of auth's events, as the kit binds one ...
    reco_kit = (await login.kit("reco")).jetstream()
    sub = await reco_kit.pull_subscribe(
        "events.auth.>", durable="reco-authors", stream="EVENTS_AUTH"
    )
    [msg] = await sub.fetch(1, timeout=2)
    await msg.ack_sync(timeout=2)
    assert msg.subject == "events.auth.user.created"
    # ... and an ordered replay (the revocation feed every verifier follows).
    seen: list[str] = []

    async def keep(event: Event) -> None:
        seen.append(event.type)

    feed = await subscribe_recent(
        reco_kit, ["events.auth.user.created"], keep, since=timedelta(minutes=5)
    )
    try:
        assert await feed.wait_caught_up(5)
        assert seen == ["auth.user.created"]
    finally:
        await feed.stop()

    # Blog keeps its own stream and its cache bucket.
    blog = (await login.kit("blog")).jetstream()
    await ensure_stream(blog, "blog")
    kv = await blog.create_key_value(bucket="mosaic_cache")
    await kv.put("k", b"v")
    assert (await kv.get("k")).value == b"v"


async def test_the_gateway_keeps_its_rate_limit_bucket_only(login: Login) -> None:
    gateway = (await login.kit("gateway")).jetstream()
    kv = await gateway.create_key_value(bucket="gateway_rate_limits")
    assert await kv.create("ip-1", b"1") == 1
    raw = await login.raw("gateway")
    with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error)):
        await raw.jetstream(timeout=1).create_key_value(bucket="mosaic_cache")
    assert len(await login.violations("gateway", raw)) == 1


async def test_a_cluster_gives_every_node_the_same_authorization(
    data: DataDir, passwords: dict[str, str]
) -> None:
    nodes = nats_cluster(data.nats, 3, free_port, data.logs, config=data.nats_config)
    try:
        for node in nodes:
            node.start()
        url = cluster_url(nodes)
        await wait_jetstream(url, 30.0, user="mosaic", password=passwords["mosaic"])
        logins = Login(url, passwords)
        try:
            auth = await logins.kit("auth")
            await ensure_stream(auth.jetstream(), "auth", replicas=3)
            for node in nodes:
                with pytest.raises(nats.errors.Error):
                    await nats.connect(node.url, allow_reconnect=False, max_reconnect_attempts=0)
                # Routes carry what auth published to a reader on another node.
                reader = Login(node.url, passwords)
                try:
                    reco = (await reader.kit("reco")).jetstream()
                    info = await reco.stream_info("EVENTS_AUTH")
                    assert info.config.num_replicas == 3
                finally:
                    await reader.close()
        finally:
            await logins.close()
    finally:
        for node in nodes:
            node.stop()
