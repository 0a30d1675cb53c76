"""systemd: the unit passes `systemd-analyze verify`, install-service writes it, sd_notify works."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from device_agent.watchdog import WatchdogComponent, notify, watchdog_interval
from tests.support.ota_harness import PY, REPO, Device, provision

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (apt: systemd)"
)


def _verify(unit: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines() if unit.name in ln or "Unknown" in ln]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def test_shipped_unit_has_the_required_settings() -> None:
    text = (REPO / "systemd" / "device-agent.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=30",
        "Restart=on-failure",
        "SupplementaryGroups=audio video",
        "DevicePolicy=closed",
        "DeviceAllow=char-alsa rw",
        "DeviceAllow=char-video4linux rw",
        "StateDirectory=device-agent",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "User=device-agent",
        "StartLimitBurst=10",
    ):
        assert line in text.splitlines(), line
    assert "ExecStartPre=/usr/bin/python3 /opt/device-agent/boot-check.py" in text
    assert "PrivateDevices=yes" not in text  # would hide /dev/snd and /dev/video*


def test_install_service_writes_a_unit_that_verifies(tmp_path: Path) -> None:
    dev = Device(tmp_path / "dev", layer=False)
    provision(dev)  # a real slot, so ExecStart's interpreter exists
    unit_dir = tmp_path / "units"
    r = subprocess.run(
        [
            PY,
            "-m",
            "device_agent.cli",
            "install-service",
            "--no-enable",
            "--no-user",
            "--unit-dir",
            str(unit_dir),
            "--root",
            str(dev.root),
            "--state-dir",
            str(dev.state_dir),
            "--config",
            str(dev.config_path),
            "--watchdog-sec",
            "20",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    unit = unit_dir / "device-agent.service"
    text = unit.read_text()
    assert (
        f"ExecStart={dev.root}/current/bin/python -m device_agent.cli run --config {dev.config_path}" in text
    )
    assert f"ReadWritePaths={dev.state_dir}" in text and "WatchdogSec=20" in text
    _verify(unit)
    # the copied boot check runs on the system Python alone and picks the committed slot
    boot = dev.root / "boot-check.py"
    proc = subprocess.run(
        ["/usr/bin/python3", "-I", str(boot), "--root", str(dev.root), "--state-dir", str(dev.state_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0 and "starting slot a version 1.0.0" in proc.stdout, proc.stderr


def test_unit_with_a_missing_interpreter_fails_verify(tmp_path: Path) -> None:
    """The verify check has teeth: a unit pointing at nothing is refused."""
    from device_agent.commands.service import render_unit

    unit = tmp_path / "device-agent.service"
    unit.write_text(
        render_unit(str(tmp_path / "nothing"), "/var/lib/device-agent", "/etc/x.toml", "device-agent")
    )
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "not executable" in proc.stderr


def _listen(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setblocking(False)
    return s


def _drain(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(4096).decode())
        except BlockingIOError:
            return out


async def test_watchdog_pings_only_while_healthy(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = _listen(path)
    healthy = {"ok": True}
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}
    assert watchdog_interval(env) == pytest.approx(0.05)
    wd = WatchdogComponent(lambda: healthy["ok"], env)
    await wd.start()
    await asyncio.sleep(0.3)
    first = _drain(sock)
    assert first[0].startswith("READY=1") and first.count("WATCHDOG=1") >= 3
    healthy["ok"] = False
    await asyncio.sleep(0.06)
    _drain(sock)
    await asyncio.sleep(0.3)
    assert "WATCHDOG=1" not in _drain(sock)
    healthy["ok"] = True
    await asyncio.sleep(0.2)
    assert "WATCHDOG=1" in _drain(sock)
    await wd.stop()
    assert _drain(sock)[-1] == "STOPPING=1"
    sock.close()


def test_notify_abstract_socket_and_no_socket() -> None:
    import os

    name = f"device-agent-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
    assert s.recv(100) == b"READY=1"
    s.close()
    assert notify("READY=1", {}) is False
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None  # not for us


def test_watchdog_health_ignores_only_the_fleet_link() -> None:
    from device_agent.watchdog import pipelines_healthy

    class C:
        def __init__(self, name: str, ok: bool) -> None:
            self.name, self.ok = name, ok

        def healthy(self) -> bool:
            return self.ok

    class A:
        components = [C("fleet_link", False), C("media", True)]

    check = pipelines_healthy(A())
    assert check() is True  # broker outage: keep feeding the watchdog
    A.components[1].ok = False
    assert check() is False  # the media pipeline is down: let systemd restart us
