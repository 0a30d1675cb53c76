"""The P2 freeze alert end to end through an emulated link (tests/test_qoe_freeze_alert_fleet.py,
benchmarks.freeze_alert): a viewer's freezes -> the device's rule -> MQTT -> the fleet service ->
its store, and cleared after the link is restored.

Namespace a: the agent, a real mosquitto and ``fleetctl serve`` with a SQLite store, all on a's
loopback; namespace b: the shipped viewer page in headless Chromium (as it comes), behind the
emulated link (tests/support/linkemu.py). The impairment: the link goes down for ``outage_s`` in
every ``period_s``, so every outage is a freeze (a gap > 500 ms after >= 5 fps), until the alert
is in the store; then the link is clean. The rule is the shipped ``freeze_rate_high`` (P2, mean over the
window of the worst viewer's freeze rate > 5 %, clear < 2 %) with the window and hold given
(shipped: 60 s and 10 s).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from device_agent.config import dump_toml
from tests.support.browser import CHROMIUM_ARGS, open_page_when_up
from tests.support.impaired_media import chromium_wrapper
from tests.support.linkemu import CLEAN, ImpairedLink, LinkProfile, netns_command
from tests.support.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "freeze-alert-token"
DEVICE = "freeze-cam"
# Each outage is a freeze (> 500 ms) that NACKs can repair (the agent retransmits packets up to 1 s
# old). (An aiortc viewer was tried first: after some outages it kept receiving and never decoded
# again nor asked for an IDR, a stall of tens of seconds: P1 viewers_no_frames, not a freeze rate.)
OUTAGE_S = 0.7
# Chromium as it comes: no media-permission flags (the page needs none to view)
VIEWER_ARGS = [a for a in CHROMIUM_ARGS if "fake" not in a]


def _alert_row(db: Path) -> tuple[int, float, float | None] | None:
    """(active, raised, cleared) of the device's freeze_rate_high in the fleet store, if there."""
    if not db.exists():
        return None
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute(
                "SELECT active, raised, cleared FROM alerts WHERE key = ? AND severity = 'P2'",
                (f"device:{DEVICE}:freeze_rate_high",),
            ).fetchone()
    except sqlite3.OperationalError:  # the service has not created its tables yet
        return None


def freeze_alert_run(
    tmp_path: Path,
    window_s: float = 6.0,
    hold_s: float = 4.0,
    clear_within_s: float = 30.0,
    clean_s: float = 2.0,
    outage_s: float = OUTAGE_S,
    period_s: float = 2.0,
) -> dict[str, Any]:
    """One run (module docstring) with the rule's ``window_s`` and ``hold_s``; the delays measured.

    The viewer watches a clean link for ``clean_s`` first: a window rule says nothing until it has
    watched a whole window, so with ``clean_s`` < ``window_s`` the delay includes the rest of it.

    Returns ``raised_s`` (first outage -> the device's raise time, as stored), ``stored_s`` (-> the
    row seen in the store), ``cleared_s`` (link restored -> the clear time stored; None if not
    within ``clear_within_s``) and ``agent_log`` (its tail).
    """
    db = tmp_path / "fleet.db"
    with ImpairedLink(seed=5) as link:
        broker = Mosquitto(tmp_path / "broker", persistence=False)  # its config; run in namespace a
        url = f"mqtt://127.0.0.1:{broker.port}"
        config = tmp_path / "agent.toml"
        config.write_text(
            dump_toml(
                {
                    "device": {"id": DEVICE, "state_dir": str(tmp_path / "state")},
                    "camera": {"width": 160, "height": 120, "fps": 15},
                    "ns": {"enabled": False},
                    "ota": {"root": str(tmp_path / "ota")},
                    "web": {"listen": f"{link.addr_a}:8080", "token": TOKEN},
                    "mqtt": {"url": url, "telemetry_interval_s": 5.0},
                    "alert_defaults": {"evaluate_interval_s": 1.0},
                    "alerts": [
                        {
                            "code": "freeze_rate_high",
                            "metric": "media.viewers.sessions.*.qoe.freeze_rate",
                            "aggregate": "max",
                            "window_s": window_s,
                            "window": "mean",
                            "op": ">",
                            "threshold": 5.0,
                            "clear_threshold": 2.0,
                            "hold_s": hold_s,
                            "severity": "P2",
                        }
                    ],
                }
            )
        )
        logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("broker", "fleet", "agent")}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        procs = [
            subprocess.Popen(
                netns_command(link.ns_a, [mosquitto, "-c", str(broker.config_path)]),
                stdout=logs["broker"],
                stderr=logs["broker"],
            ),
            subprocess.Popen(
                netns_command(
                    link.ns_a,
                    [
                        sys.executable,
                        "-m",
                        "fleet.cli",
                        "serve",
                        "--mqtt",
                        url,
                        "--db",
                        str(db),
                        "--no-claims",
                    ],
                ),
                cwd=ROOT,
                stdout=logs["fleet"],
                stderr=logs["fleet"],
                env=env,
            ),
            subprocess.Popen(
                netns_command(link.ns_a, [sys.executable, "-m", "tests.support.agent_proc", str(config)]),
                cwd=ROOT,
                stdout=logs["agent"],
                stderr=logs["agent"],
                env=env,
            ),
        ]
        pw = sync_playwright().start()
        browser = None
        seen: dict[str, Any] = {}
        try:
            chromium = chromium_wrapper(link.ns_b, tmp_path)  # the shipped page, in namespace b
            browser = pw.chromium.launch(executable_path=str(chromium), args=VIEWER_ARGS, headless=True)
            page = browser.new_page()
            open_page_when_up(
                page,
                f"http://{link.addr_a}:8080/?token={TOKEN}",
                lambda: (tmp_path / "agent.log").read_text(errors="replace")[-3000:],
                timeout=60,
            )
            page.wait_for_function("(window.viewer.qoe.frames || 0) > 20", timeout=40000)  # reporting
            time.sleep(clean_s)  # clean frames first: the freeze definition needs >= 5 fps before a gap
            assert _alert_row(db) is None
            started = time.time()
            raised = None
            # outages of outage_s every period_s until the store has the alert
            while time.time() - started < hold_s + window_s + 25:
                link.set_both(LinkProfile(down=True))
                time.sleep(outage_s)
                link.set_both(CLEAN)
                time.sleep(period_s - outage_s)
                row = _alert_row(db)
                if row is not None and row[0]:
                    raised = row
                    break
            seen_s = time.time() - started
            restored = time.time()
            cleared = None
            # the link is clean: the window empties, the alert clears
            while raised is not None and time.time() - restored < clear_within_s:
                row = _alert_row(db)
                if row is not None and not row[0]:
                    cleared = row
                    break
                time.sleep(0.5)
            seen = page.evaluate("window.viewer.qoe")
        finally:
            if browser is not None:
                browser.close()
            pw.stop()
            for proc in reversed(procs):
                proc.terminate()
            for proc in reversed(procs):
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            for log in logs.values():
                log.close()
            agent_log = (tmp_path / "agent.log").read_text(errors="replace")[-3000:]
    return {
        "raised_s": None if raised is None else raised[1] - started,
        "stored_s": seen_s,
        "cleared_s": None if cleared is None else cleared[2] - restored,
        "agent_log": agent_log,
        "viewer": seen,
    }
