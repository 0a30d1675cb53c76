"""``diag.stats``: the live media session stats (the ``media`` health provider) with pass/warn/fail flags."""

from __future__ import annotations

from typing import Any

from device_agent.diag.results import FAIL, PASS, WARN, Check, report

LOSS_WARN = 0.05  # fraction of packets lost (RTCP receiver reports)
RTT_WARN_MS = 300.0


def media_stats(sample: dict[str, Any], camera_fps: int) -> dict[str, Any]:
    """The structured ``diag.stats`` result for one health sample; ``media`` carries the raw figures."""
    media = sample.get("media")
    if not isinstance(media, dict):
        return {
            **report("stats", [Check("media", FAIL, "the media component reports no stats")]),
            "media": None,
        }
    if "error" in media:
        return {
            **report("stats", [Check("media", FAIL, f"media stats failed: {media['error']}")]),
            "media": media,
        }
    return {**report("stats", stats_checks(media, camera_fps)), "media": media}


def stats_checks(media: dict[str, Any], camera_fps: int) -> list[Check]:
    """Frame rate and jitter of the capture, the audio stage and every viewer session's loss and RTT."""
    checks: list[Check] = []
    video = media.get("video") or {}
    enc = (media.get("encoder") or {}).get("backend")
    fps = float(video.get("fps") or 0.0)
    jitter = video.get("frame_interval_jitter_ms")
    vval = {
        "encoder": enc,
        "fps": fps,
        "frame_interval_jitter_ms": jitter,
        "encode_ms": video.get("encode_ms"),
        "capture_to_packet": video.get("capture_to_packet"),
    }
    if fps <= 0:
        checks.append(Check("video", FAIL, f"no frames ({enc})", vval))
    elif fps < 0.8 * camera_fps:
        checks.append(
            Check("video", WARN, f"{fps:.1f} fps of {camera_fps} ({enc}), jitter {jitter} ms", vval)
        )
    else:
        checks.append(Check("video", PASS, f"{fps:.1f} fps ({enc}), frame jitter {jitter} ms", vval))
    audio = media.get("audio")
    if isinstance(audio, dict):
        stage = audio.get("stage") or {}
        aval = {"level_dbfs": audio.get("level_dbfs"), "ns": stage}
        if stage.get("fell_back"):
            checks.append(Check("audio", WARN, f"noise suppression bypassed (RTF {stage.get('rtf')})", aval))
        else:
            ns = f"NS RTF {stage.get('rtf')}" if stage.get("enabled") else "NS off"
            checks.append(Check("audio", PASS, f"level {audio.get('level_dbfs')} dBFS, {ns}", aval))
    viewers = media.get("viewers") or {}
    sessions = viewers.get("sessions") or []
    if not sessions:
        checks.append(Check("viewers", PASS, "no viewer connected", {"active": 0}))
    for s in sessions:
        sid = s.get("id", "?")
        lost, rtt = s.get("fraction_lost"), s.get("rtt_ms")
        detail = (
            f"{s.get('kind')} {s.get('state')}: rtt {rtt} ms, loss {lost}, "
            f"{s.get('bitrate_bps')} bit/s, {s.get('fps')} fps"
        )
        bad = (isinstance(lost, (int, float)) and lost > LOSS_WARN) or (
            isinstance(rtt, (int, float)) and rtt > RTT_WARN_MS
        )
        checks.append(Check(f"viewer.{sid}", WARN if bad else PASS, detail, s))
    return checks
