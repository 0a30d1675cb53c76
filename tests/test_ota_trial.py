"""The trial after a switch, under a systemd stand-in: commit when healthy; releases that crash,
hang or fail a hook roll back by themselves and report it; one update at a time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device_agent.agent import Agent
from device_agent.config import load_config
from device_agent.ota_component import RESTART_EXIT_CODE, OtaComponent
from device_agent.registry import CommandError
from ota.errors import OtaError
from ota.installer import Installer, InstallOptions
from ota.layout import Layout
from tests.support.ota_harness import Device, has_event, make_bundle, provision, supervise


def _hook(path: Path, phase: str, code: int, message: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    hook = path / f"fail-{phase}"
    hook.write_text(
        f'#!/bin/sh\n[ "$1" = "{phase}" ] || exit 0\necho "{message} ($OTA_VERSION in slot $OTA_SLOT)" >&2\n'
        f"exit {code}\n"
    )
    hook.chmod(0o755)
    return path


def _device(tmp_path: Path, **kw) -> Device:
    dev = Device(tmp_path / "dev", **kw)
    provision(dev)
    return dev


def _install_cli(dev: Device, bundle: Path) -> subprocess.CompletedProcess:
    r = dev.cli("ota", "install", str(bundle), "--config", str(dev.config_path))
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _rolled_back(dev: Device) -> bool:
    """Rolled back, reported, and the old version is running again."""
    old_running = any(e.get("type") == "probe" and e.get("probe_version") == "1.0.0" for e in dev.events())
    return old_running and has_event(dev, "rolled_back") and not dev.state().get("update")


def test_healthy_release_commits(tmp_path: Path) -> None:
    dev = _device(tmp_path)
    _install_cli(dev, make_bundle(dev, tmp_path / "v2.tar", "2.0.0"))
    runs = supervise(dev, lambda d: has_event(d, "committed", "2.0.0"), watchdog_s=5)
    assert [r.version for r in runs] == ["2.0.0"]
    state = dev.state()
    assert (
        state["committed_slot"] == "b" and state["committed_version"] == "2.0.0" and state["update"] is None
    )
    assert state["last_result"]["result"] == "committed"
    # a restart after the commit is a normal start, not a trial
    check = dev.boot_check()
    assert "trial" not in check.stdout and dev.running_version() == "2.0.0"


def test_crash_on_start_rolls_back_after_n_starts(tmp_path: Path) -> None:
    dev = _device(tmp_path, max_failed_starts=2)
    _install_cli(dev, make_bundle(dev, tmp_path / "v2.tar", "2.0.1", mode="crash"))
    runs = supervise(dev, _rolled_back, watchdog_s=5)
    assert [r.version for r in runs] == ["2.0.1", "2.0.1", "1.0.0"], runs
    assert [r.returncode for r in runs[:2]] == [3, 3]
    ev = [e for e in dev.events() if e.get("phase") == "rolled_back"]
    # reported to the fleet by the old version once it is back
    assert ev and ev[0]["probe_version"] == "1.0.0" and ev[0]["version"] == "2.0.1"
    assert "crash loop" in ev[0]["reason"]
    assert dev.state()["committed_slot"] == "a"


def test_hang_without_health_rolls_back_at_deadline(tmp_path: Path) -> None:
    dev = _device(tmp_path, trial_deadline_s=2.0, max_failed_starts=3)
    _install_cli(dev, make_bundle(dev, tmp_path / "v2.tar", "2.0.2", mode="hang"))
    t0 = time.monotonic()
    runs = supervise(dev, _rolled_back, watchdog_s=6)
    assert [r.version for r in runs] == ["2.0.2", "1.0.0"], runs
    assert runs[0].returncode == RESTART_EXIT_CODE and not runs[0].killed_by_watchdog
    ev = [e for e in dev.events() if e.get("phase") == "rolled_back"]
    assert ev[0]["probe_version"] == "2.0.2" and "not healthy" in ev[0]["reason"]
    assert any(e.get("phase") == "trial" and e.get("version") == "2.0.2" for e in dev.events())
    assert time.monotonic() - t0 < 30


def test_frozen_release_is_killed_by_watchdog_and_rolled_back(tmp_path: Path) -> None:
    dev = _device(tmp_path, max_failed_starts=2)
    _install_cli(dev, make_bundle(dev, tmp_path / "v2.tar", "2.0.3", mode="freeze"))
    runs = supervise(dev, _rolled_back, watchdog_s=1.5)
    assert [r.version for r in runs] == ["2.0.3", "2.0.3", "1.0.0"], runs
    assert runs[0].killed_by_watchdog and runs[1].killed_by_watchdog
    ev = [e for e in dev.events() if e.get("phase") == "rolled_back"]
    assert "crash loop" in ev[0]["reason"] and ev[0]["probe_version"] == "1.0.0"


def test_failing_commit_hook_rolls_back_with_its_stderr(tmp_path: Path) -> None:
    dev = _device(tmp_path)
    hooks = _hook(tmp_path / "hooks", "commit", 1, "dsp firmware did not answer")
    _install_cli(dev, make_bundle(dev, tmp_path / "v2.tar", "2.0.0", hooks=hooks))
    runs = supervise(dev, _rolled_back, watchdog_s=5)
    assert [r.version for r in runs] == ["2.0.0", "1.0.0"], runs
    ev = [e for e in dev.events() if e.get("phase") == "rolled_back"][0]
    assert "fail-commit" in ev["reason"] and "dsp firmware did not answer" in ev["reason"]
    assert dev.state()["last_result"]["result"] == "rolled_back"


def test_failing_install_hook_aborts_before_switch(tmp_path: Path) -> None:
    dev = _device(tmp_path)
    hooks = _hook(tmp_path / "hooks", "install", 1, "flash refused")
    bundle = make_bundle(dev, tmp_path / "v2.tar", "2.0.0", hooks=hooks)
    r = dev.cli("ota", "install", str(bundle), "--config", str(dev.config_path))
    assert r.returncode == 1 and "flash refused" in r.stderr
    assert dev.running_version() == "1.0.0"
    assert not (dev.root / "slots" / "b").exists()
    assert dev.state()["last_result"]["result"] == "failed"


def test_retry_exit_code_21_then_success(tmp_path: Path) -> None:
    dev = _device(tmp_path)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    counter = tmp_path / "count"
    (hooks / "busy-once").write_text(
        f'#!/bin/sh\n[ "$1" = install ] || exit 0\n'
        f"if [ ! -f {counter} ]; then touch {counter}; exit 21; fi\nexit 0\n"
    )
    (hooks / "busy-once").chmod(0o755)
    _install_cli(dev, make_bundle(dev, tmp_path / "v2.tar", "2.0.0", hooks=hooks))
    assert counter.exists() and dev.running_version() == "2.0.0"


def test_hook_timeout_is_a_failure(tmp_path: Path) -> None:
    from firmware_hooks import runner

    hook = tmp_path / "slow"
    hook.write_text("#!/bin/sh\nsleep 30\n")
    hook.chmod(0o755)
    t0 = time.monotonic()
    with pytest.raises(runner.HookFailed) as err:
        runner.run_hook(hook, "install", {}, timeout_s=0.5)
    assert "timed out" in str(err.value) and time.monotonic() - t0 < 5


async def test_component_install_events_busy_status_and_rollback(tmp_path: Path) -> None:
    dev = _device(tmp_path)
    bundle = make_bundle(dev, tmp_path / "v2.tar", "2.0.0")
    agent = Agent(load_config(dev.config_path))
    events: list[dict] = []
    agent.events.subscribe(events.append)
    comp = OtaComponent(agent)
    agent.add(comp)
    await agent.start()
    try:
        assert set(agent.commands.names()) >= {"ota.install", "ota.status", "ota.rollback"}
        with pytest.raises(CommandError) as err:
            await agent.commands.dispatch("ota.install", {"url": "http://x/b.tar"})
        assert err.value.code == "bad_params"
        assert (await agent.commands.dispatch("ota.install", {"path": str(bundle)}))["accepted"]
        with pytest.raises(CommandError) as err:  # a second update while one is in flight
            await agent.commands.dispatch("ota.install", {"path": str(bundle)})
        assert err.value.code == "busy"
        for _ in range(300):
            if comp.restart_requested:
                break
            await asyncio.sleep(0.05)
        assert comp.restart_requested
        phases = [e["phase"] for e in events if e["type"] == "ota"]
        for p in ("verify", "prepare", "venv", "pip", "copy", "seal", "switch", "switched", "restarting"):
            assert p in phases, phases
        status = await agent.commands.dispatch("ota.status", {})
        assert status["current_slot"] == "b" and status["update"]["phase"] == "trial"
        with pytest.raises(CommandError):  # no new install during a trial
            await agent.commands.dispatch("ota.install", {"path": str(bundle)})
        res = await agent.commands.dispatch("ota.rollback", {"reason": "operator says no"})
        assert res["slot"] == "a" and res["version"] == "1.0.0"
        with pytest.raises(CommandError) as err:  # repeated: nothing older to go back to, nothing changes
            await agent.commands.dispatch("ota.rollback", {})
        assert err.value.code == "no_previous_slot"
        assert dev.running_version() == "1.0.0"
        # explicit: to 2.0.0 in slot b
        forced = await agent.commands.dispatch("ota.rollback", {"force": True})
        assert forced["slot"] == "b" and dev.running_version() == "2.0.0"
    finally:
        await agent.stop()


def test_lock_of_live_process_refuses_dead_one_is_broken(tmp_path: Path) -> None:
    dev = _device(tmp_path)
    bundle = make_bundle(dev, tmp_path / "v2.tar", "2.0.0")
    layout = Layout(dev.root, dev.state_dir)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time\n"
                f"fd = os.open({str(layout.lock_path)!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
                "print('held', flush=True); time.sleep(60)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        opts = InstallOptions.from_config(load_config(dev.config_path))
        with pytest.raises(OtaError) as err:
            Installer(layout, opts).install(bundle)
        assert err.value.code == "busy" and str(holder.pid) in err.value.message
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert layout.lock_path.exists()  # the dead holder's lock file is still there ...
    Installer(layout, opts).install(bundle)  # ... and does not block
    assert dev.running_version() == "2.0.0"
