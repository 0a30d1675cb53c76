"""Durable file writes for the whole product: temp file, fsync, rename, fsync of the directory.

Standard library only and free of intra-package imports: the boot check carries this module
(``ota.layout.boot_check_source``), and device code (state file, slot markers, provisioning keys)
as well as operator code (``fleetctl``: CA keys, pulled logs) import it.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so a rename or a new entry in it survives power loss."""
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | Path, data: bytes | str, mode: int = 0o644, owner: tuple[int, int] | None = None
) -> Path:
    """Write ``data`` to ``path`` so a reader sees the old or the new file, never a mix.

    The temp file is created with ``mode`` from the start (a key is never world-readable,
    not even for a moment) and chowned to ``owner`` (uid, gid) before the rename.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # umask must not loosen or tighten what we asked for
        if owner is not None:
            os.fchown(fd, owner[0], owner[1])
        view = memoryview(raw)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, p)
    fsync_dir(p.parent)
    return p


def atomic_symlink(link: str | Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically: a new link, renamed over the old one."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.new{os.getpid()}")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)
