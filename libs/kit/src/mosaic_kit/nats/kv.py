"""The shared cache in a JetStream key-value bucket: a `mosaic_kit.cache.BaseCache` backend."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import struct
import time
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry

if TYPE_CHECKING:
    pass

from mosaic_kit.cache import BaseCache, new_generation

__all__ = ["NatsKvCache", "encode_kv_key"]


_KV_SAFE = frozenset(b"-_/abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


_KV_KEY_MAX = 240


_KV_PREFIX_KEPT = 160


_BUCKET_RE = re.compile(r"^[a-zA-Z0-9_-]+$")


# Value envelope: format version, absolute expiry (Unix ms). The expiry makes a TTL exact (to the
# ms) whatever the server supports; the server's per-message TTL only frees the space.
_ENVELOPE = struct.Struct(">BQ")


_ENVELOPE_VERSION = 1


def encode_kv_key(key: str) -> str:
    """`key` as a NATS KV key: injective, and at most `_KV_KEY_MAX` characters.

    Bytes outside `[-_/a-zA-Z0-9]` of the UTF-8 form become `=XX` (upper-case hex); `.` is
    escaped too, so a key is one subject token whatever it holds. A longer result keeps a
    readable head and ends with `=_` and the SHA-256 of the key: plain encodings never contain
    `=_`, so a hashed key cannot equal a plain one.
    """
    raw = key.encode()
    encoded = "".join(chr(b) if b in _KV_SAFE else f"={b:02X}" for b in raw)
    if len(encoded) <= _KV_KEY_MAX:
        return encoded
    head = encoded[:_KV_PREFIX_KEPT]
    cut = head.rfind("=", len(head) - 2)
    if cut != -1:  # do not leave half an escape in the readable head
        head = head[:cut]
    return f"{head}=_{hashlib.sha256(raw).hexdigest()}"


def _pack(value: bytes, ttl: float) -> bytes:
    expires = int((time.time() + ttl) * 1000)
    return _ENVELOPE.pack(_ENVELOPE_VERSION, expires) + value


def _unpack(raw: bytes | None) -> bytes | None:
    if raw is None or len(raw) < _ENVELOPE.size:
        return None
    version, expires = _ENVELOPE.unpack_from(raw)
    if version != _ENVELOPE_VERSION or expires <= time.time() * 1000:
        return None
    return raw[_ENVELOPE.size :]


class NatsKvCache(BaseCache):
    """A cache in a JetStream key-value bucket (memory storage, one value per key).

    The bucket is created on first use (or by `ensure()`) with `max_ttl` as its max age. When
    the server accepts per-message TTLs (NATS >= 2.11 and a bucket allowing them), each entry
    is published with its own TTL and deletions leave a marker that expires after a second;
    otherwise storage is reclaimed by the bucket's max age, and the expiry stored with each value
    still makes reads honour every entry's TTL. Keys are encoded with `encode_kv_key`.
    """

    backend = "nats-kv"
    outage_errors = (
        TimeoutError,
        OSError,
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.NoRespondersError,
        nats.errors.OutboundBufferLimitError,
        nats.errors.StaleConnectionError,
        nats.js.errors.ServiceUnavailableError,
    )

    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        namespace: str,
        max_ttl: float = 3600.0,
        *,
        read_timeout: float = 0.5,
        write_timeout: float = 2.0,
        cooldown: float = 1.0,
        max_bytes: int | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(
            namespace,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            cooldown=cooldown,
            registry=registry,
        )
        if not _BUCKET_RE.match(bucket):
            raise ValueError(f"invalid bucket name {bucket!r}: use letters, digits, '-', '_'")
        if max_ttl < 1:
            raise ValueError("max_ttl must be at least one second")
        self.bucket = bucket
        self._js = js
        self._max_ttl = max_ttl
        self._max_bytes = max_bytes
        self._subject_prefix = f"$KV.{bucket}."
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()
        self.per_key_ttl = False

    async def ensure(self) -> None:
        """Create the bucket (or bind to an existing one) and learn whether it has per-key TTL."""
        if self._bound():
            return
        async with self._lock:
            if self._bound():  # another task bound it while this one waited
                return
            try:
                kv = await self._js.create_key_value(
                    bucket=self.bucket,
                    description="Mosaic shared cache",
                    history=1,
                    ttl=self._max_ttl,
                    storage=StorageType.MEMORY,
                    max_bytes=self._max_bytes,
                )
            except nats.js.errors.BadRequestError:
                # It exists with another configuration (another max_ttl): use it as it is.
                kv = await self._js.key_value(self.bucket)
            info = await self._js.stream_info(f"KV_{self.bucket}")
            self.per_key_ttl = bool(info.config.allow_msg_ttl)
            if info.config.max_age:
                self._max_ttl = info.config.max_age
            self._kv = kv

    def _bound(self) -> bool:
        return self._kv is not None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            await self.ensure()
        assert self._kv is not None
        return self._kv

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(
            exc, nats.js.errors.NoStreamResponseError | nats.js.errors.BucketNotFoundError
        ):
            # The bucket was deleted under us: create it again on next use.
            self._kv = None

    def _ttl_header(self, ttl: float) -> dict[str, str]:
        if not self.per_key_ttl:
            return {}
        # The server takes whole seconds, at least one.
        return {"Nats-TTL": str(max(1, math.ceil(min(ttl, self._max_ttl))))}

    async def _raw_get(self, key: str) -> bytes | None:
        kv = await self._bucket()
        try:
            entry = await kv.get(encode_kv_key(key))
        except nats.js.errors.KeyNotFoundError:
            return None
        return _unpack(entry.value)

    async def _raw_set(self, key: str, value: bytes, ttl: float) -> None:
        await self._bucket()
        ttl = min(ttl, self._max_ttl)
        await self._js.publish(
            self._subject_prefix + encode_kv_key(key),
            _pack(value, ttl),
            timeout=self._read_timeout,
            headers=self._ttl_header(ttl) or None,
        )

    async def _raw_delete(self, keys: list[str]) -> None:
        await self._bucket()
        # A purge marker with a rollup drops every earlier value of the key.
        headers = {"KV-Operation": "PURGE", "Nats-Rollup": "sub", **self._ttl_header(1)}
        await asyncio.gather(
            *(
                self._js.publish(
                    self._subject_prefix + encode_kv_key(key),
                    b"",
                    timeout=self._write_timeout,
                    headers=dict(headers),
                )
                for key in dict.fromkeys(keys)
            )
        )

    async def _raw_get_generation(self, key: str) -> str:
        kv = await self._bucket()
        name = encode_kv_key(key)
        try:
            return _text(await kv.get(name))
        except nats.js.errors.KeyNotFoundError:
            pass
        generation = new_generation()
        try:
            # Create-if-absent, so that racing replicas agree on the first generation.
            await kv.create(name, generation.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return _text(await kv.get(name))
        return generation

    async def _raw_set_generation(self, key: str, generation: str) -> None:
        kv = await self._bucket()
        await kv.put(encode_kv_key(key), generation.encode())

    async def close(self) -> None:
        # The NATS connection belongs to the caller.
        self._kv = None


def _text(entry: KeyValue.Entry) -> str:
    return (entry.value or b"").decode(errors="replace")
