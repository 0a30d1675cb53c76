"""WebRTC signaling over MQTT for ``fleetctl view``: ``dev/{id}/rtc/{session}``.

Messages are JSON with ``"from"``: the fleet sends ``{"type": "offer", "sdp": ...}`` and later
``{"type": "bye"}``; the device answers ``{"type": "answer", "sdp": ..., "max_seconds": N}`` or
``{"type": "error", "code", "message"}`` and says ``{"type": "bye", "reason": ...}`` when it ends a
session (time limit, shutdown). Sessions come from ``MediaComponent.open_viewer_session``: the
same fan-out and shared encoder as WHEP viewers (no per-viewer encoding).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from device_agent.fleetlink.link import FleetLink
from device_agent.media.component import MediaComponent
from device_agent.protocol import Leaf

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CloseFn = Callable[[], Awaitable[None]]


@dataclass
class _Session:
    close: CloseFn
    opened: float
    timer: asyncio.Task[None] | None = None


class RtcSignaling:
    """Answers offers on ``rtc/+``, enforces a session limit and a per-session time limit."""

    def __init__(
        self, link: FleetLink, media: MediaComponent, *, max_sessions: int = 2, max_seconds: float = 600.0
    ) -> None:
        self.link = link
        self.media = media
        self.max_sessions = max_sessions
        self.max_seconds = max_seconds
        self.sessions: dict[str, _Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        link.add_handler(Leaf.RTC_FILTER, self._on_message)

    def _on_message(self, subtopic: str, payload: bytes) -> None:
        sid = subtopic.rsplit("/", 1)[-1]
        task = asyncio.get_running_loop().create_task(self._handle(sid, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, sid: str, message: dict[str, Any]) -> None:
        try:
            await self.link.publish(Leaf.rtc(sid), json.dumps({**message, "from": "device"}).encode())
        except (TimeoutError, ConnectionError) as exc:
            log.warning("remote view %s: signaling message lost: %s", sid, exc)

    async def _handle(self, sid: str, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            await self._send(
                sid, {"type": "error", "code": "bad_json", "message": "signaling message is not JSON"}
            )
            return
        if isinstance(msg, dict) and msg.get("from") == "device":
            return  # our own messages come back on the same topic
        if not isinstance(msg, dict):
            await self._send(
                sid, {"type": "error", "code": "bad_request", "message": "expected a JSON object"}
            )
            return
        kind = msg.get("type")
        if not SESSION_ID.match(sid):
            log.warning("remote view: refusing session id %r", sid)
        elif kind == "offer":
            await self._offer(sid, msg)
        elif kind == "bye":
            await self.end(sid, notify=False)
        else:
            await self._send(
                sid,
                {
                    "type": "error",
                    "code": "bad_request",
                    "message": f"unknown signaling type {kind!r} (offer, bye)",
                },
            )

    async def _offer(self, sid: str, msg: dict[str, Any]) -> None:
        sdp = msg.get("sdp")
        if not isinstance(sdp, str) or "m=video" not in sdp:
            await self._send(
                sid, {"type": "error", "code": "bad_request", "message": "offer needs an SDP with video"}
            )
            return
        if sid in self.sessions:
            await self._send(sid, {"type": "error", "code": "conflict", "message": "session already open"})
            return
        if len(self.sessions) >= self.max_sessions:
            await self._send(
                sid,
                {
                    "type": "error",
                    "code": "busy",
                    "message": f"{self.max_sessions} remote views already open "
                    "(diagnostics.view_max_sessions)",
                },
            )
            return
        try:
            answer, close = await self.media.open_viewer_session(sdp, sid)
        except Exception as exc:
            log.exception("remote view %s failed", sid)
            await self._send(
                sid, {"type": "error", "code": "session_failed", "message": f"{type(exc).__name__}: {exc}"}
            )
            return
        session = _Session(close, time.monotonic())
        self.sessions[sid] = session
        session.timer = asyncio.get_running_loop().create_task(self._expire(sid))
        log.info("remote view %s opened", sid)
        await self._send(sid, {"type": "answer", "sdp": answer, "max_seconds": self.max_seconds})

    async def _expire(self, sid: str) -> None:
        await asyncio.sleep(self.max_seconds)
        await self.end(sid, notify=True, reason="time limit (diagnostics.view_max_s)")

    async def end(self, sid: str, notify: bool, reason: str = "") -> None:
        """Close one remote view; ``notify`` tells the fleet side with a ``bye``."""
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        if session.timer is not None and session.timer is not asyncio.current_task():
            session.timer.cancel()
        try:
            await session.close()
        except Exception:
            log.exception("closing remote view %s", sid)
        log.info("remote view %s closed after %.1f s", sid, time.monotonic() - session.opened)
        if notify:
            await self._send(sid, {"type": "bye", "reason": reason})

    async def close(self) -> None:
        for sid in list(self.sessions):
            await self.end(sid, notify=True, reason="agent stopping")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
