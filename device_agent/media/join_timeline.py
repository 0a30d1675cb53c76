"""A viewer's join, step by step, on the agent's side: where the time to the first frame goes.

Each session keeps a ``JoinTimeline``: the first time each step happened (``time.monotonic``), from
the offer's arrival to the last packet of the first IDR leaving the pacer. ``figures()`` gives them
in ms after the offer, with the offer's wall-clock time (``offer_unix_ms``) so that a benchmark can
line them up with the page's own timeline (``viewer.timeline`` in web/viewer.js) on one machine.

Steps (``STEPS``): ``offer`` (POST received), ``answer`` (answer SDP ready), ``ice_check`` (the
browser's first connectivity check arrived), ``ice_nominated`` (its first check with
USE-CANDIDATE), ``ice_connected`` (aioice finished: a nominated pair succeeded), ``dtls_connected``,
``subscribed`` (aiortc's sender asked the track for its first packet), ``first_packet`` (the first
IDR handed to aiortc), ``idr_start`` / ``idr_end`` (its first and last RTP packet sent, after
pacing).

``watch_ice_checks`` reports each incoming check (the session marks ``ice_check`` and
``ice_nominated`` and, at the first one, has the fan-out prepare the viewer's first IDR). It is a
private seam: aioice's ``Connection.request_received``, on the instance behind aiortc's
``RTCIceTransport._connection`` (guarded by tests/test_aiortc_seams.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection

STEPS = (
    "offer",
    "answer",
    "ice_check",
    "ice_nominated",
    "ice_connected",
    "dtls_connected",
    "subscribed",
    "first_packet",
    "idr_start",
    "idr_end",
)
ICE_SEAM = "request_received"  # aioice Connection.request_received(message, addr, protocol)


class JoinTimeline:
    """The first time of each step of one viewer's join (see the module docstring)."""

    def __init__(
        self,
        at: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self.wall_offset = wall() - clock()  # wall-clock = monotonic + this
        self.marks: dict[str, float] = {}
        self.mark("offer", at)

    def mark(self, step: str, at: float | None = None) -> None:
        """``step`` happened at ``at`` (now if None); only its first time is kept."""
        if step not in self.marks:
            self.marks[step] = self._clock() if at is None else at

    def figures(self) -> dict[str, float | None]:
        """ms after the offer for every step (None: not yet), and ``offer_unix_ms``."""
        start = self.marks["offer"]
        out: dict[str, float | None] = {"offer_unix_ms": round((start + self.wall_offset) * 1000, 1)}
        for step in STEPS[1:]:
            at = self.marks.get(step)
            out[step] = None if at is None else round((at - start) * 1000, 1)
        return out


def watch_ice_checks(pc: RTCPeerConnection, on_check: Callable[[bool], None]) -> bool:
    """Call ``on_check(use_candidate)`` for every connectivity check reaching ``pc``'s ICE transports.

    Call after ``setRemoteDescription`` (the transports exist). Returns False when the seam is not
    there (then nothing is reported; the join itself is not affected).
    """
    connections: list[Any] = []
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        connection = getattr(getattr(dtls, "transport", None), "_connection", None)
        if connection is not None and connection not in connections:
            connections.append(connection)
    for connection in connections:
        original = getattr(connection, ICE_SEAM, None)
        if original is None:
            return False

        def received(message: Any, addr: Any, protocol: Any, _original: Any = original) -> None:
            on_check("USE-CANDIDATE" in getattr(message, "attributes", {}))
            _original(message, addr, protocol)

        setattr(connection, ICE_SEAM, received)
    return bool(connections)
