"""The diagnostics component: the allow-listed diagnostic commands, bulk transfers and remote views.

Commands (``dev/{id}/cmd/{name}`` through the fleet link): ``logs.pull``, ``diag.selftest``,
``diag.snapshot``, ``diag.netcheck``, ``diag.stats``. Each takes a JSON object whose keys are
declared (``PARAMS``) and checked by the dispatcher (unknown keys, wrong types, out of bounds ->
``bad_request``); nothing here runs a command line sent by
the fleet. Bulk data (gzipped logs, JPEGs) streams on ``dev/{id}/logs/{request}`` (``transfer.py``);
remote views are signaled on ``dev/{id}/rtc/{session}`` (``rtc_signal.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

from device_agent.agent import Agent
from device_agent.diag.frames import encode_jpeg, frame_stats
from device_agent.diag.logsource import LEVELS, LogQuery, collect_compressed
from device_agent.diag.netcheck import run_netcheck
from device_agent.diag.params import request_id
from device_agent.diag.ping import Pinger
from device_agent.diag.rtc_signal import RtcSignaling
from device_agent.diag.selftest import SelfTest
from device_agent.diag.stats import media_stats
from device_agent.diag.timeparse import parse_time
from device_agent.diag.transfer import TransferManager
from device_agent.diag.worker import run_in_worker_process
from device_agent.fleetlink.link import FleetLink
from device_agent.media.component import MediaComponent
from device_agent.params import Param
from device_agent.protocol import ErrorCode
from device_agent.registry import CommandError

log = logging.getLogger(__name__)

REQUEST = Param("request", "string", min_len=1, max_len=64)
# every command with its declared parameters (checked by the dispatcher; bad ones are `bad_request`)
PARAMS: dict[str, list[Param]] = {
    "logs.pull": [
        REQUEST,
        Param("since", ("string", "number")),
        Param("until", ("string", "number")),
        Param("level", "string", max_len=16),
        Param("grep", "string", max_len=1024),
        Param("max_bytes", "integer", low=0),
        Param("resend", "array", min_len=1, max_len=100_000),
    ],
    "diag.selftest": [Param("fleet_ts", "number")],
    "diag.snapshot": [
        REQUEST,
        Param("width", "integer", low=16, high=4096),
        Param("height", "integer", low=16, high=4096),
    ],
    "diag.netcheck": [],
    "diag.stats": [],
}
COMMANDS = tuple(PARAMS)


class DiagnosticsComponent:
    """Component ``diagnostics``; add it after the fleet link and the media component."""

    name = "diagnostics"

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.cfg = agent.config
        self.link: FleetLink | None = None
        self.media: MediaComponent | None = None
        self.pinger: Pinger | None = None
        self.transfers: TransferManager | None = None
        self.signaling: RtcSignaling | None = None
        for name, handler in zip(
            COMMANDS, (self.logs_pull, self.selftest, self.snapshot, self.netcheck, self.stats), strict=True
        ):
            agent.commands.register(name, handler, params=PARAMS[name], param_error=ErrorCode.BAD_REQUEST)

    async def start(self) -> None:
        self.link = cast("FleetLink | None", self.agent.get("fleet_link"))
        self.media = cast("MediaComponent | None", self.agent.get("media"))
        if self.link is None:
            log.info("diagnostics: no fleet link (mqtt.url empty): transfers and remote views unavailable")
            return
        d = self.cfg.diagnostics
        self.pinger = Pinger(self.link)
        self.transfers = TransferManager(
            self.link.publish,
            rate_bps=d.log_pull_rate_bps,
            chunk_bytes=d.chunk_bytes,
            keep_s=d.transfer_keep_s,
        )
        if self.media is not None and d.view_max_sessions > 0:
            self.signaling = RtcSignaling(
                self.link, self.media, max_sessions=d.view_max_sessions, max_seconds=d.view_max_s
            )

    async def stop(self) -> None:
        if self.signaling is not None:
            await self.signaling.close()
        if self.transfers is not None:
            await self.transfers.close()

    def healthy(self) -> bool:
        return True

    def _need_transfers(self) -> TransferManager:
        if self.transfers is None:
            raise CommandError(ErrorCode.UNAVAILABLE, "bulk transfers need the fleet link (mqtt.url)")
        return self.transfers

    # -- logs ----------------------------------------------------------------------------------
    async def logs_pull(self, params: dict[str, Any]) -> dict[str, Any]:
        """Collect, filter, redact and gzip logs and stream them; ``resend`` re-sends chosen chunks."""
        p = params
        transfers = self._need_transfers()
        rid = request_id(p)
        if p.get("resend") is not None:
            return self._resend(transfers, rid, p["resend"])
        d = self.cfg.diagnostics
        try:
            since, until = parse_time(p.get("since")), parse_time(p.get("until"))
            asked = p.get("max_bytes")
            cap = d.log_pull_max_bytes if asked is None else min(asked, d.log_pull_max_bytes)
            level = str(p.get("level") or "debug")
            if level.lower() not in LEVELS:
                raise ValueError(f"unknown level {level!r} (debug, info, warning, error, critical)")
            query = LogQuery(since=since, until=until, level=level, grep=p.get("grep") or "", max_bytes=cap)
        except ValueError as exc:
            raise CommandError(ErrorCode.BAD_REQUEST, str(exc)) from None
        if transfers.get(rid) is not None:
            raise CommandError(ErrorCode.CONFLICT, f"transfer {rid!r} exists; use a new request id or resend")
        started = time.monotonic()
        blob, bundle = await run_in_worker_process(
            collect_compressed, query, self.cfg.logging.file, d.journalctl, d.journald_unit
        )
        raw_bytes = bundle.sources.pop()["raw_bytes"]
        transfer = transfers.add(
            rid,
            "logs",
            blob,
            raw_bytes=raw_bytes,
            lines=bundle.lines,
            truncated=bundle.truncated,
            dropped_bytes=bundle.dropped_bytes,
            max_bytes=cap,
            redacted_lines=bundle.redacted_lines,
            sources=bundle.sources,
            rate_bps=d.log_pull_rate_bps,
            encoding="gzip",
            collect_s=round(time.monotonic() - started, 3),
        )
        transfers.start_send(transfer)
        log.info(
            "log pull %s: %d lines, %d bytes (%d gzipped)%s",
            rid,
            bundle.lines,
            raw_bytes,
            len(blob),
            ", truncated" if bundle.truncated else "",
        )
        return transfer.describe()

    def _resend(self, transfers: TransferManager, rid: str, seqs: list[Any]) -> dict[str, Any]:
        transfer = transfers.get(rid)
        if transfer is None:
            raise CommandError(
                ErrorCode.NOT_FOUND,
                f"no transfer {rid!r} (finished more than "
                f"{self.cfg.diagnostics.transfer_keep_s:.0f} s ago or never started)",
            )
        if not seqs or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < transfer.total for s in seqs
        ):
            raise CommandError(ErrorCode.BAD_REQUEST, f"resend needs chunk numbers 0..{transfer.total - 1}")
        transfers.start_send(transfer, [int(s) for s in seqs])
        return {**transfer.describe(), "resending": sorted(set(seqs))}

    # -- actions -------------------------------------------------------------------------------
    async def selftest(self, params: dict[str, Any]) -> dict[str, Any]:
        return await SelfTest(self.cfg, self.media, self.pinger).run(fleet_ts=params.get("fleet_ts"))

    async def netcheck(self, params: dict[str, Any]) -> dict[str, Any]:
        return await run_netcheck(self.cfg, self.pinger)

    async def snapshot(self, params: dict[str, Any]) -> dict[str, Any]:
        """A JPEG of the camera's latest frame at ``diagnostics.snapshot_width/height``, sent in chunks."""
        p = params
        d = self.cfg.diagnostics
        width, height = p.get("width") or d.snapshot_width, p.get("height") or d.snapshot_height
        if not (16 <= width <= 4096 and 16 <= height <= 4096 and width % 2 == 0 and height % 2 == 0):
            raise CommandError(ErrorCode.BAD_REQUEST, "width and height must be even numbers 16..4096")
        transfers = self._need_transfers()
        rid = request_id(p)
        if transfers.get(rid) is not None:
            raise CommandError(ErrorCode.CONFLICT, f"transfer {rid!r} exists; use a new request id")
        captured = await self.media.capture_frame() if self.media is not None else None
        if captured is None:
            raise CommandError(ErrorCode.CAMERA_UNAVAILABLE, "no camera frame from the media pipeline")
        jpeg = await asyncio.to_thread(encode_jpeg, captured.frame, width, height, d.snapshot_quality)
        stats = await asyncio.to_thread(frame_stats, captured.frame)
        transfer = transfers.add(
            rid,
            "snapshot",
            jpeg,
            width=width,
            height=height,
            content_type="image/jpeg",
            frame_index=captured.index,
            frame=stats,
            age_ms=round((time.monotonic() - captured.timestamp) * 1000, 1),
        )
        transfers.start_send(transfer)
        return transfer.describe()

    async def stats(self, params: dict[str, Any]) -> dict[str, Any]:
        return media_stats(self.agent.health.sample(), self.cfg.camera.fps)
