"""One record per viewer session, sent as a ``media.session`` event when the session ends.

The record joins the device's view (connect time, first keyframe, bitrate sent, RTT) with what the
viewer reported (``qoe.py``: rendered fps, freezes, loss, A/V sync, delay), and scores it:

``mos`` is a MOS-like score (1..4.5), not a calibrated MOS. It follows the E-model's shape
(ITU-T G.107): a rating R = 100 minus impairments, mapped to MOS with G.107's curve
``MOS = 1 + 0.035 R + 7e-6 R (R - 60) (100 - R)``. The impairments:

- freezes: ``I_f = min(60, 4 x freeze_rate_pct + 2 x freezes per minute)``;
- frame rate: ``I_r = 30 x max(0, 1 - fps_mean / target_fps)``;
- delay (G.107's delay impairment on the end-to-end delay d, ms):
  ``I_d = 0.024 d + 0.11 (d - 177.3) if d > 177.3``;
- loss (after retransmission and concealment): ``I_l = min(40, 2.5 x loss_pct)``.

A clean session scores about 4.5; 5 % of the time frozen 3.9; 10 fps of 30 4.0; 600 ms delay 2.0. Missing
figures (a viewer that sent no reports) impair nothing and ``mos`` is then None.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

EVENT_TYPE = "media.session"
OnSessionEnd = Callable[[Any, str], None]  # (ViewerSession, end reason): called once per ended session


def r_to_mos(r: float) -> float:
    """ITU-T G.107's R -> MOS mapping."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return max(1.0, 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r))  # the curve dips below 1 for R < 6.5


def mos_score(
    freeze_rate: float | None,
    freezes_per_min: float | None,
    fps_mean: float | None,
    target_fps: float,
    delay_ms: float | None,
    loss_pct: float | None,
) -> float | None:
    """The MOS-like score of the module docstring; None when the viewer reported nothing."""
    if freeze_rate is None and fps_mean is None:
        return None
    i_f = min(60.0, 4 * (freeze_rate or 0.0) + 2 * (freezes_per_min or 0.0))
    i_r = 30 * max(0.0, 1 - fps_mean / target_fps) if fps_mean is not None and target_fps > 0 else 0.0
    d = delay_ms or 0.0
    i_d = 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)
    i_l = min(40.0, 2.5 * (loss_pct or 0.0))
    return round(r_to_mos(100 - i_f - i_r - i_d - i_l), 2)


def session_record(session: Any, reason: str, target_fps: float, now: float | None = None) -> dict[str, Any]:
    """The ``media.session`` event fields for an ended ``ViewerSession`` (``sessions.py``)."""
    now = time.monotonic() if now is None else now
    duration = max(0.0, now - session.created)
    qoe = session.qoe
    figures = qoe.figures(session.last_stats.get("rtt_ms"))  # SRs dated by capture (capture_clock.py)
    summary = qoe.summary()
    video = session.video.stats()
    connected = session.connected_at is not None
    viewed = max(0.0, now - session.connected_at) if connected else 0.0
    last = qoe.last
    lost, recv = last.get("lost"), last.get("recv")
    loss_pct = round(100 * lost / (lost + recv), 2) if lost is not None and recv and lost + recv > 0 else None
    freezes = figures["freeze_count"]
    per_min = freezes / (viewed / 60) if freezes is not None and viewed >= 1 else None
    sent_kbps = round(video["bytes"] * 8 / 1000 / viewed, 1) if viewed >= 1 else None
    record = {
        "session": session.id,
        "transport": session.kind,
        "client": figures["client"],
        "reason": reason,
        "started": round(time.time() - duration, 3),
        "duration_s": round(duration, 1),
        "connected": connected,
        "connect_ms": None if not connected else round((session.connected_at - session.created) * 1000, 1),
        "ttff_ms": figures["ttff_ms"] if figures["ttff_ms"] is not None else video.get("first_keyframe_ms"),
        "freeze_count": freezes,
        "freeze_ms": figures["freeze_ms"],
        "freeze_rate": summary["freeze_rate"],
        "fps_mean": summary["fps_mean"],
        "fps_min": summary["fps_min"],
        "kbps": summary["kbps_mean"] if summary["kbps_mean"] is not None else sent_kbps,
        "sent_kbps": sent_kbps,
        "loss_pct": loss_pct,
        "rtt_ms": session.last_stats.get("rtt_ms"),
        "av_sync_p95_ms": summary["av_sync_p95_ms"],
        "e2e_delay_ms": figures["e2e_delay_ms"],
        "reports": qoe.reports,
        "rejected": figures["rejected"],
    }
    record["mos"] = mos_score(
        summary["freeze_rate"], per_min, summary["fps_mean"], target_fps, figures["e2e_delay_ms"], loss_pct
    )
    return record


def session_event_sink(events: Any, target_fps: float) -> OnSessionEnd:
    """``SessionManager.on_end`` that emits each record through ``agent.events`` (spooled to the fleet)."""

    def ended(session: Any, reason: str) -> None:
        events.emit(EVENT_TYPE, **session_record(session, reason, target_fps))

    return ended
