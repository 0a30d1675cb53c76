"""Bundle download over HTTP(S): Range resume, a bandwidth cap, a disk check, bounded retries.

The partial file (``NAME-<sha16>.EXT.part``, named by the expected sha256) survives restarts:
the next attempt for the same bundle asks for ``Range: bytes=N-`` and appends, so a cut at 50 %
re-downloads only the missing half (plus at most one chunk in flight). Partials of any other
bundle are deleted first, and a 206 whose ``Content-Range`` does not start at the resume offset
is not appended. Before a byte is written the free space must cover the missing bytes
plus a reserve; a download that keeps failing gives up after ``retries`` attempts instead of
retrying forever, and a file with the wrong size or sha256 is deleted, never retried.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from ota.bundle import sha256_file
from ota.errors import OtaError

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
Progress = Callable[[int, int, float | None], None]  # bytes done, total, ETA seconds


@dataclass
class DownloadResult:
    path: Path
    size: int
    bytes_fetched: int  # bytes that crossed the network in this call (resume saves the rest)
    attempts: int
    seconds: float


class RateLimiter:
    """Token bucket: at most ``rate_bps`` bytes per second on average (0: no cap)."""

    def __init__(self, rate_bps: int) -> None:
        self.rate = rate_bps
        self.start = time.monotonic()
        self.sent = 0

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        self.sent += n
        ahead = self.sent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            await asyncio.sleep(ahead)


class _ShortResponse(Exception):
    """The server closed the body before the announced size: retried with backoff."""


def part_path(dest: Path, sha256: str) -> Path:
    """The partial file for ``dest`` with this expected digest: ``bundle-<sha16>.tar.part``."""
    dest = Path(dest)
    return dest.with_name(f"{dest.stem}-{sha256[:16]}{dest.suffix}.part")


def _content_range_start(value: str | None) -> int | None:
    """First byte of a ``Content-Range: bytes N-M/T`` header, or None if absent or unparsable."""
    if not value:
        return None
    unit, _, rest = value.strip().partition(" ")
    first = rest.split("-", 1)[0].strip()
    if unit.lower() != "bytes" or not first.isdigit():
        return None
    return int(first)


def check_space(directory: Path, needed: int, reserve: int) -> None:
    free = shutil.disk_usage(directory).free
    if free - needed < reserve:
        raise OtaError(
            "no_space",
            f"{directory}: {free} bytes free, the bundle needs {needed} more and {reserve} must stay free",
        )


async def download(
    url: str,
    dest: Path,
    size: int,
    sha256: str,
    rate_bps: int = 0,
    retries: int = 5,
    reserve_bytes: int = 64 << 20,
    progress: Progress | None = None,
    retry_delay_s: float = 1.0,
    timeout_s: float = 60.0,
    ca_file: str = "",
) -> DownloadResult:
    """Fetch ``url`` into ``dest`` (resuming ``dest.part``), checked against ``size`` and ``sha256``.

    HTTPS servers are checked against the system CAs, or only against ``ca_file`` when given.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest, sha256)
    for stale in dest.parent.glob("*.part"):  # another bundle's partial must never be resumed
        if stale != part:
            log.info("removing stale partial download %s", stale.name)
            stale.unlink(missing_ok=True)
    if part.exists() and part.stat().st_size > size:
        part.unlink()
    limiter = RateLimiter(rate_bps)
    fetched, attempts, started = 0, 0, time.monotonic()
    last_error = ""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    ssl_ctx = ssl.create_default_context(cafile=ca_file) if ca_file else None
    connector = aiohttp.TCPConnector(ssl=ssl_ctx or True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        while True:
            have = part.stat().st_size if part.exists() else 0
            if have == size:
                break
            if attempts > retries:
                raise OtaError("download_failed", f"gave up after {attempts} attempts: {last_error}")
            attempts += 1
            check_space(dest.parent, size - have, reserve_bytes)
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                async with session.get(url, headers=headers) as resp:
                    if resp.status == 200 and have:
                        log.info("server ignored Range; starting over")
                        have = 0
                    elif (
                        resp.status == 206 and _content_range_start(resp.headers.get("Content-Range")) != have
                    ):
                        start = _content_range_start(resp.headers.get("Content-Range"))
                        last_error = (
                            f"206 with Content-Range {resp.headers.get('Content-Range')!r}, "
                            f"expected it to start at {have}"
                        )
                        log.warning("%s; starting over from 0", last_error)
                        part.unlink(missing_ok=True)
                        if start != 0:
                            continue  # this body is not what we asked for: ask again without Range
                        have = 0
                    elif resp.status not in (200, 206):
                        if 400 <= resp.status < 500 and resp.status != 429:
                            raise OtaError("download_failed", f"{url}: HTTP {resp.status}")
                        raise aiohttp.ClientResponseError(resp.request_info, resp.history, status=resp.status)
                    with open(part, "r+b" if have else "wb") as f:
                        f.seek(have)
                        f.truncate()
                        done = have
                        async for chunk in resp.content.iter_chunked(CHUNK):
                            if done + len(chunk) > size:
                                raise OtaError(
                                    "download_failed", f"{url} is larger than the expected {size} bytes"
                                )
                            f.write(chunk)
                            done += len(chunk)
                            fetched += len(chunk)
                            await limiter.take(len(chunk))
                            if progress:
                                elapsed = time.monotonic() - started
                                rate = fetched / elapsed if elapsed > 0 else 0
                                progress(done, size, (size - done) / rate if rate else None)
                        f.flush()
                        await asyncio.to_thread(os.fsync, f.fileno())
                    if done < size:
                        raise _ShortResponse(f"short response: the body ended at byte {done} of {size}")
            except OtaError:
                raise
            except aiohttp.ClientConnectorCertificateError as exc:  # retrying will not fix a certificate
                raise OtaError(
                    "tls", f"{url}: server certificate not trusted: {exc.certificate_error}"
                ) from None
            except (TimeoutError, aiohttp.ClientError, ConnectionError, _ShortResponse) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning("download attempt %d of %s failed: %s", attempts, url, last_error)
                await asyncio.sleep(min(retry_delay_s * 2 ** (attempts - 1), 60))
    digest = await asyncio.to_thread(sha256_file, part)
    if digest != sha256:
        part.unlink()
        raise OtaError(
            "bad_digest", f"downloaded file sha256 {digest[:16]}... does not match {sha256[:16]}..."
        )
    os.replace(part, dest)
    return DownloadResult(dest, size, fetched, attempts, time.monotonic() - started)
