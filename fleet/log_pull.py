"""Fleet side of diagnostics transfers: ask a device for logs (or a snapshot), reassemble, verify, write.

The device streams chunks on ``dev/{id}/logs/{request}`` (format: ``device_agent/diag/transfer.py``).
Here: subscribe first (waiting for the SUBACK), send the command with :class:`FleetClient`, collect
chunks; after the device's ``end`` marker (or when chunks stop arriving) re-request only the missing
``seq`` numbers; check the sha256 of the whole; write the file atomically.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from device_agent import protocol
from device_agent.diag.transfer import decode_chunk
from fleet.client import FleetClient
from ota.atomic import write_atomic


class TransferError(Exception):
    """A transfer could not be completed or verified (``code`` machine-readable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Progress:
    """A one-line progress bar: bytes and chunks received."""

    def __init__(self, stream: TextIO | None = sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self._last = 0.0

    def update(
        self, got_bytes: int, total_bytes: int, got_chunks: int, total_chunks: int, force: bool = False
    ) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        frac = got_bytes / total_bytes if total_bytes else 1.0
        bar = "#" * int(frac * self.width)
        self.stream.write(
            f"\r[{bar:<{self.width}}] {human(got_bytes)}/{human(total_bytes)} "
            f"{got_chunks}/{total_chunks} chunks"
        )
        self.stream.flush()

    def done(self) -> None:
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()


def human(n: float) -> str:
    """1536 -> '1.5 kB'."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@dataclass
class Reassembler:
    """Chunks of one transfer, by seq; knows what is missing and checks the sha256 of the whole."""

    request: str
    total: int | None = None
    size: int | None = None
    sha256: str = ""
    chunks: dict[int, bytes] = field(default_factory=dict)
    received_bytes: int = 0
    duplicates: int = 0
    rejected: int = 0

    def add(self, header: dict[str, Any], body: bytes) -> bool:
        """Store a chunk; False (and counted) when it does not belong to this transfer."""
        try:
            seq, total, size, sha = (
                int(header["seq"]),
                int(header["total"]),
                int(header["size"]),
                str(header["sha256"]),
            )
        except (KeyError, TypeError, ValueError):
            self.rejected += 1
            return False
        if header.get("request") != self.request or not 0 <= seq < total:
            self.rejected += 1
            return False
        if self.total is None:
            self.total, self.size, self.sha256 = total, size, sha
        elif (total, size, sha) != (self.total, self.size, self.sha256):
            self.rejected += 1
            return False
        if seq in self.chunks:
            self.duplicates += 1
        else:
            self.received_bytes += len(body)
        self.chunks[seq] = body
        return True

    def missing(self) -> list[int]:
        return [] if self.total is None else [s for s in range(self.total) if s not in self.chunks]

    def complete(self) -> bool:
        return self.total is not None and not self.missing()

    def assemble(self) -> bytes:
        """The whole blob; raises TransferError when incomplete or when the sha256 does not match."""
        if not self.complete():
            raise TransferError("incomplete", f"missing chunks {self.missing()[:20]}")
        blob = b"".join(self.chunks[s] for s in range(self.total or 0))
        digest = hashlib.sha256(blob).hexdigest()
        if len(blob) != self.size or digest != self.sha256:
            raise TransferError("checksum", f"sha256 mismatch: got {digest}, device sent {self.sha256}")
        return blob


@dataclass
class TransferResult:
    request: str
    info: dict[str, Any]  # the device's description: total, bytes, sha256 and what it collected
    data: bytes
    path: Path | None
    rounds: int
    resent: list[int]
    seconds: float


async def fetch_transfer(
    client: FleetClient,
    device: str,
    command: str,
    params: dict[str, Any],
    *,
    idle_timeout: float = 15.0,
    max_rounds: int = 5,
    progress: Progress | None = None,
    chunk_filter: Callable[[dict[str, Any]], bool] | None = None,
    command_timeout: float = 120.0,
) -> TransferResult:
    """Run ``command`` (``logs.pull`` or ``diag.snapshot``) and collect the blob it streams.

    ``chunk_filter`` returning False discards a received message (tests simulate a lost chunk).
    """
    rid = params.get("request") or uuid.uuid4().hex[:16]
    params = {**params, "request": rid}
    topic = protocol.logs(device, rid)
    queue: asyncio.Queue[tuple[dict[str, Any], bytes]] = asyncio.Queue()

    def on_chunk(msg: mqtt.MQTTMessage) -> None:
        try:
            header, body = decode_chunk(bytes(msg.payload))
        except ValueError:
            return
        queue.put_nowait((header, body))

    started = time.monotonic()
    await client.conn.subscribe_wait(topic, on_chunk)
    try:
        info = await client.send_command(device, command, params, timeout=command_timeout)
        asm = Reassembler(rid)
        rounds, resent = 1, []
        while True:
            try:
                header, body = await asyncio.wait_for(queue.get(), idle_timeout)
            except TimeoutError:
                header, body = {"type": "idle"}, b""
            if chunk_filter is not None and header.get("type") != "idle" and not chunk_filter(header):
                continue
            if header.get("type") == "chunk":
                asm.add(header, body)
                if progress:
                    progress.update(
                        asm.received_bytes, int(info["bytes"]), len(asm.chunks), int(info["total"])
                    )
                if asm.complete():
                    break
                continue
            # an end-of-pass marker or silence: ask again for exactly what is missing
            if asm.total is None:
                asm.total, asm.size, asm.sha256 = int(info["total"]), int(info["bytes"]), str(info["sha256"])
            missing = asm.missing()
            if not missing:
                break
            if header.get("type") == "end" and set(missing) - set(header.get("sent", [])):
                continue  # that pass did not include them (an earlier resend): wait for its own marker
            if rounds >= max_rounds:
                raise TransferError(
                    "incomplete", f"{len(missing)} chunks still missing after {rounds} rounds"
                )
            rounds += 1
            resent += missing
            await client.send_command(
                device, command, {"request": rid, "resend": missing}, timeout=command_timeout
            )
        if progress:
            progress.update(asm.received_bytes, asm.size or 0, len(asm.chunks), asm.total or 0, force=True)
            progress.done()
        blob = asm.assemble()
        return TransferResult(rid, info, blob, None, rounds, resent, time.monotonic() - started)
    finally:
        client.conn.unsubscribe(topic)


async def pull_logs(
    client: FleetClient,
    device: str,
    *,
    since: str | float | None = None,
    until: str | float | None = None,
    level: str | None = None,
    grep: str | None = None,
    max_bytes: int | None = None,
    out: Path | None = None,
    progress: Progress | None = None,
    **kwargs: Any,
) -> TransferResult:
    """Pull a device's logs; writes gzip when ``out`` ends in ``.gz``, plain text otherwise."""
    params: dict[str, Any] = {
        k: v
        for k, v in {
            "since": since,
            "until": until,
            "level": level,
            "grep": grep,
            "max_bytes": max_bytes,
        }.items()
        if v is not None
    }
    result = await fetch_transfer(client, device, "logs.pull", params, progress=progress, **kwargs)
    if out is not None:
        data = result.data if out.suffix == ".gz" else gzip.decompress(result.data)
        await asyncio.to_thread(write_atomic, out, data)
        result.path = out
    return result
