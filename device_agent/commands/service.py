"""`device-agent install-service`: install the systemd unit, the boot check and the service user."""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from ota.atomic import write_atomic
from ota.layout import MARKER, SLOTS, Layout, atomic_write_json, boot_check_source

HIDDEN_BY_UNIT = ("/home", "/root", "/run/user")  # ProtectHome=yes


class NoSlot(RuntimeError):
    """The root has no complete slot and none was made: the unit's ExecStartPre would fail."""


UNIT_NAME = "device-agent.service"
DEFAULTS = {
    "root": "/opt/device-agent",
    "state_dir": "/var/lib/device-agent",
    "config": "/etc/device-agent/agent.toml",
    "user": "device-agent",
}


def unit_template() -> str:
    """The shipped unit: ``device-agent.service`` next to this module (package data; the source of
    ``systemd/device-agent.service``, which tests/test_device_operator_split.py keeps identical)."""
    return (Path(__file__).parent / UNIT_NAME).read_text()


def render_unit(
    root: str, state_dir: str, config: str, user: str, watchdog_s: int = 30, python: str = "/usr/bin/python3"
) -> str:
    """The unit with this installation's paths substituted for the defaults."""
    text = unit_template()
    text = text.replace("/usr/bin/python3 ", f"{python} ", 1)
    text = text.replace(DEFAULTS["config"], config).replace(DEFAULTS["state_dir"], state_dir)
    text = text.replace(DEFAULTS["root"], root)
    text = text.replace("User=device-agent", f"User={user}").replace("Group=device-agent", f"Group={user}")
    if Path(state_dir).name != "device-agent" or str(Path(state_dir).parent) != "/var/lib":
        # StateDirectory= only manages /var/lib/NAME; other locations must be writable explicitly.
        text = text.replace(
            "StateDirectory=device-agent\nStateDirectoryMode=0750\n", f"ReadWritePaths={state_dir}\n"
        )
    return text.replace("WatchdogSec=30", f"WatchdogSec={watchdog_s}")


def ensure_user(user: str) -> None:
    """Create the system user (no login, no home) in the ``audio`` and ``video`` groups."""
    groups = [g for g in ("audio", "video") if _group_exists(g)]
    try:
        pwd.getpwnam(user)
        if groups:
            subprocess.run(["usermod", "-a", "-G", ",".join(groups), user], check=True)
    except KeyError:
        cmd = (
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
            ]
            + (["--groups", ",".join(groups)] if groups else [])
            + [user]
        )
        subprocess.run(cmd, check=True)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def complete_slot(root: str) -> str | None:
    """A complete slot under ``root`` (the boot check's test: marker and ``bin/python``), or None."""
    layout = Layout(root, "/nonexistent")
    return next((s for s in SLOTS if layout.slot_info(s) is not None), None)


def adopt_installation(root: str, python: str = sys.executable) -> tuple[Path, list[str]]:
    """Make this installation (the environment ``pip install device-agent`` went into) slot ``a``:
    a virtualenv of the same interpreter whose ``.pth`` adds this environment's site-packages
    (``site.addsitedir``, so editable installs work too), sealed with the slot marker, ``current``
    pointing at it. The first OTA update then installs a full release into slot ``b``; the
    adopted slot stays the rollback target until an update replaces it. Returns the slot and the
    site directories it reads. Raises OSError or CalledProcessError."""
    from device_agent import __version__

    layout = Layout(root, "/nonexistent")
    slot = layout.slot_path("a")
    if slot.exists():
        shutil.rmtree(slot)  # incomplete (no marker): rebuilt
    slot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [python, "-m", "venv", "--without-pip", str(slot)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    sites = list(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")))
    found = sorted((slot / "lib").glob("python3*/site-packages"))
    if not found:
        raise OSError(f"{slot} has no site-packages after python -m venv")
    lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in sites)
    (found[0] / "_device_agent_adopted.pth").write_text(lines)
    probe = subprocess.run(
        [str(slot / "bin" / "python"), "-c", "import device_agent.cli"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0:
        raise OSError(f"the adopted slot cannot import device_agent: {probe.stderr.strip()[-300:]}")
    atomic_write_json(
        slot / MARKER,
        {"version": __version__, "installed": round(time.time(), 3), "adopted": sys.prefix, "sites": sites},
    )
    layout.point_current("a")
    return slot, sites


def install(
    unit_dir: Path,
    root: str,
    state_dir: str,
    config: str,
    user: str,
    create_user: bool,
    enable: bool,
    start: bool,
    watchdog_s: int,
    python: str,
    adopt: bool = True,
    warnings: list[str] | None = None,
) -> list[str]:
    """Write the unit and the boot check, create the user, then enable (and start) the service.

    A root without a complete slot gets this installation as slot ``a`` (:func:`adopt_installation`)
    unless ``adopt`` is False: then :class:`NoSlot` is raised before anything is written, since
    the unit's ExecStartPre (the boot check) would refuse to start."""
    done: list[str] = []
    warnings = warnings if warnings is not None else []
    if complete_slot(root) is None and not adopt:
        raise NoSlot(
            f"no complete slot under {Path(root) / 'slots'}: the unit's boot check (ExecStartPre) would "
            "refuse to start. Install a release first (device-agent ota install BUNDLE --config "
            f"{config}), or run install-service without --no-adopt to use this installation as slot a"
        )
    if create_user:
        ensure_user(user)
        done.append(f"user {user}")
    Path(root).mkdir(parents=True, exist_ok=True)
    Path(state_dir).mkdir(parents=True, exist_ok=True)  # the boot check writes its state there
    if complete_slot(root) is None:
        slot, sites = adopt_installation(root)
        done.append(f"slot {slot} (this installation, {sys.prefix}, version {_version()})")
        interpreter = os.path.realpath(slot / "bin" / "python")
        for d in [interpreter, *sites]:
            if any(d == h or d.startswith(h + "/") for h in HIDDEN_BY_UNIT):
                warnings.append(
                    f"{d} is under /{d.split('/')[1]}, which the unit hides (ProtectHome=yes): the "
                    "service cannot run from there; install Python and device-agent outside /home and /root"
                )
    boot_check = Path(root) / "boot-check.py"
    write_atomic(boot_check, boot_check_source())
    done.append(f"boot check {boot_check}")
    if create_user:
        for path in (root, state_dir):
            Path(path).mkdir(parents=True, exist_ok=True)
            shutil.chown(path, user, user)
    unit = Path(unit_dir) / UNIT_NAME
    write_atomic(unit, render_unit(root, state_dir, config, user, watchdog_s, python).encode())
    done.append(f"unit {unit}")
    if enable:
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "enable", *(["--now"] if start else []), UNIT_NAME], check=True)
        done.append("enabled" + (" and started" if start else ""))
    return done


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("install-service", help="install and enable the systemd unit (as root)")
    p.add_argument("--unit-dir", type=Path, default=Path("/etc/systemd/system"))
    p.add_argument("--root", default=DEFAULTS["root"], help="OTA root (slots, current link)")
    p.add_argument("--state-dir", default=DEFAULTS["state_dir"])
    p.add_argument("--config", default=DEFAULTS["config"])
    p.add_argument("--user", default=DEFAULTS["user"])
    p.add_argument("--watchdog-sec", type=int, default=30)
    p.add_argument("--python", default="/usr/bin/python3", help="interpreter for the boot check")
    p.add_argument("--no-user", action="store_true", help="do not create the service user")
    p.add_argument("--no-enable", action="store_true", help="write files only (no systemctl)")
    p.add_argument("--now", action="store_true", help="also start the service")
    p.add_argument(
        "--no-adopt",
        action="store_true",
        help="refuse when ROOT has no complete slot (default: this installation becomes slot a)",
    )
    p.set_defaults(func=cmd_install_service)


def cmd_install_service(args: argparse.Namespace) -> int:
    if os.geteuid() != 0 and not args.no_enable:
        print(
            "error: install-service needs root (or --no-enable --no-user to only write files)",
            file=sys.stderr,
        )
        return 1
    warnings: list[str] = []
    try:
        done = install(
            args.unit_dir,
            args.root,
            args.state_dir,
            args.config,
            args.user,
            not args.no_user,
            not args.no_enable,
            args.now,
            args.watchdog_sec,
            args.python,
            adopt=not args.no_adopt,
            warnings=warnings,
        )
    except NoSlot as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        print(
            f"error: {' '.join(map(str, exc.cmd))} failed: {detail[-1] if detail else exc}", file=sys.stderr
        )
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for item in done:
        print(f"installed {item}")
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not Path(args.config).exists():
        print(
            f"warning: {args.config} does not exist yet: the service exits 78 (configuration error) "
            "until it does (device-agent provision writes it; keys: docs/configuration.md)",
            file=sys.stderr,
        )
    return 0


def _version() -> str:
    from device_agent import __version__

    return __version__
