"""`device-agent factory-reset`: wipe the device identity and the agent configuration, safely.

Only files this project creates are removed (never a recursive delete of a configurable path):
the identity files, the identity directory when it is then empty, and the configuration file.
The key is overwritten before it is unlinked (best effort: flash wear levelling may keep copies).
"""

from __future__ import annotations

import os
from pathlib import Path

from device_agent.config import AgentConfig, ConfigError, load_config
from provisioning.identity import IdentityStore


def reset_targets(config_path: Path, identity_dir: Path | None = None) -> tuple[list[Path], Path | None]:
    """(files that exist and would be removed, identity directory)."""
    cfg: AgentConfig | None
    try:
        cfg = load_config(config_path) if config_path.exists() else load_config(None)
    except ConfigError:
        cfg = None  # a broken configuration must not block a reset
    if identity_dir is None and cfg is not None:
        identity_dir = cfg.provisioning.resolve_identity_dir(cfg.device.state_dir)
    files: list[Path] = []
    if identity_dir is not None:
        files += [p for p in IdentityStore(identity_dir).files() if p.exists() or p.is_symlink()]
    if config_path.exists():
        files.append(config_path)
    return files, identity_dir


def _shred(path: Path) -> None:
    try:
        if path.is_file() and not path.is_symlink():
            size = path.stat().st_size
            with open(path, "r+b") as f:
                f.write(b"\0" * size)
                f.flush()
                os.fsync(f.fileno())
    except OSError:
        pass


def factory_reset(config_path: Path, identity_dir: Path | None = None) -> list[Path]:
    """Remove identity and configuration; returns what was removed."""
    files, ident_dir = reset_targets(config_path, identity_dir)
    removed = []
    for p in files:
        if p.name.startswith("device.key"):
            _shred(p)
        p.unlink(missing_ok=True)
        removed.append(p)
    if ident_dir is not None and ident_dir.is_dir() and not any(ident_dir.iterdir()):
        ident_dir.rmdir()
    return removed
