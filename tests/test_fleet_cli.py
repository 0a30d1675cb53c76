"""fleetctl devices / show / alerts / cmd / serve / simulate as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from device_agent.agent import Agent
from device_agent.config import config_from_dict
from device_agent.fleetlink import FleetLink
from fleet.store import Store
from tests.support.mosquitto import Mosquitto
from tests.test_fleet_store import event, status, tele

ROOT = Path(__file__).resolve().parents[1]


def fleetctl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


async def afleetctl(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet.cli", *args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


def test_devices_show_alerts(tmp_path: Path) -> None:
    db = str(tmp_path / "fleet.db")
    store = Store(db)
    store.ingest(
        [
            status("cam-1", True),
            status("cam-2", False, reason="lost"),
            tele("cam-1", "b1", 1, temperature_c=48.0),
            event("cam-1", 2, type="alert", severity="P2", code="fps_low", message="fps 9 < 25", active=True),
        ]
    )
    res = fleetctl("devices", "--db", db, "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [(r["device"], r["online"], r["active_alerts"]) for r in rows] == [
        ("cam-1", True, 1),
        ("cam-2", False, 1),
    ]
    res = fleetctl("devices", "--db", db)
    assert res.stdout.splitlines()[0].split()[:3] == ["DEVICE", "GROUP", "ONLINE"] and "cam-2" in res.stdout
    res = fleetctl("show", "cam-1", "--db", db, "--json")
    info = json.loads(res.stdout)
    assert info["health"]["system"]["temperature_c"] == 48.0 and info["active_alerts"][0]["code"] == "fps_low"
    res = fleetctl("show", "cam-1", "--db", db)
    assert re.search(r"^ +temperature_c +48\.0$", res.stdout, re.M) and "fps_low" in res.stdout
    missing = fleetctl("show", "nope", "--db", db)
    assert missing.returncode == 4 and "no device 'nope'" in missing.stderr  # not found
    res = fleetctl("show", "cam-", "--db", db)  # a prefix of two: ambiguous, a usage error naming both
    assert res.returncode == 2 and "cam-1" in res.stderr and "cam-2" in res.stderr
    assert '"device": "cam-2"' in fleetctl("show", "cam-2", "--db", db, "--json").stdout
    res = fleetctl("devices", "cam-1", "--db", db)  # devices filtered by prefix
    assert "cam-1" in res.stdout and "cam-2" not in res.stdout
    typo = fleetctl("devices", "--db", str(tmp_path / "flet.db"))  # a mistyped store: no empty one made
    assert typo.returncode == 4 and "no fleet store" in typo.stderr and not (tmp_path / "flet.db").exists()
    # a provisioned name and location: in the table, and a name (or its prefix) names the device
    import datetime as dt

    from fleet.provisioning.store import ProvisioningStore

    prov = ProvisioningStore(tmp_path / "state")
    (t,) = prov.create_claims("g", 60, 1, b"\x02" * 32)
    at = dt.datetime.now(dt.UTC)
    prov.redeem(
        prov.check_claim(t.id, t.secret), "cam-2", {"name": "Lobby door", "location": "hall 2"}, 1, at, at
    )
    state = ["--state-dir", str(tmp_path / "state")]
    res = fleetctl("devices", "--db", db, *state)
    assert re.search(r"^cam-2 +Lobby door +hall 2 +g +no", res.stdout, re.M), res.stdout
    res = fleetctl("show", "lobby", "--db", db, *state)
    assert res.returncode == 0 and re.search(r"^name +Lobby door$", res.stdout, re.M), res.stdout
    res = fleetctl("alerts", "--db", db, "--json")
    assert sorted((a["device"], a["code"], a["severity"]) for a in json.loads(res.stdout)) == [
        ("cam-1", "fps_low", "P2"),
        ("cam-2", "offline", "P1"),
    ]
    assert "offline" in fleetctl("alerts", "--db", db).stdout


async def test_cmd_round_trip_and_errors(tmp_path: Path, mosquitto: Mosquitto) -> None:
    agent = Agent(
        config_from_dict(
            {"device": {"id": "spk-1", "state_dir": str(tmp_path / "s")}, "mqtt": {"url": mosquitto.url}}
        )
    )
    agent.add(FleetLink(agent))
    await agent.start()
    try:
        rc, out, err = await afleetctl(
            "cmd", "spk-1", "ping", '{"echo": 7}', "--mqtt", mosquitto.url, "--json"
        )
        assert rc == 0, err
        assert json.loads(out)["result"]["echo"] == 7
        rc, out, _ = await afleetctl("cmd", "spk-1", "ping", "--mqtt", mosquitto.url)
        assert rc == 0 and "pong" in out
        rc, out, _ = await afleetctl("cmd", "spk-1", "reboot", "{}", "--mqtt", mosquitto.url, "--json")
        assert rc == 5 and json.loads(out)["error"]["code"] == "confirmation_required"  # the device refused
        rc, _, err = await afleetctl("cmd", "spk-1", "ping", "[1]", "--mqtt", mosquitto.url)
        assert rc == 2 and "JSON object" in err
        t0 = time.monotonic()
        rc, _, err = await afleetctl("cmd", "ghost", "ping", "--mqtt", mosquitto.url, "--timeout", "20")
        assert rc == 4 and "never connected" in err and time.monotonic() - t0 < 10  # at once, not 20 s
        rc, _, err = await afleetctl(
            "cmd", "ghost", "ping", "--mqtt", mosquitto.url, "--timeout", "1", "--wait"
        )
        assert rc == 4 and "waited 1 s" in err
    finally:
        await agent.stop()


def test_serve_and_simulate_processes(tmp_path: Path, mosquitto: Mosquitto) -> None:
    db = str(tmp_path / "fleet.db")
    serve = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli", "serve", "--mqtt", mosquitto.url, "--db", db],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "fleetctl serve: worker 1" in serve.stdout.readline()
        sim = fleetctl(
            "simulate",
            "--devices",
            "5",
            "--interval",
            "0.5",
            "--duration",
            "3",
            "--mqtt",
            mosquitto.url,
            "--state-dir",
            str(tmp_path / "sim"),
            timeout=60,
        )
        assert sim.returncode == 0, sim.stderr
        final = json.loads(sim.stdout.strip().splitlines()[-1])
        assert final["devices"] == 5 and final["samples"] >= 20
        time.sleep(1.0)
    finally:
        serve.send_signal(signal.SIGTERM)
        out, _ = serve.communicate(timeout=20)
    assert serve.returncode == 0 and '"final": true' in out
    rows = json.loads(fleetctl("devices", "--db", db, "--json").stdout)
    assert len(rows) == 5 and all(r["group"] == "sim" for r in rows)
    assert Store(db).counts()["telemetry"] >= final["delivered"] - 5
    assert os.path.exists(tmp_path / "sim" / "sim-00000" / "fleetlink" / "spool.db")
