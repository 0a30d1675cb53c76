"""What viewers experience: their receiver reports, validated, and the per-session QoE figures.

A viewer (the page's ``viewer.js``, the aiortc helpers in ``device_agent.media.qoe_client``) opens
a data channel labelled ``qoe`` in its offer and sends a compact JSON report every few seconds
(``REPORT_FIELDS``). Those reports are untrusted input:

- at most ``MAX_REPORT_BYTES`` per message and one accepted message per ``MIN_INTERVAL_S`` (2/s);
  more is dropped unparsed and counted;
- one schema: an object; unknown keys dropped; every known key a finite number inside its range
  (else that key is dropped and counted), ``client`` a short token;
- rates (freeze rate, loss) are computed from counter *deltas* over the agent's own clock, each
  clamped to what is physically possible (frozen time <= elapsed time), so a lying viewer can only
  distort its own session's figures, and never to a non-finite or out-of-range value.

Definitions (the same in every client): a *video freeze* is a gap of more than 500 ms between two
rendered frames while the frame rate before it was at least 5 fps; an *audio freeze* is a
playout interruption (concealment) longer than 200 ms (Chromium's ``interruptionCount``, 150 ms,
where available). A/V sync is audio playout position minus video playout position, both in the
sender's clock through its RTCP sender reports: positive = audio early (ITU-R BT.1359: detectable
beyond +45 ms early or -125 ms late).
"""

from __future__ import annotations

import bisect
import collections
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

CHANNEL_LABEL = "qoe"
MAX_REPORT_BYTES = 2048
MIN_INTERVAL_S = 0.5
REPORT_INTERVAL_S = 2.0  # what the shipped clients send at
SCHEMA_VERSION = 1
FREEZE_GAP_S = 0.5
FREEZE_MIN_FPS = 5.0
AUDIO_FREEZE_GAP_S = 0.2
HISTORY = 512  # per-session samples kept for the session record (min, mean, p95)

# key -> (low, high): every report field is a number in this closed range (counters are cumulative).
REPORT_FIELDS: dict[str, tuple[float, float]] = {
    "v": (1, 1000),
    "frames": (0, 1e10),  # rendered video frames since the session started
    "fps": (0, 1000),  # rendered frames per second over the client's last interval
    "freezes": (0, 1e7),  # video freezes (definition above), cumulative
    "freeze_ms": (0, 1e10),  # time frozen, cumulative
    "stall_ms": (0, 1e10),  # time since the last rendered frame
    "freeze_max_ms": (0, 1e10),  # longest freeze since the previous report (an ongoing one included)
    "ttff_ms": (0, 1e7),  # offer sent -> first rendered frame
    "jb_ms": (0, 1e5),  # mean jitter buffer delay over the interval
    "decode_ms": (0, 1e5),  # mean decode time per frame over the interval
    "kbps": (0, 1e7),  # received video bitrate over the interval
    "recv": (0, 1e12),  # video packets received, cumulative
    "lost": (0, 1e12),  # video packets lost, cumulative
    "nack": (0, 1e10),  # NACKs sent, cumulative
    "pli": (0, 1e10),  # PLIs sent, cumulative
    "w": (0, 16384),
    "h": (0, 16384),
    "conceal_pct": (0, 100),  # audio samples concealed over the interval, %
    "afreezes": (0, 1e7),  # audio freezes, cumulative
    "afreeze_ms": (0, 1e10),
    "av_ms": (-1e5, 1e5),  # audio playout minus video playout (sender clock); + = audio early
    "play_ms": (-1e5, 1e5),  # sender send time -> render, without the one-way network delay
    "rtt_ms": (0, 1e5),  # the client's own round-trip estimate
}
# fields that describe the last interval only: not carried over from an older report
INSTANT_FIELDS = (
    "fps",
    "stall_ms",
    "freeze_max_ms",
    "jb_ms",
    "decode_ms",
    "kbps",
    "av_ms",
    "play_ms",
    "rtt_ms",
    "conceal_pct",
)
_CLIENT = re.compile(r"[a-z0-9][a-z0-9._-]{0,23}")


class QoeReportError(ValueError):
    """A receiver report that is not a JSON object of the schema (the reason says what)."""


@dataclass
class QoeReport:
    """One parsed report: the valid known fields, and how many were dropped."""

    values: dict[str, float]
    client: str = ""
    dropped: int = 0


def _number(value: Any, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return number if math.isfinite(number) and low <= number <= high else None


def parse_report(data: bytes | str) -> QoeReport:
    """Parse one data-channel message; raises ``QoeReportError`` for anything but a schema object."""
    if isinstance(data, str):
        if len(data) > MAX_REPORT_BYTES:  # characters >= bytes / 4: cheap first bound
            raise QoeReportError(f"report larger than {MAX_REPORT_BYTES} bytes")
        raw = data.encode("utf-8", "replace")
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        raise QoeReportError(f"report must be text or bytes, not {type(data).__name__}")
    if len(raw) > MAX_REPORT_BYTES:
        raise QoeReportError(f"report larger than {MAX_REPORT_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise QoeReportError(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise QoeReportError(f"report must be a JSON object, not {type(body).__name__}")
    values: dict[str, float] = {}
    dropped = 0
    client = ""
    for key, value in body.items():
        if key == "client":
            if isinstance(value, str) and _CLIENT.fullmatch(value):
                client = value
            else:
                dropped += 1
            continue
        bounds = REPORT_FIELDS.get(key)
        if bounds is None:
            continue  # unknown keys: dropped silently (newer clients)
        number = _number(value, *bounds)
        if number is None:
            dropped += 1
        else:
            values[key] = number
    return QoeReport(values, client, dropped)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class ViewerQoe:
    """One session's receiver reports, turned into figures the agent can trust to be sane."""

    clock: Any = time.monotonic
    wall: Any = time.time
    last: dict[str, float] = field(default_factory=dict)
    client: str = ""
    reports: int = 0
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    reported_at: float | None = None  # wall clock of the last accepted report
    _received_at: float | None = None  # monotonic
    _last_attempt: float | None = None
    freeze_rate: float | None = None  # % of the last report interval spent frozen
    loss_pct: float | None = None  # video packet loss over the last report interval
    fps_history: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=HISTORY))
    av_history: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=HISTORY))
    kbps_history: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=HISTORY))
    channel_open: bool = False
    _frozen_s: float = 0.0  # frozen time accumulated from clamped deltas (for the session record)
    _observed_s: float = 0.0

    def accept(self, data: Any) -> bool:
        """Take one message from the viewer; False when it was dropped (counted in ``rejected``)."""
        now = self.clock()
        if self._last_attempt is not None and now - self._last_attempt < MIN_INTERVAL_S:
            self.rejected["rate"] += 1
            return False
        self._last_attempt = now
        try:
            report = parse_report(data)
        except QoeReportError:
            self.rejected["invalid"] += 1
            return False
        if report.dropped:
            self.rejected["fields"] += report.dropped
        self._update(report, now)
        return True

    def _delta(self, key: str, new: dict[str, float]) -> float | None:
        """Counter increase since the previous report; a counter that went back counts as a reset."""
        if key not in new or key not in self.last:
            return None
        return max(0.0, new[key] - self.last[key])

    def _update(self, report: QoeReport, now: float) -> None:
        new = report.values
        dt = None if self._received_at is None else now - self._received_at
        if dt is not None and dt > 0:
            frozen = self._delta("freeze_ms", new)
            if frozen is not None:
                frozen_s = min(frozen / 1000.0, dt)
                self.freeze_rate = 100.0 * frozen_s / dt
                self._frozen_s += frozen_s
                self._observed_s += dt
            lost, got = self._delta("lost", new), self._delta("recv", new)
            if lost is not None and got is not None:
                self.loss_pct = 100.0 * lost / (lost + got) if lost + got > 0 else 0.0
        elif "freeze_ms" in new and self.freeze_rate is None:
            self.freeze_rate = 0.0
        merged = {**self.last, **new}
        # the fields of one instant are replaced, not kept from an older report
        for key in INSTANT_FIELDS:
            if key not in new:
                merged.pop(key, None)
        self.last = merged
        if report.client:
            self.client = report.client
        self._received_at = now
        self.reported_at = self.wall()
        self.reports += 1
        if "fps" in new:
            self.fps_history.append(new["fps"])
        if "av_ms" in new:
            self.av_history.append(new["av_ms"])
        if "kbps" in new:
            self.kbps_history.append(new["kbps"])

    def stall_ms(self) -> float | None:
        """Time since the viewer last rendered a frame, extrapolated while it was already stalled."""
        stall = self.last.get("stall_ms")
        if stall is None or self._received_at is None:
            return None
        if stall >= 1000.0:  # stalled when it reported: still counting now
            stall += (self.clock() - self._received_at) * 1000.0
        return stall

    def figures(self, rtt_ms: float | None = None, sender_delay_ms: float | None = None) -> dict[str, Any]:
        """The ``qoe`` object of a session in ``/api/stats`` and telemetry (docs/protocol.md).

        ``e2e_delay_ms`` = the viewer's ``play_ms`` (the sender's clock as the viewer last heard it
        minus the capture time of the frame on screen: the agent's sender reports are dated by
        capture, ``capture_clock.py``) + the one-way network delay (half ``rtt_ms``, the device's
        RTT from receiver reports, else the viewer's own) + ``sender_delay_ms``, for a sender whose
        reports are dated by send time (none of the agent's: 0).
        """
        last = self.last
        play = last.get("play_ms")
        rtt = rtt_ms if rtt_ms is not None else last.get("rtt_ms")
        e2e = None
        if play is not None:
            e2e = max(0.0, play + (rtt or 0.0) / 2 + (sender_delay_ms or 0.0))
        lost = last.get("lost")
        return {
            "client": self.client or None,
            "rendered_fps": _r(last.get("fps")),
            "frames": None if "frames" not in last else int(last["frames"]),
            "freeze_count": None if "freezes" not in last else int(last["freezes"]),
            "freeze_ms": None if "freeze_ms" not in last else int(last["freeze_ms"]),
            "freeze_rate": _r(self.freeze_rate, 2),
            "stall_ms": None if self.stall_ms() is None else int(self.stall_ms() or 0),
            "freeze_longest_ms": None if "freeze_max_ms" not in last else int(last["freeze_max_ms"]),
            "ttff_ms": _r(last.get("ttff_ms")),
            "jitter_buffer_ms": _r(last.get("jb_ms")),
            "decode_ms": _r(last.get("decode_ms"), 2),
            "av_sync_ms": _r(last.get("av_ms")),
            "e2e_delay_ms": _r(e2e),
            "received_kbps": _r(last.get("kbps")),
            "packets_lost": None if lost is None else int(lost),
            "loss_pct": _r(self.loss_pct, 2),
            "nack_sent": None if "nack" not in last else int(last["nack"]),
            "pli_sent": None if "pli" not in last else int(last["pli"]),
            "width": None if "w" not in last else int(last["w"]),
            "height": None if "h" not in last else int(last["h"]),
            "audio_concealed_pct": _r(last.get("conceal_pct"), 2),
            "audio_freeze_count": None if "afreezes" not in last else int(last["afreezes"]),
            "audio_freeze_ms": None if "afreeze_ms" not in last else int(last["afreeze_ms"]),
            "reports": self.reports,
            "rejected": sum(self.rejected.values()),
            "reported_at": _r(self.reported_at, 3),
        }

    def summary(self) -> dict[str, Any]:
        """Whole-session aggregates for the session record: fps mean/min, freeze rate, A/V p95."""
        fps = list(self.fps_history)
        av = [abs(v) for v in self.av_history]
        kbps = list(self.kbps_history)
        return {
            "freeze_rate": _r(100.0 * self._frozen_s / self._observed_s, 2) if self._observed_s > 0 else None,
            "fps_mean": _r(sum(fps) / len(fps)) if fps else None,
            "fps_min": _r(min(fps)) if fps else None,
            "kbps_mean": _r(sum(kbps) / len(kbps)) if kbps else None,
            "av_sync_p95_ms": _r(percentile(av, 0.95)),
            "reports": self.reports,
        }


class FreezeCounter:
    """Rendered frames -> frame rate, freezes and frozen time (the module's definitions).

    ``frame(t)`` for every rendered frame (``t`` in seconds, any monotonic clock). A gap above
    ``gap_s`` counts as one freeze of the gap's length when the rate over the second before it was
    at least ``min_fps`` (``min_fps=0`` for audio). The same rules run in ``viewer.js``.
    """

    def __init__(self, gap_s: float = FREEZE_GAP_S, min_fps: float = FREEZE_MIN_FPS) -> None:
        self.gap_s = gap_s
        self.min_fps = min_fps
        self.frames = 0
        self.freezes = 0
        self.frozen_s = 0.0
        self.longest_s = 0.0  # longest freeze since the last ``take_longest``
        self.first: float | None = None
        self.last: float | None = None
        self._recent: collections.deque[float] = collections.deque(maxlen=256)

    def frame(self, t: float) -> None:
        if self.last is not None:
            gap = t - self.last
            if gap > self.gap_s:
                before = sum(1 for x in self._recent if x > self.last - 1.0)
                if before >= self.min_fps:
                    self.freezes += 1
                    self.frozen_s += gap
                    self.longest_s = max(self.longest_s, gap)
        else:
            self.first = t
        self.frames += 1
        self.last = t
        self._recent.append(t)

    def fps(self, now: float, window_s: float = 2.0) -> float:
        """Frames rendered per second over the last ``window_s`` (or since the first frame, if later)."""
        if self.first is None:
            return 0.0
        span = max(0.25, min(window_s, now - self.first))
        return sum(1 for x in self._recent if x > now - span) / span

    def take_longest(self, now: float) -> float:
        """Longest freeze since the previous call, counting a gap still open now; resets."""
        ongoing = self.stall_s(now)
        longest = max(self.longest_s, ongoing if ongoing > self.gap_s else 0.0)
        self.longest_s = 0.0
        return longest

    def stall_s(self, now: float) -> float:
        """Time since the last frame (0 before the first)."""
        return 0.0 if self.last is None else max(0.0, now - self.last)


def accept_channel(qoe: ViewerQoe, channel: Any) -> bool:
    """Take a viewer's data channel (aiortc ``RTCDataChannel``): the first ``qoe`` one feeds ``qoe``.

    Any other channel, or a second one, is closed and counted: a viewer gets one report stream.
    """
    if getattr(channel, "label", None) != CHANNEL_LABEL or qoe.channel_open:
        qoe.rejected["channel"] += 1
        channel.close()
        return False
    qoe.channel_open = True
    channel.on("message", qoe.accept)
    return True


class RecentEvents:
    """Times of recent events (e.g. failed connects) for "how many in the last N seconds"."""

    def __init__(self, horizon_s: float = 600.0, limit: int = 1024, clock: Any = time.monotonic) -> None:
        self.horizon_s = horizon_s
        self.clock = clock
        self.times: collections.deque[float] = collections.deque(maxlen=limit)

    def add(self) -> None:
        self.times.append(self.clock())

    def count(self, within_s: float) -> int:
        cut = self.clock() - min(within_s, self.horizon_s)
        ordered = list(self.times)
        return len(ordered) - bisect.bisect_left(ordered, cut)
