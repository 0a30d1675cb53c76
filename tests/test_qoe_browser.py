"""The shipped viewer page in real headless Chromium reports what it renders: its receiver reports
reach the agent's /api/stats and the telemetry on the broker. No permission flags: the page needs
no microphone to view (only push-to-talk asks for one)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from device_agent import telemetry_codec
from tests.support.agent_proc import AgentProcess
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, open_page_when_up
from tests.support.mosquitto import free_port

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")

# the machine's flags without the media-permission ones
VIEWER_ARGS = [
    a
    for a in CHROMIUM_ARGS
    if a not in ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")
]
QOE_KEYS = {
    "rendered_fps",
    "freeze_count",
    "freeze_ms",
    "freeze_rate",
    "jitter_buffer_ms",
    "av_sync_ms",
    "e2e_delay_ms",
    "received_kbps",
    "packets_lost",
    "reported_at",
}


def _telemetry(url: str, device: str, into: list[dict]) -> mqtt.Client:
    host, port = url.split("//", 1)[1].split(":")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    lock = threading.Lock()

    def on_message(_c, _u, msg) -> None:
        with lock:
            into.append(
                json.loads(telemetry_codec.decode(msg.payload, telemetry_codec.message_content_type(msg)))
            )

    client.on_message = on_message
    client.on_connect = lambda c, *_a: c.subscribe(f"dev/{device}/telemetry", qos=1)
    client.connect(host, int(port))
    client.loop_start()
    return client


def test_chromium_viewer_reports_reach_stats_and_telemetry(tmp_path: Path, mosquitto) -> None:
    port = free_port()
    agent = AgentProcess(
        tmp_path / "agent",
        {
            "device": {"id": "qoe-cam", "state_dir": str(tmp_path / "state")},
            "camera": {"width": 320, "height": 180, "fps": 30},
            "web": {"enabled": True, "listen": f"127.0.0.1:{port}"},
            "mqtt": {"url": mosquitto.url, "telemetry_interval_s": 2.0},
        },
    ).start()
    samples: list[dict] = []
    client = _telemetry(mosquitto.url, "qoe-cam", samples)
    try:
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=VIEWER_ARGS, headless=True)
            try:
                page = browser.new_page()
                open_page_when_up(page, f"http://127.0.0.1:{port}/", lambda: agent.log_text()[-3000:])
                page.wait_for_function("window.viewer.state === 'connected'", timeout=20000)
                # a few reports at 2 s, with the sender-report clock mapping in place
                page.wait_for_function(
                    "(window.viewer.qoe.frames || 0) > 150 && window.viewer.qoe.av_ms !== undefined"
                    " && window.viewer.qoe.play_ms !== undefined",
                    timeout=30000,
                )
                # the rendered rate of one report; on a machine shared with other jobs Chromium's compositor
                # may fall behind for a while, so take the first report within 20 s at the camera's rate
                seen_fps = []
                deadline = time.monotonic() + 20
                while True:
                    sent = page.evaluate("window.viewer.qoe")
                    stats = page.evaluate("fetch('/api/stats').then(r => r.json())")
                    seen_fps.append(stats["viewers"]["sessions"][0]["qoe"]["rendered_fps"])
                    if seen_fps[-1] is not None and seen_fps[-1] >= 24 or time.monotonic() > deadline:
                        break
                    page.wait_for_timeout(1000)
            finally:
                browser.close()
        qoe = stats["viewers"]["sessions"][0]["qoe"]
        assert set(qoe) >= QOE_KEYS, qoe
        assert qoe["client"] == "chromium" and qoe["rejected"] == 0 and qoe["reports"] >= 3, qoe
        # what the page presented, clean loopback
        assert 24 <= qoe["rendered_fps"] <= 36, (seen_fps, qoe, sent)
        assert qoe["freeze_count"] == 0 and qoe["freeze_rate"] == 0.0, qoe
        assert (qoe["width"], qoe["height"]) == (320, 180)
        assert qoe["packets_lost"] == 0 and qoe["received_kbps"] > 20
        assert 0 < qoe["jitter_buffer_ms"] < 500 and qoe["decode_ms"] is not None
        # one clock for both streams (the device's SRs, dated by capture): a sane offset, not an epoch or
        # unit mix-up. Its size is Chromium's lip-sync residue: ~0 once converged, hundreds of ms while its
        # synchroniser chases a starved CPU (docs/performance.md, benchmarks.av_sync_chromium)
        assert abs(qoe["av_sync_ms"]) < 1000, (qoe, sent)
        assert 0 <= qoe["e2e_delay_ms"] < 1000, (qoe, sent)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            seen = [
                s
                for s in list(samples)
                if ((s["health"].get("media") or {}).get("viewers") or {}).get("sessions")
                and s["health"]["media"]["viewers"]["sessions"][0]["qoe"]["reports"]
            ]
            if seen:
                break
            time.sleep(0.2)
        assert seen, f"no telemetry with a viewer's qoe in {len(samples)} samples"
        tele = seen[-1]["health"]["media"]["viewers"]["sessions"][0]["qoe"]
        assert set(tele) >= QOE_KEYS and tele["client"] == "chromium" and tele["rendered_fps"] > 20, tele
    finally:
        client.loop_stop()
        client.disconnect()
        agent.stop()
