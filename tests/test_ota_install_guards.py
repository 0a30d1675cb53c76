"""Install guards: disk space for the unpacked payload and the slot, the installing user, and the
boot-check copy following the committed release."""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from pathlib import Path

import pytest

from device_agent.config import load_config
from ota.errors import OtaError
from ota.installer import Installer, InstallOptions, check_install_space, check_owner
from ota.layout import Layout, atomic_write_json
from ota.trial import commit
from tests.support.ota_harness import Device, make_bundle, provision


def _device(tmp_path: Path) -> Device:
    dev = Device(tmp_path / "dev")
    provision(dev)
    return dev


def test_no_space_for_payload_and_slot_refused_before_anything_is_written(tmp_path: Path) -> None:
    dev = _device(tmp_path)
    bundle = make_bundle(dev, tmp_path / "v2.tar", "2.0.0")
    before, state_before = dev.slot_listing(), dev.state()
    options = InstallOptions.from_config(load_config(dev.config_path))
    # The download check passes for a bundle already on disk; the unpack + venv check must not:
    # leave exactly less than (payload + 2 x payload) above the reserve.
    free = shutil.disk_usage(dev.state_dir).free
    options.free_space_reserve_bytes = free - 2 * bundle.stat().st_size
    with pytest.raises(OtaError) as err:
        Installer(Layout(dev.root, dev.state_dir), options).install(bundle)
    assert err.value.code == "no_space" and "must stay free" in err.value.message
    assert dev.slot_listing() == before and dev.state() == state_before
    assert not (dev.state_dir / "ota-work" / "unpacked").exists()


def test_space_check_adds_up_one_filesystem_and_credits_the_inactive_slot(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    dev = os.stat(tmp_path).st_dev
    check_install_space([(tmp_path / "a" / "not-yet", 1000)], free - 2000)  # missing dirs: nearest parent
    with pytest.raises(OtaError) as err:  # 2 x 1000 on the same filesystem do not fit in 1500
        check_install_space([(tmp_path, 1000), (tmp_path / "x", 1000)], free - 1500)
    assert err.value.code == "no_space"
    check_install_space([(tmp_path, 1000), (tmp_path / "x", 1000)], free - 1500, {dev: 10_000})


def test_owner_check_unit() -> None:
    me = os.geteuid()
    here = Path(__file__).parent
    owner = os.stat(here).st_uid
    check_owner([here], euid=owner)
    with pytest.raises(OtaError) as err:
        check_owner([here], euid=owner + 1)
    assert err.value.code == "wrong_user" and "--as-root" in err.value.message
    check_owner([here], euid=owner + 1, as_root=True)
    check_owner([here / "does-not-exist"], euid=me + 1)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the state dir to another user")
def test_root_cli_install_into_a_service_user_layout_is_refused(tmp_path: Path) -> None:
    dev = _device(tmp_path)
    bundle = make_bundle(dev, tmp_path / "v2.tar", "2.0.0")
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(dev.state_dir, nobody, -1)
    before, lock_stat = dev.slot_listing(), (dev.state_dir / "ota.lock").stat()
    proc = dev.cli("ota", "install", str(bundle), "--config", str(dev.config_path))
    assert proc.returncode == 1 and "REFUSED (wrong_user)" in proc.stderr and f"uid {nobody}" in proc.stderr
    assert (
        dev.slot_listing() == before
        and (dev.state_dir / "ota.lock").stat().st_mtime_ns == lock_stat.st_mtime_ns
    )
    proc = dev.cli("ota", "install", str(bundle), "--config", str(dev.config_path), "--as-root")  # deliberate
    assert proc.returncode == 0, proc.stderr
    assert dev.state()["update"]["version"] == "2.0.0"


def _fake_slot(layout: Layout, slot: str, layout_src: bytes | None) -> None:
    path = layout.slot_path(slot)
    site = path / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    site.mkdir(parents=True)
    if layout_src is not None:
        (site / "ota").mkdir()
        (site / "ota" / "layout.py").write_bytes(layout_src)


def test_commit_updates_the_boot_check_copy(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "opt", tmp_path / "state")
    layout.state_dir.mkdir(parents=True)
    (layout.root / "boot-check.py").parent.mkdir(parents=True)
    (layout.root / "boot-check.py").write_text("# old boot check\n")
    options = InstallOptions(trusted_keys_dir=tmp_path, hardware="x", hooks_dirs=[])
    new_src = b"# boot check of release 2\nprint('ok')\n"
    _fake_slot(layout, "b", new_src)
    atomic_write_json(
        layout.state_path,
        {
            "committed_slot": "a",
            "committed_version": "1.0.0",
            "update": {
                "phase": "trial",
                "version": "2.0.0",
                "target_slot": "b",
                "previous_slot": "a",
                "starts": 1,
            },
        },
    )
    state = commit(layout, options)
    assert state["committed_slot"] == "b"
    assert (layout.root / "boot-check.py").read_bytes() == new_src
    assert sorted(p.name for p in layout.root.iterdir()) == ["boot-check.py", "slots"]  # no temp file left
    # A release that carries no ota/layout.py leaves the copy alone.
    _fake_slot(layout, "a", None)
    atomic_write_json(
        layout.state_path,
        dict(
            layout.load_state(),
            update={
                "phase": "trial",
                "version": "3.0.0",
                "target_slot": "a",
                "previous_slot": "b",
                "starts": 1,
            },
        ),
    )
    commit(layout, options)
    assert (layout.root / "boot-check.py").read_bytes() == new_src
