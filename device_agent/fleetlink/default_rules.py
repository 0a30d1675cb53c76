"""The alert rules every device ships with, and how ``agent.toml`` changes them.

``effective_rules(cfg)`` = the defaults (unless ``[alert_defaults] enabled = false``), minus the
codes in ``[alert_defaults] disable``, with any ``[[alerts]]`` rule of the same code replacing the
default, followed by the other ``[[alerts]]`` rules. The table is in docs/configuration.md.

Component alerts stay where the component sees the fault first and are not rules here:
``camera_unavailable`` / ``microphone_unavailable`` (P1), ``ns_over_budget`` (P2),
``speaker_unavailable`` (P2); the fleet raises ``offline`` (P1).
"""

from __future__ import annotations

from device_agent.config import AgentConfig, AlertRule

QOE = "media.viewers.sessions.*.qoe"


def default_rules(cfg: AgentConfig) -> list[AlertRule]:
    """The shipped rule set; thresholds that depend on the device (its frame rate) come from ``cfg``."""
    fps = float(cfg.camera.fps)
    return [
        # P1: the service is not there
        AlertRule(
            code="viewers_no_frames",
            metric=f"{QOE}.stall_ms",
            aggregate="min",
            op=">",
            threshold=10_000,
            clear_threshold=2_000,
            hold_s=0,
            severity="P1",
            message="connected viewers have rendered no frame for 10 s",
        ),
        AlertRule(
            code="crash_loop",
            metric="agent.starts_10min",
            op=">=",
            threshold=3,
            clear_threshold=3,
            hold_s=0,
            severity="P1",
            message="the agent started 3 or more times in 10 minutes",
        ),
        # P2: degraded
        AlertRule(
            code="freeze_rate_high",
            metric=f"{QOE}.freeze_rate",
            aggregate="max",
            window_s=60,
            window="mean",
            op=">",
            threshold=5.0,
            clear_threshold=2.0,
            hold_s=10,
            severity="P2",
            message="a viewer spends more than 5 % of the time frozen (mean over 60 s)",
        ),
        AlertRule(
            code="fps_low",
            metric=f"{QOE}.rendered_fps",
            aggregate="min",
            window_s=30,
            window="mean",
            op="<",
            threshold=fps / 2,
            clear_threshold=fps * 0.6,
            hold_s=10,
            severity="P2",
            message=f"a viewer renders below half the target frame rate ({fps / 2:g} fps, mean over 30 s)",
        ),
        AlertRule(
            code="av_sync_early",
            metric=f"{QOE}.av_sync_ms",
            aggregate="max",
            op=">",
            threshold=45,
            clear_threshold=35,
            hold_s=30,
            severity="P2",
            message="audio plays more than 45 ms before video for 30 s (ITU-R BT.1359)",
        ),
        AlertRule(
            code="av_sync_late",
            metric=f"{QOE}.av_sync_ms",
            aggregate="min",
            op="<",
            threshold=-125,
            clear_threshold=-100,
            hold_s=30,
            severity="P2",
            message="audio plays more than 125 ms after video for 30 s (ITU-R BT.1359)",
        ),
        AlertRule(
            code="loss_high",
            metric=f"{QOE}.loss_pct",
            aggregate="max",
            window_s=60,
            window="mean",
            op=">",
            threshold=5.0,
            clear_threshold=2.0,
            hold_s=10,
            severity="P2",
            message="a viewer loses more than 5 % of video packets (mean over 60 s)",
        ),
        # P3: single anomalies
        AlertRule(
            code="freeze_long",
            metric=f"{QOE}.freeze_longest_ms",
            aggregate="max",
            op=">",
            threshold=2_000,
            clear_threshold=2_000,
            hold_s=0,
            severity="P3",
            message="a viewer froze for more than 2 s",
        ),
        AlertRule(
            code="viewer_connect_failed",
            metric="media.viewers.failed_connects_10min",
            op=">",
            threshold=0,
            hold_s=0,
            severity="P3",
            message="a viewer failed to connect (ICE/DTLS or timeout)",
        ),
        AlertRule(
            code="audio_xrun_burst",
            metric="media.audio.source.xruns",
            window_s=60,
            window="increase",
            op=">=",
            threshold=5,
            clear_threshold=1,
            hold_s=0,
            severity="P3",
            message="5 or more audio capture xruns within a minute",
        ),
    ]


def effective_rules(cfg: AgentConfig) -> list[AlertRule]:
    """Defaults (minus disabled, overridden by same-code ``[[alerts]]``) then the other configured rules."""
    own = {rule.code: rule for rule in cfg.alerts}
    d = cfg.alert_defaults
    shipped = default_rules(cfg) if d.enabled else []
    rules = [own.pop(rule.code, rule) for rule in shipped if rule.code not in d.disable or rule.code in own]
    return rules + [rule for rule in cfg.alerts if rule.code in own]
