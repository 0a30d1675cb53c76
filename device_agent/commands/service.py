"""`device-agent install-service`: install the systemd unit, the boot check and the service user."""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from ota.atomic import write_atomic
from ota.layout import boot_check_source

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
) -> list[str]:
    """Write the unit and the boot check, create the user, then enable (and start) the service."""
    done: list[str] = []
    if create_user:
        ensure_user(user)
        done.append(f"user {user}")
    Path(root).mkdir(parents=True, exist_ok=True)
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
    p.set_defaults(func=cmd_install_service)


def cmd_install_service(args: argparse.Namespace) -> int:
    if os.geteuid() != 0 and not args.no_enable:
        print(
            "error: install-service needs root (or --no-enable --no-user to only write files)",
            file=sys.stderr,
        )
        return 1
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
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for item in done:
        print(f"installed {item}")
    return 0
