"""Install a verified bundle into the inactive slot and switch to it.

Steps (each printed as ``ota: step NAME`` by the CLI, each survives SIGKILL or power loss):

1. ``lock``     one update at a time (an flock the kernel drops when its holder dies)
2. ``verify``   stream the bundle: signature, manifest, compatibility, every payload digest,
                unpacked into a work directory (never a slot); hooks ``verify``
3. ``prepare``  state says ``installing``; the inactive slot's completion marker is removed
                first, then the slot is wiped: from here on the boot path will not pick it
4. ``venv``     a fresh virtualenv (no pip inside: the installer's pip targets it)
5. ``pip``      ``pip install --no-index --find-links wheels/ wheels/*.whl``
6. ``copy``     hooks, firmware and the manifest into the slot; hooks ``install``
7. ``seal``     sync, then the completion marker (atomic): the slot is now bootable
8. ``switch``   state says ``trial`` (with the previous slot), then ``current`` is swapped
                atomically; hooks ``switch`` (a failure rolls back at once)

The trial (restart, health within a deadline, commit or rollback) is ota.trial's job.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_hooks import runner
from ota import bundle as bundle_mod
from ota import signing
from ota import state as sm
from ota.atomic import fsync_dir
from ota.errors import OtaError
from ota.layout import MARKER, Layout, atomic_write_json, finish_rollback
from ota.state import OtaState, Update

log = logging.getLogger(__name__)

StepCallback = Callable[[str, dict[str, Any]], None]


@dataclass
class InstallOptions:
    """What the installer needs from the configuration (``[ota]`` and ``[device]``)."""

    trusted_keys_dir: Path
    hardware: str
    hooks_dirs: list[Path] = field(default_factory=list)  # packaged + configured; the bundle's are added
    hook_timeout_s: float = 300.0
    max_failed_starts: int = 3
    trial_deadline_s: float = 120.0
    slot_extra_paths: list[str] = field(default_factory=list)
    python: str = sys.executable  # interpreter the slot venvs are made from (its pip installs)
    free_space_reserve_bytes: int = 0  # ota.free_space_reserve_bytes: never fill a disk below this

    @classmethod
    def from_config(cls, cfg: Any) -> InstallOptions:
        hooks = [runner.PACKAGED_HOOKS] + ([Path(cfg.ota.hooks_dir)] if cfg.ota.hooks_dir else [])
        return cls(
            trusted_keys_dir=Path(cfg.ota.trusted_keys_dir),
            hardware=cfg.device.hardware,
            hooks_dirs=hooks,
            hook_timeout_s=cfg.ota.hook_timeout_s,
            max_failed_starts=cfg.ota.max_failed_starts,
            trial_deadline_s=cfg.ota.trial_deadline_s,
            slot_extra_paths=list(cfg.ota.slot_extra_paths),
            free_space_reserve_bytes=cfg.ota.free_space_reserve_bytes,
        )


VENV_FACTOR = 2  # a slot venv takes about twice the bundle's payload (wheels unpack bigger)


def _existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def check_install_space(
    needs: list[tuple[Path, int]], reserve: int, freeable: dict[int, int] | None = None
) -> None:
    """Refuse with ``no_space`` unless every filesystem can take what ``needs`` puts on it.

    ``needs`` is (directory, bytes) pairs; pairs on the same filesystem are added up and
    ``freeable`` (bytes per device id, e.g. the inactive slot about to be wiped) is credited.
    """
    per_dev: dict[int, tuple[Path, int]] = {}
    for directory, n in needs:
        d = _existing(directory)
        dev = os.stat(d).st_dev
        per_dev[dev] = (per_dev.get(dev, (d, 0))[0], per_dev.get(dev, (d, 0))[1] + n)
    for dev, (d, n) in per_dev.items():
        free = shutil.disk_usage(d).free + (freeable or {}).get(dev, 0)
        if free - n < reserve:
            raise OtaError(
                "no_space",
                f"{d}: {free} bytes free (counting the inactive slot), the update needs "
                f"{n} (unpacked payload and a new slot) and {reserve} must stay free",
            )


def check_owner(dirs: list[Path], euid: int | None = None, as_root: bool = False) -> None:
    """Refuse (``wrong_user``) to install as a user who does not own the state/slot directories.

    Root installing into a layout owned by the service user would leave root-owned slots and
    lock files that break every later update; ``as_root`` overrides it deliberately.
    """
    euid = os.geteuid() if euid is None else euid
    for d in dirs:
        if not Path(d).exists():
            continue
        owner = os.stat(d).st_uid
        if owner != euid and not as_root:
            raise OtaError(
                "wrong_user",
                f"{d} belongs to uid {owner} but this runs as uid {euid}: run it as "
                f"the service user (e.g. sudo -u device-agent ...), or pass --as-root if the "
                "layout is root-owned on purpose",
            )


class UpdateLock:
    """Exclusive, non-blocking update lock; released by the kernel if the holder dies."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.fd: int | None = None

    def __enter__(self) -> UpdateLock:
        self.layout.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.layout.lock_path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OtaError("busy", f"an update is already in flight (pid {pid})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def env_for(
    layout: Layout,
    manifest_version: str,
    slot: str,
    previous: str | None,
    bundle: Path | str,
    work: Path,
    current_version: str | None,
) -> dict[str, str]:
    """The environment every hook sees: bundle, versions and slots."""
    return {
        "OTA_BUNDLE": str(bundle),
        "OTA_VERSION": manifest_version,
        "OTA_CURRENT_VERSION": current_version or "",
        "OTA_SLOT": slot,
        "OTA_SLOT_PATH": str(layout.slot_path(slot)),
        "OTA_PREVIOUS_SLOT": previous or "",
        "OTA_PREVIOUS_SLOT_PATH": str(layout.slot_path(previous)) if previous else "",
        "OTA_FIRMWARE_DIR": str(work / "firmware"),
        "OTA_HOOKS_DIR": str(work / "hooks"),
        "OTA_ROOT": str(layout.root),
        "OTA_STATE_DIR": str(layout.state_dir),
    }


def slot_hooks(layout: Layout, options: InstallOptions, slot: str) -> list[Path]:
    """Hooks for phases after the switch: packaged, configured, then the ones the bundle carried."""
    return runner.discover([*options.hooks_dirs, layout.slot_path(slot) / "ota-bundle" / "hooks"])


def slot_env(layout: Layout, slot: str, update: Update) -> dict[str, str]:
    bundle_dir = layout.slot_path(slot) / "ota-bundle"
    return env_for(
        layout,
        str(update.version or ""),
        slot,
        update.previous_slot,
        update.bundle or "",
        bundle_dir,
        update.previous_version,
    )


class Installer:
    """Verifies a bundle, installs it into the inactive slot and switches ``current`` to it."""

    def __init__(self, layout: Layout, options: InstallOptions, on_step: StepCallback | None = None) -> None:
        self.layout = layout
        self.options = options
        self.on_step = on_step or (lambda name, info: None)
        self._own_pip = False

    def _step(self, name: str, **info: Any) -> None:
        log.info("ota step %s %s", name, info or "")
        self.on_step(name, info)

    def install(self, bundle_path: Path) -> Update:
        """Run the whole install and switch; returns the update now on trial.

        Raises OtaError with a clear reason; a refused bundle leaves both slots untouched.
        """
        layout = self.layout
        with UpdateLock(layout):
            self._step("lock")
            st = layout.load()
            if st.update is not None and st.in_flight():
                raise OtaError(
                    "busy",
                    f"version {st.update.version} is in {st.state.value}; it must commit or roll back first",
                )
            current = layout.current_slot()
            current_info = layout.slot_info(current) if current else None
            current_version = (current_info or {}).get("version")
            target = layout.other(current)
            work = layout.work_dir / "unpacked"
            # On-device hooks only: the bundle's own hooks are not trusted before verification.
            try:
                runner.run_phase(
                    runner.discover(self.options.hooks_dirs),
                    "download",
                    env_for(layout, "", target, current, bundle_path, work, current_version),
                    self.options.hook_timeout_s,
                )
            except runner.HookFailed as exc:
                raise OtaError("hook_failed", str(exc)) from None
            payload_guess = Path(bundle_path).stat().st_size  # an uncompressed tar: ~ the payload
            target_path = layout.slot_path(target)
            freeable = {os.stat(target_path).st_dev: _tree_bytes(target_path)} if target_path.exists() else {}
            check_install_space(
                [(layout.work_dir, payload_guess), (layout.root, VENV_FACTOR * payload_guess)],
                self.options.free_space_reserve_bytes,
                freeable,
            )
            self._step("verify", bundle=str(bundle_path))
            trusted = signing.load_trusted(self.options.trusted_keys_dir)
            started = time.monotonic()

            def progress(done: int, total: int) -> None:
                self.on_step("verify.progress", {"bytes": done, "total": total})

            manifest = bundle_mod.verify_and_extract(
                bundle_path, trusted, work, self.options.hardware, current_version, progress
            )
            env = env_for(layout, manifest.version, target, current, bundle_path, work, current_version)
            hooks = runner.discover([*self.options.hooks_dirs, work / "hooks"])
            prepared = False
            try:
                runner.run_phase(hooks, "verify", env, self.options.hook_timeout_s)
                self._step("prepare", version=manifest.version, slot=target)
                sm.prepare(layout, st, manifest.version, target, current, current_version, str(bundle_path))
                prepared = True
                self._wipe(target)
                check_install_space(
                    [(layout.root, VENV_FACTOR * sum(p.size for p in manifest.payloads))],
                    self.options.free_space_reserve_bytes,
                )
                self._step("venv", slot=target)
                self._make_venv(target)
                self._step("pip", wheels=len(manifest.wheels()))
                self._pip_install(target, work, manifest.wheels())
                self._step("copy")
                self._copy_bundle_files(target, work)
                runner.run_phase(hooks, "install", env, self.options.hook_timeout_s)
                self._step("seal")
                os.sync()
                atomic_write_json(
                    layout.slot_path(target) / MARKER,
                    {
                        "version": manifest.version,
                        "installed": round(time.time(), 3),
                        "bundle": str(bundle_path),
                    },
                )
            except (OtaError, runner.HookFailed, OSError, subprocess.SubprocessError) as exc:
                reason = exc.message if isinstance(exc, OtaError) else str(exc)
                self._fail(st, manifest.version, target if prepared else None, env, hooks, reason)
                code = (
                    exc.code
                    if isinstance(exc, OtaError)
                    else "hook_failed"
                    if isinstance(exc, runner.HookFailed)
                    else "install_failed"
                )
                raise OtaError(code, reason) from None
            self._step("switch", slot=target)
            update = sm.switch(
                layout,
                st,
                self.options.max_failed_starts,
                self.options.trial_deadline_s,
                round(time.monotonic() - started, 3),
            )
            layout.point_current(target)
            shutil.rmtree(work, ignore_errors=True)
            try:
                runner.run_phase(
                    slot_hooks(layout, self.options, target),
                    "switch",
                    slot_env(layout, target, update),
                    self.options.hook_timeout_s,
                )
            except runner.HookFailed as exc:
                _run_quietly(
                    slot_hooks(layout, self.options, target),
                    "rollback",
                    slot_env(layout, target, update),
                    self.options.hook_timeout_s,
                )
                finish_rollback(layout, st, str(exc))
                raise OtaError("hook_failed", str(exc)) from None
            self._step("switched", slot=target, version=manifest.version)
            return update

    def _wipe(self, slot: str) -> None:
        path = self.layout.slot_path(slot)
        marker = path / MARKER
        if marker.exists():
            marker.unlink()
            fsync_dir(path)
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)

    def _make_venv(self, slot: str) -> None:
        # Fast path: the installer's own pip installs into a pip-less venv (pip --python). A slot
        # made that way has no pip, so when the running interpreter lacks one the new slot gets
        # its own from ensurepip (offline, bundled with Python) and pip runs inside it.
        self._own_pip = not _has_pip(self.options.python)
        _run(
            [
                self.options.python,
                "-m",
                "venv",
                *([] if self._own_pip else ["--without-pip"]),
                str(self.layout.slot_path(slot)),
            ],
            "venv",
        )

    def _pip_install(self, slot: str, work: Path, wheels: list[str]) -> None:
        path = self.layout.slot_path(slot)
        if self.options.slot_extra_paths:  # first, so pip sees the layer's packages as installed
            site = _site_packages(path)
            (site / "_ota_extra_paths.pth").write_text(
                "".join(p + "\n" for p in self.options.slot_extra_paths)
            )
        slot_python = str(path / "bin" / "python")
        pip = (
            [slot_python, "-m", "pip"]
            if self._own_pip
            else [self.options.python, "-m", "pip", "--python", slot_python]
        )
        _run(
            [
                *pip,
                "install",
                "--no-index",
                "--find-links",
                str(work / "wheels"),
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--no-warn-script-location",
                "--quiet",
                *[str(work / w) for w in wheels],
            ],
            "pip install",
        )

    def _copy_bundle_files(self, slot: str, work: Path) -> None:
        dest = self.layout.slot_path(slot) / "ota-bundle"
        for sub in ("hooks", "firmware"):
            if (work / sub).is_dir():
                shutil.copytree(work / sub, dest / sub)
        dest.mkdir(parents=True, exist_ok=True)

    def _fail(
        self,
        st: OtaState,
        version: str,
        target: str | None,
        env: dict[str, str],
        hooks: list[Path],
        reason: str,
    ) -> None:
        self._step("failed", reason=reason)
        _run_quietly(hooks, "failure", env, self.options.hook_timeout_s)
        sm.install_failed(self.layout, st, reason, version)
        if target is not None:  # the half-built inactive slot: never bootable (no marker), free the disk
            shutil.rmtree(self.layout.slot_path(target), ignore_errors=True)
        shutil.rmtree(self.layout.work_dir / "unpacked", ignore_errors=True)


def _has_pip(python: str) -> bool:
    """Whether ``python`` can run ``-m pip`` (a slot made by a previous update cannot)."""
    proc = subprocess.run([python, "-c", "import pip"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc.returncode == 0


def _site_packages(venv: Path) -> Path:
    found = sorted((venv / "lib").glob("python3*/site-packages"))
    if not found:
        raise OtaError("install_failed", f"{venv} has no site-packages")
    return found[0]


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise OtaError(
            "install_failed", f"{what} failed (exit {proc.returncode}): {proc.stdout.strip()[-800:]}"
        )


def _run_quietly(hooks: list[Path], phase: str, env: dict[str, str], timeout_s: float) -> None:
    for hook in hooks:
        try:
            runner.run_hook(hook, phase, env, timeout_s, retries=0)
        except runner.HookFailed as exc:
            log.warning("%s", exc)
