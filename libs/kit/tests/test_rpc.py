"""NATS request-reply: replies, error mapping, unavailability, timeouts, discovery, draining."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pydantic
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from mosaic_kit.metrics import default_registry
from mosaic_kit.nats.connection import Client, connect
from mosaic_kit.nats.rpc import RpcError, RpcTimeout, RpcUnavailable, request, serve, typed
from mosaic_kit.problem import Problem


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(nats_url, "test-rpc")
    yield client
    await client.close()


@pytest.fixture
def prefix() -> str:
    """Subjects and a service name no other test uses on the shared server."""
    return f"t{uuid.uuid4().hex[:10]}"


async def test_endpoint_answers_with_data(nc: Client, prefix: str) -> None:
    async def users_get(payload: dict[str, Any]) -> Any:
        return {"ids": payload["ids"], "count": len(payload["ids"])}

    service = await serve(
        nc,
        name=prefix,
        version="1.2.3",
        description="test",
        endpoints={f"{prefix}.users.get": users_get},
    )
    try:
        data = await request(nc, f"{prefix}.users.get", {"ids": ["a", "b"]}, timeout=2)
        assert data == {"ids": ["a", "b"], "count": 2}
    finally:
        await service.stop()


async def test_problem_becomes_error_reply(nc: Client, prefix: str) -> None:
    async def missing(payload: dict[str, Any]) -> Any:
        raise Problem(404, "auth.user_not_found", f"No user {payload['id']}")

    service = await serve(
        nc, name=prefix, version="1.0.0", description="t", endpoints={f"{prefix}.get": missing}
    )
    try:
        with pytest.raises(RpcError) as info:
            await request(nc, f"{prefix}.get", {"id": "u1"}, timeout=2)
        assert (info.value.status, info.value.code) == (404, "auth.user_not_found")
        assert info.value.detail == "No user u1"
        # An RpcError is a Problem: an HTTP route letting it through answers 404 with the code.
        assert isinstance(info.value, Problem)
        assert not isinstance(info.value, RpcUnavailable | RpcTimeout)

        # The raw reply follows the wire format and the micro error headers.
        raw = await nc.request(f"{prefix}.get", b'{"id": "u2"}', timeout=2)
        assert orjson.loads(raw.data) == {
            "error": {"code": "auth.user_not_found", "status": 404, "detail": "No user u2"}
        }
        assert raw.headers is not None
        assert raw.headers["Nats-Service-Error-Code"] == "404"
    finally:
        await service.stop()


async def test_unexpected_error_is_internal_without_details(nc: Client, prefix: str) -> None:
    async def broken(_payload: dict[str, Any]) -> Any:
        raise RuntimeError("password=hunter2 in a connection string")

    async def strict(payload: dict[str, Any]) -> Any:
        class Query(pydantic.BaseModel):
            limit: int

        return Query.model_validate(payload).limit

    service = await serve(
        nc,
        name=prefix,
        version="1.0.0",
        description="t",
        endpoints={f"{prefix}.broken": broken, f"{prefix}.strict": strict},
    )
    try:
        with pytest.raises(RpcError) as info:
            await request(nc, f"{prefix}.broken", {}, timeout=2)
        assert (info.value.status, info.value.code) == (500, "internal")
        assert "hunter2" not in info.value.detail

        with pytest.raises(RpcError) as invalid:
            await request(nc, f"{prefix}.strict", {"limit": "many"}, timeout=2)
        assert (invalid.value.status, invalid.value.code) == (422, "validation_failed")
        assert "limit" in invalid.value.detail

        # A body that is not a JSON object never reaches the handler.
        raw = await nc.request(f"{prefix}.strict", b"[1, 2]", timeout=2)
        assert orjson.loads(raw.data)["error"]["status"] == 400
    finally:
        await service.stop()


async def test_no_responders_is_unavailable(nc: Client, prefix: str) -> None:
    with pytest.raises(RpcUnavailable) as info:
        await request(nc, f"{prefix}.nobody.home", {}, timeout=2)
    assert (info.value.status, info.value.code) == (503, "rpc.unavailable")


async def test_closed_connection_is_unavailable(nats_url: str, prefix: str) -> None:
    client = await connect(nats_url, "test-rpc-closed")
    await client.close()
    with pytest.raises(RpcUnavailable):
        await request(client, f"{prefix}.any", {}, timeout=1)


async def test_slow_handler_times_out(nc: Client, prefix: str) -> None:
    release = asyncio.Event()

    async def slow(_payload: dict[str, Any]) -> Any:
        await release.wait()
        return "late"

    service = await serve(
        nc, name=prefix, version="1.0.0", description="t", endpoints={f"{prefix}.slow": slow}
    )
    try:
        with pytest.raises(RpcTimeout) as info:
            await request(nc, f"{prefix}.slow", {}, timeout=0.3)
        assert (info.value.status, info.value.code) == (504, "rpc.timeout")
    finally:
        release.set()
        await service.stop()


async def test_endpoints_are_discoverable(nc: Client, prefix: str) -> None:
    async def noop(_payload: dict[str, Any]) -> Any:
        return None

    subjects = {f"{prefix}.users.get", f"{prefix}.apikeys.verify"}
    service = await serve(
        nc,
        name=prefix,
        version="2.0.0",
        description="discovery test",
        endpoints=dict.fromkeys(subjects, noop),
    )
    try:
        info = orjson.loads((await nc.request(f"$SRV.INFO.{prefix}", b"", timeout=2)).data)
        assert info["name"] == prefix
        assert info["version"] == "2.0.0"
        assert {e["subject"] for e in info["endpoints"]} == subjects
        assert all(e["queue_group"] for e in info["endpoints"])

        ping = orjson.loads((await nc.request(f"$SRV.PING.{prefix}", b"", timeout=2)).data)
        assert ping["id"] == service.id

        await request(nc, f"{prefix}.users.get", {}, timeout=2)
        stats = orjson.loads((await nc.request(f"$SRV.STATS.{prefix}", b"", timeout=2)).data)
        counts = {e["subject"]: e["num_requests"] for e in stats["endpoints"]}
        assert counts[f"{prefix}.users.get"] == 1
    finally:
        await service.stop()


async def test_requests_are_handled_concurrently(nc: Client, prefix: str) -> None:
    # Two requests that each wait for the other: sequential handling would time out.
    arrived = 0
    both = asyncio.Event()

    async def meet(_payload: dict[str, Any]) -> Any:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both.set()
        await both.wait()
        return "met"

    service = await serve(
        nc, name=prefix, version="1.0.0", description="t", endpoints={f"{prefix}.meet": meet}
    )
    try:
        replies = await asyncio.gather(
            request(nc, f"{prefix}.meet", {}, timeout=3),
            request(nc, f"{prefix}.meet", {}, timeout=3),
        )
        assert list(replies) == ["met", "met"]
    finally:
        both.set()
        await service.stop()


async def test_stop_answers_requests_in_flight(nc: Client, prefix: str) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(_payload: dict[str, Any]) -> Any:
        started.set()
        await release.wait()
        return "done"

    service = await serve(
        nc, name=prefix, version="1.0.0", description="t", endpoints={f"{prefix}.slow": slow}
    )
    pending = asyncio.create_task(request(nc, f"{prefix}.slow", {}, timeout=5))
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(service.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()  # waits for the request being handled
    release.set()
    await stopping
    assert await pending == "done"
    # Stopped: nobody serves the subject any more.
    with pytest.raises(RpcUnavailable):
        await request(nc, f"{prefix}.slow", {}, timeout=2)


async def test_trace_context_reaches_the_handler(nc: Client, prefix: str) -> None:
    seen: list[int] = []

    async def traced(_payload: dict[str, Any]) -> Any:
        seen.append(trace.get_current_span().get_span_context().trace_id)
        return None

    service = await serve(
        nc, name=prefix, version="1.0.0", description="t", endpoints={f"{prefix}.t": traced}
    )
    trace_id = int(uuid.uuid4().hex, 16)
    caller = SpanContext(
        trace_id=trace_id,
        span_id=0x1234,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    try:
        with trace.use_span(NonRecordingSpan(caller)):
            await request(nc, f"{prefix}.t", {}, timeout=2)
        await request(nc, f"{prefix}.t", {}, timeout=2)  # no caller trace: a different one
    finally:
        await service.stop()
    assert seen[0] == trace_id
    assert seen[1] != trace_id


class Lookup(pydantic.BaseModel):
    ids: list[uuid.UUID] = pydantic.Field(max_length=3)


class Found(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(populate_by_name=True)
    count: int
    first_id: str | None = pydantic.Field(None, alias="firstId")


async def test_a_typed_endpoint_validates_answers_its_model_and_publishes_its_schemas(
    nc: Client, prefix: str
) -> None:
    calls: list[Lookup] = []

    async def lookup(query: Lookup) -> Found:
        calls.append(query)
        return Found(count=len(query.ids), first_id=str(query.ids[0]) if query.ids else None)

    async def wrong(_query: Lookup) -> Found:
        return {"count": 1}  # type: ignore[return-value]  # a handler's bug

    service = await serve(
        nc,
        name=prefix,
        version="1.0.0",
        description="t",
        endpoints={
            f"{prefix}.lookup": typed(Lookup, Found, lookup),
            f"{prefix}.wrong": typed(Lookup, Found, wrong),
        },
    )
    try:
        one = str(uuid.uuid4())
        assert await request(nc, f"{prefix}.lookup", {"ids": [one]}, timeout=2) == {
            "count": 1,
            "firstId": one,
        }
        for bad in ({"ids": ["not-a-uuid"]}, {"ids": [one] * 4}, {}):
            with pytest.raises(RpcError) as invalid:
                await request(nc, f"{prefix}.lookup", bad, timeout=2)
            assert (invalid.value.status, invalid.value.code) == (422, "validation_failed")
            assert "ids" in invalid.value.detail
        assert len(calls) == 1  # an invalid request never reaches the handler
        with pytest.raises(RpcError) as broken:
            await request(nc, f"{prefix}.wrong", {"ids": []}, timeout=2)
        assert (broken.value.status, broken.value.code) == (500, "internal")

        info = orjson.loads((await nc.request(f"$SRV.INFO.{prefix}", b"", timeout=2)).data)
        by_subject = {e["subject"]: e for e in info["endpoints"]}
        metadata = by_subject[f"{prefix}.lookup"]["metadata"]
        assert orjson.loads(metadata["request_schema"]) == Lookup.model_json_schema()
        response_schema = orjson.loads(metadata["response_schema"])
        assert set(response_schema["properties"]) == {"count", "firstId"}
    finally:
        await service.stop()


async def test_requests_are_counted_by_subject_and_status(nc: Client, prefix: str) -> None:
    # The per-endpoint RED rules and alerts (deploy/observability) are computed from these.
    async def users_get(payload: dict[str, Any]) -> Any:
        if payload.get("id") == "missing":
            raise Problem(404, "auth.user_not_found", "No such user")
        return {"id": payload.get("id")}

    subject = f"{prefix}.users.get"
    service = await serve(
        nc, name=prefix, version="1.0.0", description="t", endpoints={subject: users_get}
    )
    try:
        for _ in range(2):
            await request(nc, subject, {"id": "u1"}, timeout=2)
        with pytest.raises(RpcError):
            await request(nc, subject, {"id": "missing"}, timeout=2)
    finally:
        await service.stop()
    registry = default_registry()

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"subject": subject, **labels}) or 0.0

    assert sample("rpc_requests_total", status="200") == 2
    assert sample("rpc_requests_total", status="404") == 1
    assert sample("rpc_request_duration_seconds_count") == 3
