"""connect(): waits (bounded) for a server that is not up yet, then survives server restarts."""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
import pytest

from mosaic_devstack.embedded import EmbeddedNats, free_port
from mosaic_kit.nats.connection import NatsCredentials, connect, redact_url
from mosaic_kit.settings import ServiceSettings


def test_redact_url_drops_credentials() -> None:
    url = "nats://alice:s3cret@n1.example:4222, tls://tok@n2.example:4443,n3.example"
    redacted = redact_url(url)
    assert "s3cret" not in redacted
    assert "alice" not in redacted
    assert "tok" not in redacted
    assert redacted == "nats://n1.example:4222,tls://n2.example:4443,nats://n3.example"


def test_credentials_come_from_the_settings_and_never_show(tmp_path: Any) -> None:
    (tmp_path / "nats_password").write_text("pw-from-file\n")
    settings = ServiceSettings(
        _secrets_dir=str(tmp_path),  # type: ignore[call-arg]
        nats_user="blog",
        nats_inbox_prefix="_INBOX_blog",
    )
    credentials = NatsCredentials.from_settings(settings)
    assert credentials.options() == {
        "inbox_prefix": "_INBOX_blog",
        "user": "blog",
        "password": "pw-from-file",
    }
    assert "pw-from-file" not in repr(credentials)
    # An external NATS with accounts: the .creds file (or an NKey seed) is handed to the client.
    creds = NatsCredentials.from_settings(ServiceSettings(nats_creds_file="/run/blog.creds"))
    assert creds.options() == {"inbox_prefix": "_INBOX", "user_credentials": "/run/blog.creds"}
    with pytest.raises(ValueError, match="needs a NATS user"):
        NatsCredentials(password="orphan").options()


async def test_connect_gives_up_after_max_wait() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises((OSError, nats.errors.Error)):
        await connect(url, "test-nobody", connect_timeout=0.2, max_wait=0.5)
    assert loop.time() - started < 5


async def test_connect_waits_for_a_late_server(own_nats: EmbeddedNats) -> None:
    await asyncio.to_thread(own_nats.stop)
    connecting = asyncio.create_task(
        connect(own_nats.url, "test-late", connect_timeout=0.5, max_wait=15)
    )
    await asyncio.sleep(0.5)
    assert not connecting.done()
    await asyncio.to_thread(own_nats.start)
    nc = await asyncio.wait_for(connecting, 15)
    try:
        assert nc.is_connected
    finally:
        await nc.close()


async def test_connection_comes_back_after_a_server_restart(own_nats: EmbeddedNats) -> None:
    nc = await connect(own_nats.url, "test-restart", reconnect_wait=0.1)
    try:
        sub = await nc.subscribe("restart.probe")
        await asyncio.to_thread(own_nats.stop)
        # Several failed reconnection attempts: the client must keep trying, not give up.
        await asyncio.sleep(1.0)
        assert not nc.is_closed
        await asyncio.to_thread(own_nats.start)
        for _ in range(100):
            if nc.is_connected:
                break
            await asyncio.sleep(0.1)
        assert nc.is_connected
        # The subscription made before the restart is restored by the client.
        await nc.publish("restart.probe", b"hello")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"hello"
    finally:
        await nc.close()


async def test_readiness_check_follows_the_connection(own_nats: Any) -> None:
    from mosaic_kit.nats.connection import readiness_check

    client = await connect(own_nats.url, "readiness-test", max_wait=5.0)
    check = readiness_check(client)
    await check()
    await client.close()
    with pytest.raises(ConnectionError):
        await check()
