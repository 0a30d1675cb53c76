"""The two shipped hooks (RAUC system image, peripheral firmware) and the hook runner."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from device_agent.config import load_config
from firmware_hooks import runner
from ota.installer import Installer, InstallOptions
from ota.layout import Layout
from tests.support.ota_harness import Device, make_bundle, provision

RAUC_HOOK = runner.PACKAGED_HOOKS / "rauc-system-image"
PERIPHERAL_HOOK = runner.PACKAGED_HOOKS / "peripheral-firmware"


def _run(hook: Path, phase: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(hook), phase],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_packaged_hooks_are_discovered_and_executable() -> None:
    names = [h.name for h in runner.discover([runner.PACKAGED_HOOKS])]
    assert names == ["peripheral-firmware", "rauc-system-image"]


def test_rauc_hook(tmp_path: Path) -> None:
    # RAUC needs a real A/B rootfs, which this machine does not have: a recording stand-in for the binary.
    log = tmp_path / "rauc.log"
    fake = tmp_path / "rauc"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    fw = tmp_path / "firmware"
    fw.mkdir()
    for phase in runner.PHASES:  # no image: nothing to do in any phase
        assert _run(RAUC_HOOK, phase, {"OTA_FIRMWARE_DIR": str(fw), "RAUC": str(fake)}).returncode == 0
    assert not log.exists()
    (fw / "system-2.0.raucb").write_bytes(b"image")
    state = tmp_path / "state"
    state.mkdir()
    note = state / "ota-reboot-required"
    env = {
        "OTA_FIRMWARE_DIR": str(fw),
        "RAUC": str(fake),
        "OTA_VERSION": "2.0.0",
        "OTA_STATE_DIR": str(state),
    }
    install = _run(RAUC_HOOK, "install", env)
    assert install.returncode == 0 and "REBOOT REQUIRED" in install.stdout
    assert note.read_text().splitlines() == ["version=2.0.0", f"image={fw}/system-2.0.raucb"]
    commit = _run(RAUC_HOOK, "commit", env)  # the booted (old) rootfs is never marked good
    assert commit.returncode == 0 and "not marking" in commit.stdout
    assert log.read_text().splitlines() == [f"install {fw}/system-2.0.raucb"]
    assert _run(RAUC_HOOK, "rollback", env).returncode == 0  # the installed, unbooted image is marked bad
    assert log.read_text().splitlines() == [f"install {fw}/system-2.0.raucb", "status mark-bad other"]
    assert not note.exists()
    refusing = tmp_path / "rauc-refusing"  # e.g. RAUC's D-Bus policy refusing the service user
    refusing.write_text("#!/bin/sh\necho 'rauc: not authorized' >&2\nexit 1\n")
    refusing.chmod(0o755)
    refused = _run(RAUC_HOOK, "install", {**env, "RAUC": str(refusing)})
    assert refused.returncode != 0 and "not authorized" in refused.stderr and not note.exists()
    missing = _run(RAUC_HOOK, "install", {**env, "RAUC": str(tmp_path / "no-rauc")})
    assert missing.returncode == 1 and "rauc is not installed" in missing.stderr


def test_peripheral_firmware_hook_checks_its_version(tmp_path: Path) -> None:
    fw = tmp_path / "firmware" / "peripheral"
    fw.mkdir(parents=True)
    (fw / "VERSION").write_text("dsp-2.1\n")
    (fw / "image.bin").write_bytes(b"\x01\x02")
    dest = tmp_path / "flashed"
    dest.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    env = {
        "OTA_FIRMWARE_DIR": str(tmp_path / "firmware"),
        "OTA_STATE_DIR": str(state),
        "PERIPHERAL_FLASH_CMD": f"cp -t {dest}",
    }
    r = _run(PERIPHERAL_HOOK, "install", env)
    assert r.returncode == 0 and " -> dsp-2.1" in r.stdout
    assert (dest / "image.bin").read_bytes() == b"\x01\x02"
    assert (state / "peripheral-firmware.version").read_text().strip() == "dsp-2.1"
    (dest / "image.bin").unlink()
    r = _run(PERIPHERAL_HOOK, "install", env)  # same version: not flashed again
    assert r.returncode == 0 and "already at dsp-2.1" in r.stdout and not (dest / "image.bin").exists()
    (fw / "VERSION").write_text("dsp-2.2\n")
    r = _run(PERIPHERAL_HOOK, "install", {**env, "PERIPHERAL_FLASH_CMD": "false"})
    assert r.returncode == 1 and "flashing failed" in r.stderr
    assert (state / "peripheral-firmware.version").read_text().strip() == "dsp-2.1"


def test_bundle_firmware_reaches_the_packaged_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = Device(tmp_path / "dev", layer=False)
    provision(dev)
    fw = tmp_path / "fw" / "peripheral"
    fw.mkdir(parents=True)
    (fw / "VERSION").write_text("mic-7\n")
    (fw / "image.bin").write_bytes(b"dsp")
    flashed = tmp_path / "flashed"
    flashed.mkdir()
    monkeypatch.setenv("PERIPHERAL_FLASH_CMD", f"cp -t {flashed}")
    bundle = make_bundle(dev, tmp_path / "v2.tar", "2.0.0", firmware=tmp_path / "fw")
    Installer(
        Layout(dev.root, dev.state_dir), InstallOptions.from_config(load_config(dev.config_path))
    ).install(bundle)
    assert (flashed / "image.bin").read_bytes() == b"dsp"
    assert (dev.state_dir / "peripheral-firmware.version").read_text().strip() == "mic-7"
    assert (dev.root / "current" / "ota-bundle" / "firmware" / "peripheral" / "VERSION").exists()


def test_runner_environment_and_stderr_cap(tmp_path: Path) -> None:
    hook = tmp_path / "h"
    hook.write_text(
        '#!/bin/sh\necho "$OTA_PHASE $OTA_VERSION $1"\nhead -c 10000 /dev/zero | tr "\\0" x >&2\nexit 1\n'
    )
    hook.chmod(0o755)
    with pytest.raises(runner.HookFailed) as err:
        runner.run_hook(hook, "commit", {"OTA_VERSION": "3.1"})
    assert err.value.reason == "exit 1" and len(err.value.stderr) == runner.STDERR_CAP
    ok = tmp_path / "ok"
    ok.write_text('#!/bin/sh\n[ "$OTA_PHASE" = "$1" ] && [ "$OTA_VERSION" = 3.1 ]\n')
    ok.chmod(0o755)
    assert runner.run_hook(ok, "trial", {"OTA_VERSION": "3.1"}).returncode == 0
    with pytest.raises(ValueError):
        runner.run_hook(ok, "bogus", {})
