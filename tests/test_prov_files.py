"""The fleet's provisioning registry (claims, devices, audit log) is private like the CA key."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from fleet.provisioning.store import ProvisioningStore, UnsafeStateError
from tests.test_prov_support import run_cli


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _side_files(db: Path) -> list[Path]:
    return [db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal")]


def test_cli_state_dir_and_registry_are_private(tmp_path: Path) -> None:
    state = tmp_path / "fleet-state"
    env = {"FLEETCTL_STATE_DIR": str(state)}
    old = os.umask(0o022)  # the usual umask: files 0644, directories 0755 unless asked otherwise
    try:
        assert run_cli("fleet.cli", "ca", "init", env=env).returncode == 0
        r = run_cli("fleet.cli", "claim", "create", "--group", "lobby", "--count", "2", env=env)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    db = state / "provisioning.db"
    assert _mode(state) == 0o700
    assert _mode(db) == 0o600
    # while a reader holds the database open, a write makes SQLite's -wal and -shm: private too
    reader = sqlite3.connect(db)
    try:
        reader.execute("SELECT count(*) FROM claims").fetchone()
        ProvisioningStore(state).audit("probe")
        side = [p for p in _side_files(db) if p.exists()]
        assert side, "WAL mode makes -wal and -shm files"
        for p in side:
            assert _mode(p) == 0o600, p
    finally:
        reader.close()


def test_wrong_modes_left_by_an_older_version_are_fixed(tmp_path: Path) -> None:
    state = tmp_path / "fleet-state"
    ProvisioningStore(state).audit("created")
    db = state / "provisioning.db"
    os.chmod(state, 0o755)
    os.chmod(db, 0o644)
    leftover = db.with_name(db.name + "-journal")
    leftover.write_bytes(b"")
    os.chmod(leftover, 0o666)
    store = ProvisioningStore(state)
    assert _mode(state) == 0o700 and _mode(db) == 0o600 and _mode(leftover) == 0o600
    assert [e["event"] for e in store.audit_log()] == ["created"]


def test_a_symlinked_registry_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "fleet-state"
    state.mkdir(mode=0o700)
    elsewhere = tmp_path / "shared.db"
    elsewhere.write_bytes(b"")
    (state / "provisioning.db").symlink_to(elsewhere)
    with pytest.raises(UnsafeStateError, match="symbolic link"):
        ProvisioningStore(state)
