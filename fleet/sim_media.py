"""A simulated device's media health that tells the truth about its shape.

The section goes through the agent's own builder (``device_agent.media.health_schema.media_section``)
and each simulated viewer's ``qoe`` through a real ``ViewerQoe`` fed simulated receiver reports
(the wire format of ``device_agent.media.qoe``), so a simulated fleet exercises the same keys, the
same validation and the same alert rules as real devices.

Faults (``FAULTS``), each given to a share of the fleet by ``fleetctl simulate --fault NAME=SHARE``:
``freeze`` (viewers freeze 0.6-3 s in a third of the intervals), ``lossy`` (8 % loss, 18 fps,
frequent short freezes), ``camera`` (the camera is gone: no frames, P1 ``camera_unavailable``),
``crashloop`` (the agent restarted 4 times in 10 minutes), ``avdrift`` (the A/V offset drifts
by +3 ms per second).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from device_agent.media.health_schema import media_section
from device_agent.media.qoe import ViewerQoe

FAULTS = ("freeze", "lossy", "camera", "crashloop", "avdrift")


@dataclass
class _Viewer:
    sid: str
    qoe: ViewerQoe
    age: float = 0.0
    frames: float = 0.0
    freezes: int = 0
    freeze_ms: float = 0.0
    recv: float = 0.0
    lost: float = 0.0
    nack: int = 0
    pli: int = 0
    stall_ms: float = 0.0


@dataclass
class SimulatedMedia:
    """``media`` health for one simulated device; ``step_s`` of simulated time pass per sample."""

    rng: random.Random
    step_s: float = 30.0
    fps: float = 30.0
    faults: frozenset[str] = frozenset()
    t: float = 0.0
    viewers: list[_Viewer] = field(default_factory=list)
    av_ms: float = 0.0
    audio_drift_ms: float = 0.0  # the simulated sound card's clock against the system clock
    xruns: int = 0
    packets: int = 0

    def __post_init__(self) -> None:
        self.av_ms = self.rng.gauss(-20, 8)
        for i in range(self.rng.choice((1, 1, 2))):
            self.viewers.append(
                _Viewer(f"s{i + 1}", ViewerQoe(clock=lambda: self.t, wall=lambda: 1.7e9 + self.t))
            )

    def _report(self, v: _Viewer, step: float) -> dict[str, Any]:
        r, f = self.rng, self.faults
        camera = "camera" in f
        fps = 0.0 if camera else (18.0 if "lossy" in f else self.fps) - abs(r.gauss(0, 0.3))
        loss = 0.08 if "lossy" in f else abs(r.gauss(0.001, 0.0005))
        longest = 0.0
        if camera:
            v.stall_ms += step * 1000
        else:
            v.stall_ms = abs(r.gauss(20, 8))
            if ("freeze" in f and r.random() < 0.33) or ("lossy" in f and r.random() < 0.5):
                longest = r.uniform(0.6, 3.0) if "freeze" in f else r.uniform(0.55, 1.2)
                v.freezes += 1
                v.freeze_ms += longest * 1000
        packets = 0.0 if camera else fps * step * 1.2
        v.recv += packets * (1 - loss)
        v.lost += packets * loss
        v.nack += int(packets * loss)
        v.frames += fps * step
        if "avdrift" in f:  # a microphone clock 0.3 % slow, as if sender reports were not re-dated
            self.av_ms += 3.0 * step
            self.audio_drift_ms -= 3.0 * step
        return {
            "v": 1,
            "client": "simulated",
            "frames": int(v.frames),
            "fps": round(max(0.0, fps), 1),
            "freezes": v.freezes,
            "freeze_ms": round(v.freeze_ms),
            "stall_ms": round(v.stall_ms),
            "freeze_max_ms": round(max(longest * 1000, v.stall_ms if v.stall_ms > 500 else 0)),
            "ttff_ms": 180.0,
            "jb_ms": round(abs(r.gauss(25, 5)), 1),
            "decode_ms": round(abs(r.gauss(2, 0.3)), 2),
            "kbps": 0.0 if camera else round(abs(r.gauss(1800, 50)), 1),
            "recv": int(v.recv),
            "lost": int(v.lost),
            "nack": v.nack,
            "pli": v.pli,
            "w": 1280,
            "h": 720,
            "conceal_pct": round(abs(r.gauss(0.2, 0.1)), 2),
            "afreezes": 0,
            "afreeze_ms": 0,
            "av_ms": round(self.av_ms + r.gauss(0, 3), 1),
            "play_ms": round(abs(r.gauss(40, 5)), 1),
            "rtt_ms": round(abs(r.gauss(35, 5)), 1),
        }

    def _source_sync(self) -> dict[str, float | None]:
        r = self.rng
        video, audio = round(r.gauss(0, 0.5), 1), round(self.audio_drift_ms + r.gauss(0, 1), 1)
        return {
            "av_skew_ms": round(video - audio, 1),
            "video_drift_ms": video,
            "audio_drift_ms": audio,
            "video_sr_shift_ms": round(abs(r.gauss(8, 2)), 1),
            "audio_sr_shift_ms": round(abs(r.gauss(45, 3)), 1),
        }

    def __call__(self) -> dict[str, Any]:
        r = self.rng
        step = self.step_s
        self.t += step
        camera = "camera" in self.faults
        if r.random() < 0.05:
            self.xruns += 1
        sessions = []
        for v in self.viewers:
            v.age += step
            v.qoe.accept(json.dumps(self._report(v, step)))
            rtt = round(abs(r.gauss(35, 5)), 1)
            sessions.append(
                {
                    "id": v.sid,
                    "kind": "whep",
                    "state": "connected",
                    "age_s": round(v.age, 1),
                    "connect_ms": 120.0,
                    "pli": v.pli,
                    "fir": 0,
                    "nack": v.nack,
                    "packets": int(v.recv + v.lost),
                    "bytes": int((v.recv + v.lost) * 1100),
                    "first_keyframe_ms": 60.0,
                    "rtt_ms": rtt,
                    "jitter": abs(int(r.gauss(400, 80))),
                    "packets_lost": int(v.lost),
                    "bitrate_bps": 0 if camera else int(1.8e6 + r.gauss(0, 5e4)),
                    "fps": 0.0 if camera else round(self.fps - abs(r.gauss(0, 0.3)), 2),
                    "qoe": v.qoe.figures(rtt, 12.0),
                    "source_sync": self._source_sync(),
                }
            )
        self.packets += 0 if camera else int(self.fps * step)
        fps = 0.0 if camera else round(self.fps - abs(r.gauss(0, 0.2)), 2)
        return media_section(
            {
                "encoder": {"backend": "simulated", "reason": "fleet simulation"},
                "video": {
                    "fps": fps,
                    "frame_interval_jitter_ms": round(abs(r.gauss(1.5, 0.4)), 2),
                    "encode_ms": round(abs(r.gauss(4, 1)), 2),
                    "camera_errors": 1 if camera else 0,
                    "last_error": "simulated camera loss" if camera else None,
                    "camera": {"backend": "simulated", "state": "unavailable" if camera else "running"},
                    "encoder": {"backend": "simulated"},
                    "capture_to_packet": {
                        "p50_ms": round(abs(r.gauss(12, 2)), 2),
                        "p95_ms": round(abs(r.gauss(25, 4)), 2),
                    },
                },
                "fanout": {
                    "viewers": len(sessions),
                    "packets": self.packets,
                    "idrs_forced": len(sessions),
                    "target_bitrate": 1_800_000,
                    "output_fps": fps,
                    "output_interval_jitter_ms": round(abs(r.gauss(2.0, 0.5)), 2),
                    "capture_to_output_p50_ms": round(abs(r.gauss(8, 1)), 2),
                    "capture_to_output_p95_ms": round(abs(r.gauss(15, 3)), 2),
                },
                "audio": {
                    "source": {
                        "backend": "simulated",
                        "state": "running",
                        "xruns": self.xruns,
                        "level_rms_dbfs": round(-35 + r.gauss(0, 3), 1),
                    },
                    "level_dbfs": round(-35 + r.gauss(0, 3), 1),
                    "chunks": int(self.t * 100),
                    "packets": int(self.t * 50),
                    "viewers": len(sessions),
                    "stage_errors": 0,
                    "stage": {"enabled": True, "fell_back": False, "rtf": round(abs(r.gauss(0.18, 0.01)), 3)},
                },
                "talkback": None,
                "viewers": {
                    "active": len(sessions),
                    "max": 8,
                    "ended": {},
                    "failed_connects_10min": 0,
                    "sessions": sessions,
                },
                "web": {"port": 8080},
            }
        )


def assign_faults(n: int, shares: dict[str, float], seed: int = 0) -> list[frozenset[str]]:
    """Which devices get which faults: each fault on round(share x n) devices, drawn with ``seed``."""
    unknown = set(shares) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown fault {sorted(unknown)[0]!r} (known: {', '.join(FAULTS)})")
    rng = random.Random(seed)
    out: list[set[str]] = [set() for _ in range(n)]
    for name, share in shares.items():
        if not 0 <= share <= 1:
            raise ValueError(f"fault {name}: share {share} is not within 0..1")
        for i in rng.sample(range(n), round(share * n)):
            out[i].add(name)
    return [frozenset(s) for s in out]
