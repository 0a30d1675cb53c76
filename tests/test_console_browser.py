"""The web console (fleet/console/) in real headless Chromium against the real API server and store.

A seeded store (devices online and offline, two versions, P1/P2/P3 alerts, an acknowledgement,
telemetry an hour long, viewer sessions, a provisioned name and location, a rollout with gated
waves): the pages must show the store's figures; an acknowledgement, a silence and a halt/resume
made through the page land in the store; a viewer token sees disabled buttons and is refused
(403) when it tries anyway. A second test runs the device buttons (self-test, log pull, live view
over MQTT signaling) against a real in-process agent. Screenshots go to $CONSOLE_SCREENSHOTS
(docs/img for the docs) or a temp dir.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fleet.api.server import ApiServer
from fleet.ota.jobs import GatePolicy, Jobs
from fleet.ota.rollout import Policy
from fleet.silences import SilenceStore
from fleet.store import Incoming, Store
from fleet.tokens import TokenStore
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

pytest.importorskip("playwright")

ROOT = Path(__file__).resolve().parents[1]
# the docs' screenshots: CONSOLE_SCREENSHOTS=docs/img pytest tests/test_console_browser.py (else a temp dir,
# so a test run leaves the tree clean)
IMG = Path(os.environ.get("CONSOLE_SCREENSHOTS") or Path(tempfile.gettempdir()) / "console-screenshots")
N = 30  # cam-000..cam-029; every 7th is offline (P1 offline): 5 offline


def _msg(kind: str, dev: str, body: dict[str, Any], received: float) -> Incoming:
    return Incoming(kind, dev, json.dumps(body).encode(), received)


def seed(store: Store, prov_dir: Path, now: float) -> dict[str, Any]:
    """The store the console tests read; returns the figures they expect."""
    batch = []
    for i in range(N):
        online = i % 7 != 0
        body = {
            "online": online,
            "boot": "b1",
            "version": "1.1" if i % 2 else "1.0",
            "slot": "a",
            "group": "lobby" if i < 20 else "yard",
            "hardware": "rpi5",
            "ts": now,
        }
        if not online:
            body["reason"] = "lost"
        batch.append(_msg("status", f"cam-{i:03d}", body, now - 3000 + i))
    store.ingest(batch)
    # an hour of telemetry for cam-001, one sample a minute: fps 30 -> 24, temperature 50 -> 55.9
    tele = []
    for k in range(60):
        ts = now - 3540 + k * 60
        health = {
            "system": {"cpu_pct": 20.0 + k % 5, "temperature_c": 50.0 + k * 0.1, "mem_used_pct": 30.0},
            "media": {
                "video": {"fps": 30.0 - k * 0.1},
                "viewers": {
                    "active": 1,
                    "max": 8,
                    "sessions": [
                        {
                            "rtt_ms": 40.0 + k,
                            "qoe": {"freeze_rate": 0.5, "loss_pct": 0.2, "rendered_fps": 29.0},
                        }
                    ],
                },
            },
        }
        tele.append(_msg("telemetry", "cam-001", {"boot": "b1", "seq": k, "ts": ts, "health": health}, ts))
    store.ingest(tele)
    seq = iter(range(1000, 2000))

    def ev(dev: str, ts: float, **fields: Any) -> Incoming:
        return _msg("events", dev, {"boot": "b1", "seq": next(seq), "ts": ts, **fields}, ts)

    store.ingest(
        [
            ev(
                "cam-001",
                now - 600,
                type="alert",
                severity="P2",
                code="fps_low",
                message="fps 9",
                active=True,
            ),
            ev(
                "cam-002",
                now - 500,
                type="alert",
                severity="P2",
                code="fps_low",
                message="fps 11",
                active=True,
            ),
            ev(
                "cam-003",
                now - 400,
                type="alert",
                severity="P3",
                code="disk",
                message="disk 91 %",
                active=True,
            ),
        ]
        + [
            ev(
                "cam-001",
                now - 1800 + j * 600,
                type="media.session",
                session=f"s{j}",
                transport="whep",
                client="chromium",
                reason="deleted by viewer",
                started=now - 2400 + j * 600,
                duration_s=300.0 + j,
                connected=True,
                connect_ms=120.0 + j,
                ttff_ms=300.0,
                freeze_count=j,
                freeze_ms=100 * j,
                freeze_rate=0.25 * (j + 1),
                fps_mean=29.5,
                fps_min=25.0,
                loss_pct=0.1,
                rtt_ms=42.0,
                mos=4.3,
            )
            for j in range(2)
        ]
    )
    # cam-007's offline alert acknowledged 120 s after it was raised
    raised = store.device("cam-007")["active_alerts"][0]["raised"]  # type: ignore[index]
    store.ack_alert("cam-007", "offline", "token:seed (night shift)", "truck on site", now=raised + 120)
    # a provisioned name and location for cam-001
    from fleet.provisioning.store import ProvisioningStore

    prov = ProvisioningStore(prov_dir)
    (t,) = prov.create_claims("lobby", 60, 1, b"\x02" * 32)
    at = dt.datetime.now(dt.UTC)
    prov.redeem(
        prov.check_claim(t.id, t.secret), "cam-001", {"name": "Lobby door", "location": "hall 2"}, 1, at, at
    )
    # a rollout: canary cam-010 succeeded (wave 0); wave 1 cam-011 succeeded, cam-012 failed; 3 pending
    jobs = Jobs(store)
    devs = [f"cam-{i:03d}" for i in range(10, 16)]
    rid = jobs.create("1.2.0", devs, {}, Policy(canary=1, batch_size=2), GatePolicy(soak_s=60))
    d = jobs.devices.c
    with store.engine.begin() as conn:
        for dev, state, wave in (
            ("cam-010", "succeeded", 0),
            ("cam-011", "succeeded", 1),
            ("cam-012", "failed", 1),
        ):
            conn.execute(
                sa.update(jobs.devices)
                .where(d.rollout_id == rid, d.device_id == dev)
                .values(state=state, wave=wave, phase="committed" if state == "succeeded" else "pip")
            )
        gate = {
            "window": [now - 400, now - 340],
            "passed": True,
            "regressions": [],
            "updated": {"devices": 1, "freeze_rate": 0.4, "rendered_fps": 29.1},
            "baseline": {"devices": 5, "freeze_rate": 0.5, "rendered_fps": 29.0},
        }
        conn.execute(
            sa.update(jobs.rollouts)
            .where(jobs.rollouts.c.id == rid)
            .values(waves=2, last_gate=json.dumps(gate))
        )
    return {"rollout": rid}


class Server:
    """The API server on its own event loop thread (Playwright's sync API owns the test's thread)."""

    def __init__(self, store: Store, **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.api = ApiServer(store, "127.0.0.1", 0, **kw)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.api.start(), self.loop).result(15)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.api.stop(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[tuple[Store, dict[str, Any]]]:
    store = Store(str(tmp_path / "fleet.db"))
    info = seed(store, tmp_path / "prov", time.time())
    tokens = TokenStore(store.engine, store.prefix)
    info["viewer"] = tokens.create("viewer", "wallboard")[1]
    info["operator"] = tokens.create("operator", "oncall")[1]
    info["prov"] = str(tmp_path / "prov")
    yield store, info
    store.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _ready(page: Any, view: str) -> None:
    page.wait_for_selector(
        f"main[data-view='{view}'][data-ready]:not([data-stale]):not([data-error])", timeout=10000
    )


def _go(page: Any, url: str, view: str) -> None:
    """Navigate (often a hash change only) and wait for the new view, not the one on screen."""
    page.evaluate("document.getElementById('main').setAttribute('data-stale', '1')")
    page.goto(url)
    _ready(page, view)


def _text(page: Any, sel: str) -> str:
    return page.locator(sel).inner_text().strip()


def _shot(page: Any, name: str) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMG / f"console-{name}.png"), full_page=True)


def test_console_pages_show_the_store_and_operator_actions_land_in_it(seeded, browser) -> None:
    store, info = seeded
    srv = Server(store, require_token=True, provisioning_dir=info["prov"])
    try:
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.api.url + "/")
        # no token yet: the page asks for one, keeps it in sessionStorage
        page.wait_for_selector("dialog#login[open]", timeout=10000)
        page.fill("#token", info["operator"])
        page.evaluate("document.getElementById('main').setAttribute('data-stale', '1')")
        page.click("#login-ok")
        _ready(page, "overview")
        assert page.evaluate("sessionStorage.getItem('fleet-console-token')") == info["operator"]
        assert _text(page, "#who").endswith("operator")
        # overview: counts from the store
        assert (_text(page, "#ov-total"), _text(page, "#ov-online"), _text(page, "#ov-offline")) == (
            "30",
            "25",
            "5",
        )
        assert (_text(page, "#ov-P1"), _text(page, "#ov-P2"), _text(page, "#ov-P3")) == ("5", "2", "1")
        versions = page.locator("#ov-versions tr[data-version]").all_inner_texts()
        assert [v.split()[:3] for v in versions] == [["1.0", "12", "3"], ["1.1", "13", "2"]]
        assert _text(page, "#ov-tta td[data-sev='P1']") == "2 min"  # cam-007: acked 120 s after the raise
        assert page.locator("#tr-raised rect").count() >= 2  # raises within the last 24 h, by hour
        _shot(page, "overview")

        # device list: one page, filters
        _go(page, srv.api.url + "/#/devices?online=false", "devices")
        assert _text(page, "#dev-total") == "5 devices"
        assert page.locator("#dev-table tr[data-id]").all_inner_texts()[0].startswith("cam-000")
        _go(page, srv.api.url + "/#/devices?prefix=Lobby", "devices")
        assert [r.split()[0] for r in page.locator("#dev-table tr[data-id]").all_inner_texts()] == ["cam-001"]

        # device page: identity, health, charts from the rollups, sessions
        _go(page, srv.api.url + "/#/device/cam-001", "device")
        assert _text(page, "#identity dd[data-k='name']") == "Lobby door"
        assert _text(page, "#identity dd[data-k='location']") == "hall 2"
        assert _text(page, "#health dd[data-k='temperature']") == "55.9 °C"
        page.wait_for_selector("#chart-fps[data-points]", timeout=10000)
        for metric in ("fps", "temp_c", "cpu", "rtt_ms", "freeze_rate", "loss"):
            page.wait_for_selector(f"#chart-{metric}[data-points]", timeout=10000)
            assert int(page.get_attribute(f"#chart-{metric}", "data-points") or 0) >= 50, metric
        assert abs(float(page.get_attribute("#chart-fps", "data-last") or 0) - 24.1) < 0.2
        assert abs(float(page.get_attribute("#chart-temp_c", "data-last") or 0) - 55.9) < 0.2
        assert page.locator("#sessions tr[data-session]").count() == 2
        assert page.locator("#sessions tr[data-session='s1'] td.freeze").inner_text() == "0.50 %"
        assert page.locator("#actions button:disabled").count() == 0  # an operator may act
        _shot(page, "device")
        page.evaluate("document.getElementById('main').setAttribute('data-stale', '1')")
        page.click("#ranges button[data-range='7d']")
        _ready(page, "device")
        page.wait_for_selector("#chart-fps[data-points]", timeout=10000)
        assert int(page.get_attribute("#chart-fps", "data-points") or 0) >= 1  # hour rollups

        # alert board: tiers, acknowledge with a note, silence until a time
        _go(page, srv.api.url + "/#/alerts", "alerts")
        assert _text(page, "#tier-P1 .count") == "5" and _text(page, "#tier-P1 .attention") == "4"
        assert _text(page, "#tier-P2 .count") == "2" and _text(page, "#tier-P3 .count") == "1"
        assert "null" not in _text(page, "main") and "undefined" not in _text(page, "main")
        card = page.locator(".alert[data-id='device:cam-014:offline']")
        card.locator("button.act").click()  # the form is built on demand
        card.locator("input[name=note]").fill("power cut, crew on the way")
        card.locator("button", has_text="Acknowledge").click()
        page.wait_for_selector(".alert.acked[data-id='device:cam-014:offline']", timeout=10000)
        acked = {a["device"]: a for a in store.list_alerts() if a["acked_by"]}
        assert acked["cam-014"]["ack_note"] == "power cut, crew on the way"
        assert acked["cam-014"]["acked_by"].endswith("(oncall)")
        until = time.time() + 2 * 3600
        card = page.locator(".alert[data-id='device:cam-021:offline']")
        card.locator("button.act").click()
        card.locator("input[name=until]").fill(dt.datetime.fromtimestamp(until).strftime("%Y-%m-%dT%H:%M"))
        card.locator("input[name=note]").fill("planned works")
        card.locator("button", has_text="Silence").click()
        page.wait_for_selector(".alert.silenced[data-id='device:cam-021:offline']", timeout=10000)
        sil = SilenceStore(store.engine).active(["device:cam-021:offline"])["device:cam-021:offline"]
        assert abs(sil["until"] - until) < 61 and sil["note"] == "planned works"
        assert _text(page, "#tier-P1 .attention") == "2"  # 5 open - 2 acked - 1 silenced
        page.locator(
            ".alert[data-id='device:cam-028:offline'] button.act"
        ).click()  # one form open in the picture
        page.fill(".alert[data-id='device:cam-028:offline'] input[name=note]", "checking the switch")
        _shot(page, "alerts")
        page.evaluate("document.getElementById('main').setAttribute('data-stale', '1')")
        page.click("#tab-history")
        _ready(page, "alerts")
        assert _text(page, "#history tr[data-id='device:cam-007:offline'] td.tta") == "2 min"

        # rollouts: waves, device states, the gate, halt and resume
        rid = info["rollout"]
        _go(page, srv.api.url + "/#/rollouts", "rollouts")
        assert page.locator(f"#rollouts tr[data-id='{rid}']").count() == 1
        _go(page, srv.api.url + f"/#/rollout/{rid}", "rollout")
        assert (_text(page, "#rc-succeeded"), _text(page, "#rc-failed"), _text(page, "#rc-pending")) == (
            "2",
            "1",
            "3",
        )
        assert _text(page, "#waves tr[data-wave='1'] td[data-state='failed']") == "1"
        assert "passed" in _text(page, "#gate")
        assert page.locator("#rollout-devices tr[data-id]").count() == 6
        _go(page, srv.api.url + f"/#/rollout/{rid}?state=failed", "rollout")
        assert page.locator("#rollout-devices tr[data-id]").all_inner_texts()[0].split()[:3] == [
            "cam-012",
            "1",
            "failed",
        ]
        assert _text(page, "#rollout-shown") == "1 devices"
        _go(page, srv.api.url + f"/#/rollout/{rid}", "rollout")
        page.fill("#halt-reason", "camera vendor recall")
        page.locator("#rollout-actions button", has_text="Halt").click()
        page.wait_for_selector("#rollout-actions button:has-text('Resume')", timeout=10000)
        job = Jobs(store).get(rid)
        assert job.status == "halted" and job.rollout.reason == "camera vendor recall"
        assert _text(page, "#rc-skipped") == "3"
        _shot(page, "rollouts")
        page.locator("#rollout-actions button", has_text="Resume").click()
        page.wait_for_selector("#rollout-actions button:has-text('Halt')", timeout=10000)
        assert Jobs(store).get(rid).status == "running"
        assert errors == []
    finally:
        srv.stop()


def test_a_viewer_token_sees_and_cannot_act(seeded, browser) -> None:
    store, info = seeded
    srv = Server(store, require_token=True)
    try:
        page = browser.new_page()
        page.add_init_script(
            f"sessionStorage.setItem('fleet-console-token', {json.dumps(info['viewer'])});"
            "sessionStorage.setItem('fleet-console-refresh-ms', '300')"
        )
        page.goto(srv.api.url + "/#/alerts")
        _ready(page, "alerts")
        # the board follows the store by itself: a new P3 shows up without a reload
        assert page.locator(".alert[data-id='device:cam-005:fan']").count() == 0
        t = time.time()
        store.ingest(
            [
                _msg(
                    "events",
                    "cam-005",
                    {
                        "boot": "b1",
                        "seq": 5000,
                        "ts": t,
                        "type": "alert",
                        "severity": "P3",
                        "code": "fan",
                        "message": "fan stalled",
                        "active": True,
                    },
                    t,
                )
            ]
        )
        page.wait_for_selector(".alert[data-id='device:cam-005:fan']", timeout=10000)
        deadline = time.monotonic() + 10  # its count comes from another request: the next refresh has both
        while _text(page, "#tier-P3 .count") != "2":
            assert time.monotonic() < deadline, _text(page, "#tier-P3")
            time.sleep(0.1)
        assert _text(page, "#who").endswith("viewer")
        card = page.locator(".alert[data-id='device:cam-014:offline']")
        assert card.locator("button.act").is_disabled() and card.locator("input").count() == 0
        # forcing the request from the page: refused by the API, nothing stored
        status = page.evaluate(
            """async (tok) => (await fetch('/api/v1/alerts/device:cam-014:offline/ack', {method: 'POST',
                 headers: {Authorization: 'Bearer ' + tok, 'Content-Type': 'application/json'},
                 body: JSON.stringify({note: 'x'})})).status""",
            info["viewer"],
        )
        assert status == 403
        assert [a["device"] for a in store.list_alerts() if a["acked_by"]] == ["cam-007"]
        _go(page, srv.api.url + "/#/device/cam-001", "device")
        assert (
            page.locator("#actions button").count() == 3
            and page.locator("#actions button:disabled").count() == 3
        )
        _go(page, srv.api.url + f"/#/rollout/{info['rollout']}", "rollout")
        assert page.locator("#rollout-actions button", has_text="Halt").is_disabled()
        assert Jobs(store).get(info["rollout"]).status == "running"
        # a wrong token: the page asks again
        bad = browser.new_page()
        bad.add_init_script("sessionStorage.setItem('fleet-console-token', 'fleet_00000000_nope')")
        bad.goto(srv.api.url + "/#/devices")
        bad.wait_for_selector("dialog#login[open]", timeout=10000)
        assert "unknown or revoked token" in _text(bad, "#login-why")
    finally:
        srv.stop()


async def test_device_buttons_self_test_log_pull_and_live_view_on_a_real_agent(
    tmp_path: Path, mosquitto
) -> None:
    """The device page's buttons against the real agent (fleet link, media, diagnostics) on a real broker:
    the service ingests its status, the API relays the commands and the browser's WebRTC offer."""
    from playwright.async_api import async_playwright

    from fleet.service import FleetService
    from tests.support.diag import diag_rig

    store = Store(str(tmp_path / "fleet.db"))
    svc = FleetService(mosquitto.url, store, rule_interval_s=3600)
    async with diag_rig(tmp_path, mosquitto) as rig:
        marker = f"console-marker-{time.time():.0f}"
        with rig.log_path.open("a") as f:
            f.write(
                json.dumps({"ts": dt.datetime.now(dt.UTC).isoformat(), "level": "INFO", "msg": marker}) + "\n"
            )
        await svc.start()
        api = ApiServer(store, "127.0.0.1", 0, service=svc)
        await api.start()
        try:
            for _ in range(100):
                if (store.device(rig.device) or {}).get("online"):
                    break
                await asyncio.sleep(0.1)
            async with async_playwright() as p:
                b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = await b.new_page(viewport={"width": 1280, "height": 1000})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.goto(f"{api.url}/#/device/{rig.device}")  # loopback: no token, admin
                await page.wait_for_selector("main[data-view='device'][data-ready]", timeout=10000)
                await page.click("#actions button:has-text('Run self-test')")
                await page.wait_for_selector("#selftest tr td", timeout=30000)
                names = await page.locator("#selftest tr td:first-child").all_inner_texts()
                assert len(names) >= 3, names
                await page.click("#actions button:has-text('Pull logs')")
                await page.wait_for_selector("#logs-text", timeout=30000)
                assert marker in await page.locator("#logs-text").inner_text()
                await page.click("#actions button:has-text('Live view')")
                frames, deadline = 0, time.monotonic() + 20
                while frames < 20:  # decoded by Chromium, from the page's getStats
                    assert time.monotonic() < deadline, await page.locator("#live-stats").inner_text()
                    await asyncio.sleep(0.2)
                    frames = int(await page.get_attribute("#live-stats", "data-frames") or 0)
                IMG.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(IMG / "console-live.png"), full_page=True)
                # the device counts the browser as a viewer over MQTT signaling, then ends it after Stop
                stats = await rig.client.send_command(rig.device, "diag.stats", {}, timeout=10)
                viewers = [c for c in stats["checks"] if c["name"].startswith("viewer.")]
                assert [v["value"]["kind"] for v in viewers] == ["mqtt"]
                await page.click("#action-out button:has-text('Stop')")
                for _ in range(100):
                    if not rig.agent.health.sample()["media"]["viewers"]["sessions"]:
                        break
                    await asyncio.sleep(0.1)
                assert not rig.agent.health.sample()["media"]["viewers"]["sessions"]
                assert errors == []
                await b.close()
        finally:
            await api.stop()
            await svc.stop()
            store.close()
