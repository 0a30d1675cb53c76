"""The rollout health gate: updated devices against the not-yet-updated ones over one soak window.

Figures per device from what the service already stored (telemetry and events received within
the window): crash loop (``agent.starts_10min >= 3`` in any sample), P1/P2 alerts raised (alert
events), viewers' ``freeze_rate`` and ``rendered_fps`` (mean over ``media.viewers.sessions[*].qoe``,
when the telemetry has them) and the noise suppression real-time factor
(``media.audio.stage.rtf``). Group figures are means over the group's devices; a check whose figure
is missing on either side is skipped, and with no baseline devices (the last wave) the gate passes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from statistics import fmean
from typing import Any

import sqlalchemy as sa

from fleet.ota.jobs import GatePolicy
from fleet.store import Store

CRASH_LOOP_STARTS = 3  # the agent's default crash_loop rule (device_agent/fleetlink/default_rules.py)


@dataclass
class GroupFigures:
    devices: int = 0  # devices of the group with at least min_samples samples in the window
    alerts_per_device: float | None = None
    crashloop_share: float | None = None
    freeze_rate: float | None = None
    rendered_fps: float | None = None
    ns_rtf: float | None = None


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def sample_figures(health: dict[str, Any]) -> dict[str, Any]:
    """One telemetry sample's figures: crash loop flag and per-sample means (None when absent)."""
    agent = _obj(health.get("agent"))
    media = _obj(health.get("media"))
    viewers = _obj(media.get("viewers"))
    raw = viewers.get("sessions")
    sessions: list[Any] = raw if isinstance(raw, list) else []
    qoes = [s["qoe"] for s in sessions if isinstance(s, dict) and isinstance(s.get("qoe"), dict)]
    freeze = [x for x in (_num(q.get("freeze_rate")) for q in qoes) if x is not None]
    fps = [x for x in (_num(q.get("rendered_fps")) for q in qoes) if x is not None]
    rtf = _num(_obj(_obj(media.get("audio")).get("stage")).get("rtf"))
    starts = _num(agent.get("starts_10min"))
    return {
        "crashloop": starts is not None and starts >= CRASH_LOOP_STARTS,
        "freeze_rate": fmean(freeze) if freeze else None,
        "rendered_fps": fmean(fps) if fps else None,
        "ns_rtf": rtf,
    }


def group_figures(
    store: Store, conn: sa.Connection, devices: list[str], t0: float, t1: float, min_samples: int = 1
) -> GroupFigures:
    """Figures of ``devices`` from telemetry and alert events received within [t0, t1]."""
    if not devices:
        return GroupFigures()
    t, e = store.telemetry.c, store.events.c
    per: dict[str, list[dict[str, Any]]] = {}
    alerts: dict[str, int] = {}
    for i in range(0, len(devices), 500):
        chunk = devices[i : i + 500]
        for dev, payload in conn.execute(
            sa.select(t.device_id, t.payload).where(
                t.device_id.in_(chunk), t.received >= t0, t.received <= t1
            )
        ):
            try:
                health = json.loads(payload).get("health") or {}
            except (ValueError, AttributeError):
                continue
            if isinstance(health, dict):
                per.setdefault(dev, []).append(sample_figures(health))
        for dev, payload in conn.execute(
            sa.select(e.device_id, e.payload).where(
                e.device_id.in_(chunk), e.type == "alert", e.received >= t0, e.received <= t1
            )
        ):
            try:
                ev = json.loads(payload)
            except ValueError:
                continue
            if ev.get("active", True) and str(ev.get("severity", "")) in ("P1", "P2"):
                alerts[dev] = alerts.get(dev, 0) + 1
    counted = [d for d in devices if len(per.get(d, ())) >= min_samples]
    if not counted:
        return GroupFigures()

    def mean_of(key: str) -> float | None:
        vals = [fmean(v) for v in ([s[key] for s in per[d] if s[key] is not None] for d in counted) if v]
        return fmean(vals) if vals else None

    return GroupFigures(
        devices=len(counted),
        alerts_per_device=sum(alerts.get(d, 0) for d in counted) / len(counted),
        crashloop_share=sum(any(s["crashloop"] for s in per[d]) for d in counted) / len(counted),
        freeze_rate=mean_of("freeze_rate"),
        rendered_fps=mean_of("rendered_fps"),
        ns_rtf=mean_of("ns_rtf"),
    )


def compare(updated: GroupFigures, baseline: GroupFigures, gate: GatePolicy) -> list[str]:
    """The regressions of ``updated`` against ``baseline`` beyond ``gate``'s thresholds (empty: pass)."""
    if not updated.devices or not baseline.devices:
        return []
    out = []

    def diff(name: str, limit: float, unit: str = "") -> None:
        u, b = getattr(updated, name), getattr(baseline, name)
        if u is not None and b is not None and u - b > limit:
            out.append(f"{name} {u:.2f}{unit} vs {b:.2f}{unit} (+{u - b:.2f} > {limit:g})")

    diff("alerts_per_device", gate.max_alert_increase)
    diff("crashloop_share", gate.max_crashloop_increase)
    diff("freeze_rate", gate.max_freeze_rate_increase, "%")
    u, b = updated.rendered_fps, baseline.rendered_fps
    if u is not None and b is not None and b > 0 and u / b < gate.min_fps_ratio:
        out.append(f"rendered_fps {u:.1f} vs {b:.1f} (ratio {u / b:.2f} < {gate.min_fps_ratio:g})")
    u, b = updated.ns_rtf, baseline.ns_rtf
    if u is not None and b is not None and b > 0 and u / b > gate.max_ns_rtf_ratio:
        out.append(f"ns_rtf {u:.3f} vs {b:.3f} (ratio {u / b:.2f} > {gate.max_ns_rtf_ratio:g})")
    return out


def evaluate(
    store: Store,
    conn: sa.Connection,
    updated: list[str],
    baseline: list[str],
    t0: float,
    t1: float,
    gate: GatePolicy,
) -> dict[str, Any]:
    """The gate's verdict and figures (stored as the job's ``last_gate``)."""
    u = group_figures(store, conn, updated, t0, t1, gate.min_samples)
    b = group_figures(store, conn, baseline, t0, t1, gate.min_samples)
    regressions = compare(u, b, gate)
    return {
        "window": [round(t0, 3), round(t1, 3)],
        "passed": not regressions,
        "regressions": regressions,
        "updated": asdict(u),
        "baseline": asdict(b),
        **({"note": "no baseline devices: passed"} if not b.devices or not u.devices else {}),
    }
