"""Chunked, rate-capped transfers of a blob (a gzipped log, a JPEG) over ``logs/{request}``.

Wire format of each message: one JSON header line, ``\\n``, then the chunk's bytes. Headers carry
``request``, ``kind``, ``seq`` (0-based), ``total`` (chunks, at least 1), ``size`` and ``sha256`` of
the whole blob. After each pass an ``{"type": "end", "sent": [...]}`` message (no body) tells the
receiver it can ask for the seqs it still misses. Finished transfers stay resendable for
``keep_s`` so a lost chunk costs one chunk, not the whole pull.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from device_agent.protocol import Leaf

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]


def encode_chunk(header: dict[str, Any], body: bytes = b"") -> bytes:
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + body


def decode_chunk(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """Split a transfer message; raises ValueError when it is not one."""
    head, sep, body = bytes(payload).partition(b"\n")
    if not sep:
        raise ValueError("transfer message without header line")
    header = json.loads(head)
    if not isinstance(header, dict):
        raise ValueError("transfer header is not an object")
    return header, body


class RateLimiter:
    """Token bucket shared by every transfer of the device: ``rate_bps`` bytes/s, burst ``burst`` bytes."""

    def __init__(self, rate_bps: int, burst: int) -> None:
        self.rate = rate_bps
        self.burst = max(burst, 1)
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= min(n, self.burst):
                    self._tokens -= n
                    return
                await asyncio.sleep((min(n, self.burst) - self._tokens) / self.rate)


@dataclass
class Transfer:
    request: str
    kind: str
    blob: bytes
    chunk_bytes: int
    meta: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.monotonic)
    sha256: str = ""

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.blob).hexdigest()

    @property
    def total(self) -> int:
        return max(1, math.ceil(len(self.blob) / self.chunk_bytes))

    def chunk(self, seq: int) -> bytes:
        body = self.blob[seq * self.chunk_bytes : (seq + 1) * self.chunk_bytes]
        header = {
            "type": "chunk",
            "request": self.request,
            "kind": self.kind,
            "seq": seq,
            "total": self.total,
            "size": len(self.blob),
            "sha256": self.sha256,
            "offset": seq * self.chunk_bytes,
        }
        return encode_chunk(header, body)

    def describe(self) -> dict[str, Any]:
        return {
            "request": self.request,
            "kind": self.kind,
            "total": self.total,
            "bytes": len(self.blob),
            "sha256": self.sha256,
            "chunk_bytes": self.chunk_bytes,
            **self.meta,
        }


class TransferManager:
    """Keeps recent transfers and sends (or re-sends) their chunks, one pass at a time per request."""

    def __init__(self, publish: Publish, *, rate_bps: int, chunk_bytes: int, keep_s: float) -> None:
        self._publish = publish
        self.chunk_bytes = chunk_bytes
        self.keep_s = keep_s
        self.limiter = RateLimiter(rate_bps, burst=chunk_bytes)
        self._transfers: dict[str, Transfer] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.bytes_sent = 0

    def add(self, request: str, kind: str, blob: bytes, **meta: Any) -> Transfer:
        self._expire()
        transfer = Transfer(request, kind, blob, self.chunk_bytes, meta)
        self._transfers[request] = transfer
        return transfer

    def get(self, request: str) -> Transfer | None:
        self._expire()
        return self._transfers.get(request)

    def start_send(self, transfer: Transfer, seqs: list[int] | None = None) -> None:
        """Send ``seqs`` (all when None) in a background task."""
        task = asyncio.create_task(self._send(transfer, seqs), name=f"transfer-{transfer.request}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, transfer: Transfer, seqs: list[int] | None) -> None:
        lock = self._locks.setdefault(transfer.request, asyncio.Lock())
        todo = list(range(transfer.total)) if seqs is None else sorted(set(seqs))
        topic = Leaf.logs(transfer.request)
        try:
            async with lock:
                for seq in todo:
                    payload = transfer.chunk(seq)
                    await self.limiter.take(len(payload))
                    await self._publish(topic, payload)
                    self.bytes_sent += len(payload)
                await self._publish(
                    topic,
                    encode_chunk(
                        {"type": "end", "request": transfer.request, "total": transfer.total, "sent": todo}
                    ),
                )
        except Exception:
            log.exception("transfer %s failed", transfer.request)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, t in self._transfers.items() if now - t.created > self.keep_s]:
            self._transfers.pop(key, None)
            self._locks.pop(key, None)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
