"""A real HTTP backend for the gateway's tests, run as its own process.

`python backend_app.py --port P --name N [--mode echo|close|garbage|fast]`

echo (default): uvicorn with the h11 parser (an HTTP implementation independent of the
gateway's httptools) serving a raw ASGI app that answers every path with JSON describing the
request it received: instance name, method, path, query, headers, body and the client's
address. Request headers steer it:

  x-test-sleep: S            wait S seconds before answering
  x-test-hold: GATE          wait until `/__release?gate=GATE` (at most a minute) before
                             answering (before x-test-sleep): a request kept in flight for as
                             long as the test needs, not for a guessed time
  x-test-status: N           answer with status N...
  x-test-body: TEXT          ...and this body (content-type from x-test-content-type)
  x-test-size: N             answer N bytes of body (content-length)
  x-test-chunks: N           answer N chunks (no content-length: chunked) of x-test-chunk-size
  x-test-die-midway: 1       send the head and part of the body, then break the connection
  x-test-digest: 1           answer the body's length and sha256 instead of echoing it
  x-test-early: 1            answer as soon as the first body bytes arrive (reads no more)
  x-test-response-header: N: V   add this header to the response (echo and x-test-status)


and a few paths control it: `/__stats` (connections seen, requests served), `/__reset`,
`/__health?ok=0|1` (what `/readyz` answers), `/readyz`, `/__fail?status=N` (answer every other
request with N until `/__fail?status=0`), `/__held` (how many requests wait at each gate),
`/__release?gate=GATE` (they go on, and later ones pass that gate at once), `/__restore` (every
setting and count back to how the process started, every gate opened: for reusing the process
in another test).

`/__json/...` serves fixed JSON documents for aggregation (see `_json_fixture`): `blog/ID`,
`user/ID`, `similar/ID` (a list), `slow/SECONDS`, `status/N` (a problem body), `text` (not JSON),
`big/N` (about N bytes).

`/openapi.json` serves an OpenAPI document naming this instance (`_openapi_document`: items,
users, an internal path; the `Item` schema differs per name, `Owner` does not);
`/__openapi?variant=2` adds an operation to it (`variant=1` takes it back).

close: reads a request head, then closes the connection without answering.
garbage: answers every request with bytes that are not HTTP.
fast: a minimal uvloop+httptools keep-alive responder (fixed small body) for throughput runs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
from typing import Any

state: dict[str, Any] = {
    "clients": set(),
    "requests": 0,
    "healthy": True,
    "name": "backend",
    "fail": 0,
    "openapi_variant": 1,
}
# Gates of x-test-hold: name -> (opened, requests waiting there)
gates: dict[str, tuple[asyncio.Event, list[int]]] = {}
HOLD_AT_MOST = 60.0


def _gate(name: str) -> tuple[asyncio.Event, list[int]]:
    if name not in gates:
        gates[name] = (asyncio.Event(), [0])
    return gates[name]


async def _hold(name: str) -> None:
    opened, waiting = _gate(name)
    waiting[0] += 1
    try:
        await asyncio.wait_for(opened.wait(), HOLD_AT_MOST)
    except TimeoutError:
        pass
    finally:
        waiting[0] -= 1


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _send_json(
    send: Any, status: int, document: Any, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(document).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"x-backend", state["name"].encode()),
                *(extra or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def problem_body(status: int) -> bytes:
    """The exact bytes `/__json/status/N` answers (tests compare them byte for byte)."""
    # Odd spacing on purpose: a re-serialised body would not match.
    return (
        f'{{"type":"urn:mosaic:problem:test.status_{status}", "status":{status},  '
        '"title":"Asked for"}'
    ).encode()


async def _json_fixture(send: Any, rest: str) -> None:
    kind, _, arg = rest.partition("/")
    if kind == "blog":
        document: Any = {
            "data": {
                "id": arg,
                "title": f"Blog {arg}",
                "draftText": "not for readers",
                "author": {"id": f"u{arg}", "name": "Ann"},
            },
            "meta": {"served_by": state["name"]},
        }
    elif kind == "user":
        document = {"id": arg, "name": f"User {arg}", "email": f"{arg}@example.test"}
    elif kind == "similar":
        document = [
            {"id": f"{arg}-{n}", "title": f"Like {arg} #{n}", "draftText": "hidden"} for n in (1, 2)
        ]
    elif kind == "slow":
        await asyncio.sleep(float(arg))
        document = {"slow": True}
    elif kind in ("status", "text"):
        status = int(arg) if kind == "status" else 200
        body = problem_body(status) if kind == "status" else b"plain words, not JSON"
        content_type = b"application/problem+json" if kind == "status" else b"text/plain"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type)],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    elif kind == "big":
        document = {"filler": "x" * int(arg)}
    else:
        await _send_json(send, 404, {"unknown_fixture": rest})
        return
    await _send_json(send, 200, document)


def _openapi_document(name: str, variant: int) -> dict[str, Any]:
    """A small OpenAPI 3.1 document, as FastAPI writes them (for the gateway's /docs tests)."""

    def ref(schema: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{schema}"}

    def answer(schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
            "404": {
                "description": "Not found",
                "content": {"application/problem+json": {"schema": ref("Problem")}},
            },
        }

    item_id = {"name": "item_id", "in": "path", "required": True, "schema": {"type": "string"}}
    paths: dict[str, Any] = {
        "/v1/items": {
            "get": {
                "operationId": "listItems",
                "tags": ["items"],
                "responses": answer({"type": "array", "items": ref("Item")}),
            },
            "post": {
                "operationId": "createItem",
                "tags": ["items"],
                "security": [{"HTTPBearer": []}],
                "requestBody": {"content": {"application/json": {"schema": ref("NewItem")}}},
                "responses": answer(ref("Item")),
            },
        },
        "/v1/items/{item_id}": {
            "parameters": [item_id],
            "get": {
                "operationId": "getItem",
                "tags": ["items"],
                "security": [{"HTTPBearer": []}],
                "responses": answer(ref("Item")),
            },
            "delete": {"operationId": "deleteItem", "responses": {"204": {"description": "Gone"}}},
        },
        "/v1/users/{user_id}": {
            "get": {
                "operationId": "getUser",
                "parameters": [
                    {
                        "name": "user_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": answer(ref("Owner")),
            }
        },
        "/internal/stats": {
            "get": {"operationId": "internalStats", "responses": answer(ref("Stats"))}
        },
    }
    if variant >= 2:
        paths["/v1/items/{item_id}/history"] = {
            "get": {
                "operationId": "itemHistory",
                "parameters": [item_id],
                "responses": answer({"type": "array", "items": ref("Item")}),
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{name} service", "version": "1.0.0"},
        "tags": [{"name": "items", "description": "Things"}],
        "paths": paths,
        "components": {
            "schemas": {
                "Item": {
                    "title": f"{name} item",
                    "type": "object",
                    "properties": {"id": {"type": "string"}, "owner": ref("Owner")},
                },
                "NewItem": {"type": "object", "properties": {"label": {"type": "string"}}},
                "Owner": {"type": "object", "properties": {"name": {"type": "string"}}},
                "Problem": {"type": "object", "properties": {"code": {"type": "string"}}},
                "Stats": {"type": "object", "properties": {"secret": {"type": "integer"}}},
            },
            "securitySchemes": {"HTTPBearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    query = scope["query_string"].decode()
    if path == "/__stats":
        await _send_json(
            send, 200, {"connections": len(state["clients"]), "requests": state["requests"]}
        )
        return
    if path == "/__reset":
        state["clients"] = set()
        state["requests"] = 0
        await _send_json(send, 200, {"ok": True})
        return
    if path == "/__restore":
        state.update(clients=set(), requests=0, healthy=True, fail=0, openapi_variant=1)
        for opened, _ in gates.values():
            opened.set()
        gates.clear()
        await _send_json(send, 200, {"ok": True})
        return
    if path == "/__held":
        await _send_json(send, 200, {name: waiting[0] for name, (_, waiting) in gates.items()})
        return
    if path == "/__release":
        _gate(query.partition("=")[2])[0].set()
        await _send_json(send, 200, {"released": query.partition("=")[2]})
        return
    if path == "/__health":
        state["healthy"] = query != "ok=0"
        await _send_json(send, 200, {"healthy": state["healthy"]})
        return
    if path == "/__fail":
        state["fail"] = int(query.partition("=")[2] or 0)
        await _send_json(send, 200, {"fail": state["fail"]})
        return
    if path == "/readyz":
        await _send_json(send, 200 if state["healthy"] else 503, {"ready": state["healthy"]})
        return

    if path == "/openapi.json":
        await _send_json(send, 200, _openapi_document(state["name"], state["openapi_variant"]))
        return
    if path == "/__openapi":
        state["openapi_variant"] = int(query.partition("=")[2] or 1)
        await _send_json(send, 200, {"variant": state["openapi_variant"]})
        return

    if path.startswith("/__json/"):
        await _json_fixture(send, path[len("/__json/") :])
        return

    state["requests"] += 1
    state["clients"].add(tuple(scope["client"]))
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    control = {k: v for k, v in headers if k.startswith("x-test-")}
    if state["fail"]:
        await _read_body(receive)
        await _send_json(send, state["fail"], {"failing": state["name"]})
        return
    if "x-test-early" in control:
        first = await receive()
        await _send_json(send, 200, {"first_chunk": first.get("body", b"").decode("latin-1")})
        return
    body = await _read_body(receive)
    extra: list[tuple[bytes, bytes]] = []
    if "x-test-response-header" in control:
        name, _, value = control["x-test-response-header"].partition(":")
        extra.append((name.strip().encode(), value.strip().encode()))
    if "x-test-digest" in control:
        await _send_json(
            send, 200, {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        )
        return
    if "x-test-hold" in control:
        await _hold(control["x-test-hold"])
    if "x-test-sleep" in control:
        await asyncio.sleep(float(control["x-test-sleep"]))
    if "x-test-status" in control:
        payload = control.get("x-test-body", "").encode()
        content_type = control.get("x-test-content-type", "text/plain").encode()
        await send(
            {
                "type": "http.response.start",
                "status": int(control["x-test-status"]),
                "headers": [
                    (b"content-type", content_type),
                    (b"x-backend", state["name"].encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        return
    if "x-test-size" in control:
        size = int(control["x-test-size"])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(size).encode()),
                ],
            }
        )
        block = bytes(range(256)) * 256
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": sent < size})
        return
    if "x-test-chunks" in control:
        count = int(control["x-test-chunks"])
        size = int(control.get("x-test-chunk-size", "10"))
        delay = float(control.get("x-test-chunk-delay", "0"))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        for index in range(count):
            await send(
                {
                    "type": "http.response.body",
                    "body": (b"%d:" % index).ljust(size, b"x"),
                    "more_body": True,
                }
            )
            if delay:
                await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": b""})
        return
    if "x-test-die-midway" in control:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"1000")],
            }
        )
        await send({"type": "http.response.body", "body": b"x" * 100, "more_body": True})
        raise RuntimeError("dying midway, as asked")
    await _send_json(
        send,
        200,
        {
            "instance": state["name"],
            "method": scope["method"],
            "path": path,
            "raw_path": scope.get("raw_path", b"").decode("latin-1"),
            "query": query,
            "headers": headers,
            "body": body.decode("latin-1"),
            "body_length": len(body),
            "client": list(scope["client"]),
            # How many requests this process had served, this one included: changes per answer.
            "served": state["requests"],
        },
        extra,
    )


async def _raw_server(port: int, mode: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                if mode == "close":
                    break
                writer.write(b"this is not HTTP at all\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def _fast(port: int) -> None:
    import httptools
    import uvloop

    body = b'{"ok":true}'
    response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
        % (len(body), body)
    )

    class Fast(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            self.transport.write(response)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Fast, "127.0.0.1", port, backlog=2048)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="backend")
    parser.add_argument("--mode", default="echo", choices=("echo", "close", "garbage", "fast"))
    args = parser.parse_args()
    state["name"] = args.name
    if args.mode in ("close", "garbage"):
        asyncio.run(_raw_server(args.port, args.mode))
        return
    if args.mode == "fast":
        _fast(args.port)
        return
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        http="h11",
        loop="asyncio",
        log_level="warning",
        access_log=False,
        lifespan="on",
        # The gateway's X-Forwarded-For must not replace the real peer: tests count connections.
        proxy_headers=False,
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
