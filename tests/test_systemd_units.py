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


def _unit_command(text: str, key: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"{key}="))
    return line.partition("=")[2].split()


def test_install_service_after_pip_install_ends_with_a_unit_whose_boot_check_passes(tmp_path: Path) -> None:
    """A root with no slot (what `pip install device-agent` leaves): install-service makes this
    installation slot a, and the unit's own ExecStartPre, run as written, passes; ExecStart's
    interpreter imports the agent. With --no-adopt it refuses, says what to do, writes nothing."""
    root, state, units = tmp_path / "opt", tmp_path / "state", tmp_path / "units"
    base = [PY, "-m", "device_agent.cli", "install-service", "--no-enable", "--no-user"]
    paths = ["--unit-dir", str(units), "--root", str(root), "--state-dir", str(state)]
    paths += ["--config", str(tmp_path / "agent.toml")]
    r = subprocess.run([*base, *paths, "--no-adopt"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1 and "no complete slot" in r.stderr and "ExecStartPre" in r.stderr, r.stderr
    assert "device-agent ota install" in r.stderr and "Traceback" not in r.stderr
    assert not units.exists() and not (root / "boot-check.py").exists()

    r = subprocess.run([*base, *paths], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"installed slot {root}/slots/a (this installation" in r.stdout, r.stdout
    assert "agent.toml does not exist yet" in r.stderr  # the next thing that would fail is named
    unit = units / "device-agent.service"
    text = unit.read_text()
    pre = _unit_command(text, "ExecStartPre")
    if not Path(pre[0]).exists():
        pytest.skip(f"the unit's boot check interpreter {pre[0]} is not on this machine")
    proc = subprocess.run(pre, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "starting slot a version" in proc.stdout, proc.stdout + proc.stderr
    start = _unit_command(text, "ExecStart")
    assert start[0] == f"{root}/current/bin/python"
    proc = subprocess.run(
        [start[0], "-I", "-c", "import device_agent.cli, aiortc; print(device_agent.cli.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr  # -I: no cwd, no PYTHONPATH: the slot alone finds it
    _verify(unit)
    # a second run keeps the slot it made (complete now) and still passes
    r = subprocess.run([*base, *paths], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0 and "installed slot" not in r.stdout, r.stdout
    assert subprocess.run(pre, capture_output=True, text=True, timeout=30).returncode == 0
