"""Fleet trend alerts: enough of a group holding the same P2 becomes one fleet P1 listing the devices."""

from __future__ import annotations

from pathlib import Path

from fleet.store import Store
from fleet.trend_rules import SharedAlertRule, evaluate_shared_alerts
from tests.test_fleet_store import event, status


def _alert(dev: str, seq: int, active: bool, code: str = "freeze_rate_high", severity: str = "P2"):
    return event(dev, seq, type="alert", severity=severity, code=code, message="m", active=active)


def test_group_sharing_a_p2_raises_one_fleet_p1_and_clears_with_hysteresis(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "fleet.db"))
    store.ingest(
        [status(f"cam-{i}", True) for i in range(5)]
        + [status("lab-1", True, group="lab"), status("lab-2", True, group="lab")]
    )
    rule = SharedAlertRule(pct=40.0, clear_pct=20.0, min_devices=3)
    store.ingest(
        [
            _alert("cam-0", 1, True),
            _alert("lab-1", 1, True),
            _alert("lab-2", 1, True),
            _alert("cam-3", 1, True, code="soc_hot", severity="P3"),
        ]
    )
    assert evaluate_shared_alerts(store, rule) == []  # 1 of 5 in g; lab is too small; P3 does not count
    store.ingest([_alert("cam-1", 2, True)])
    assert evaluate_shared_alerts(store, rule) == [("raise", "group_alert:g:freeze_rate_high")]
    fleet = [a for a in store.list_alerts() if a["scope"] == "fleet"]
    assert len(fleet) == 1 and fleet[0]["severity"] == "P1" and "cam-0, cam-1" in fleet[0]["message"]
    assert "2 of 5" in fleet[0]["message"]
    assert evaluate_shared_alerts(store, rule) == []  # raised once
    store.ingest([_alert("cam-0", 3, False)])  # 1 of 5 = 20 %: not below the clear level yet
    assert evaluate_shared_alerts(store, rule) == []
    store.ingest([_alert("cam-1", 4, False)])  # nobody holds it
    assert evaluate_shared_alerts(store, rule) == [("clear", "group_alert:g:freeze_rate_high")]
    assert not [a for a in store.list_alerts() if a["scope"] == "fleet"]


def test_alerts_are_acknowledged_per_raising(tmp_path: Path) -> None:
    import subprocess
    import sys

    import pytest

    from fleet.store import AlertNotFound

    db = str(tmp_path / "fleet.db")
    store = Store(db)
    store.ingest([status("cam-0", True), _alert("cam-0", 1, True)])
    ack = store.ack_alert("cam-0", "freeze_rate_high", "ana", "ISP maintenance in the lobby", now=5000.0)
    assert ack == {
        "key": "device:cam-0:freeze_rate_high",
        "by": "ana",
        "at": 5000.0,
        "note": "ISP maintenance in the lobby",
    }
    (row,) = store.list_alerts()
    assert (row["acked_by"], row["acked_at"], row["ack_note"]) == (
        "ana",
        5000.0,
        "ISP maintenance in the lobby",
    )
    # cleared, raised again: a new raising
    store.ingest([_alert("cam-0", 2, False), _alert("cam-0", 3, True)])
    (row,) = store.list_alerts()
    assert row["acked_by"] is None
    with pytest.raises(AlertNotFound, match="no active alert 'nope' on cam-0"):
        store.ack_alert("cam-0", "nope", "ana")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleet.cli",
            "ack",
            "cam-0",
            "freeze_rate_high",
            "--by",
            "bo",
            "--note",
            "looking",
            "--db",
            db,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=root,
    )
    assert (
        out.returncode == 0 and "acknowledged device:cam-0:freeze_rate_high by bo: looking" in out.stdout
    ), out
    missing = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "ack", "fleet", "group_alert:g:x", "--db", db],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=root,
    )
    assert (
        missing.returncode == 4 and "no active alert" in missing.stderr and "Traceback" not in missing.stderr
    )
    listed = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "alerts", "--db", db],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=root,
    )
    assert "ACKED_BY" in listed.stdout and " bo" in listed.stdout, listed.stdout


def _media_tele(dev: str, seq: int, *rates: float):
    import json
    import time as _time

    from fleet.store import Incoming

    health = {"media": {"viewers": {"sessions": [{"qoe": {"freeze_rate": r}} for r in rates]}}}
    body = {"boot": "b1", "seq": seq, "ts": 1000.0 + seq, "health": health}
    return Incoming("telemetry", dev, json.dumps(body).encode(), _time.time())


def test_group_freeze_rate_against_its_own_baseline(tmp_path: Path) -> None:
    from fleet.trend_rules import BaselineRule, evaluate_baseline

    store = Store(str(tmp_path / "fleet.db"))
    store.ingest([status(f"cam-{i}", True) for i in range(4)] + [status("lab-1", True, group="lab")])
    rule = BaselineRule(min_devices=3)
    now = 1_000_000.0
    for k in range(4, 24 * 12):  # a day of 5-minute medians around 1 %, up to 20 minutes ago
        store.add_group_metric("g", "freeze_rate", now - 300.0 * k, 1.0 if k % 2 else 0.8)
    # now: the worst viewer per device 4 %, 5 %, 3 % (one device without viewers); lab is too small
    store.ingest(
        [
            _media_tele("cam-0", 1, 4.0, 0.1),
            _media_tele("cam-1", 1, 5.0),
            _media_tele("cam-2", 1, 3.0),
            _media_tele("lab-1", 1, 50.0),
        ]
    )
    assert evaluate_baseline(store, rule, now=now) == [("raise", "freeze_trend:g")]
    (alert,) = [a for a in store.list_alerts() if a["scope"] == "fleet"]
    assert alert["severity"] == "P2" and "median freeze rate 4.0 %" in alert["message"], alert
    assert evaluate_baseline(store, rule, now=now + 60) == []  # raised once; no second record within 5 min
    assert len(store.group_metric("g", "freeze_rate", now - 1, now + 100)) == 1
    store.ingest([_media_tele(f"cam-{i}", 2, 1.1) for i in range(3)])
    assert evaluate_baseline(store, rule, now=now + 400) == []  # recent median (4.0, 1.1) still 2.5x
    assert evaluate_baseline(store, rule, now=now + 1000) == [("clear", "freeze_trend:g")]  # (1.1, 1.1)


def test_no_baseline_no_trend(tmp_path: Path) -> None:
    from fleet.trend_rules import BaselineRule, evaluate_baseline

    store = Store(str(tmp_path / "fleet.db"))
    store.ingest(
        [status(f"cam-{i}", True) for i in range(3)] + [_media_tele(f"cam-{i}", 1, 30.0) for i in range(3)]
    )
    assert evaluate_baseline(store, BaselineRule(), now=1_000_000.0) == []  # a new fleet has no baseline yet
