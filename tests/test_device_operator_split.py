"""Device and operator apart: device code never needs fleet/ or the operator's dependencies (the
import rules themselves are rows of tests/test_layering.py), the device CLI runs without them, and
the two copies of the systemd unit never drift."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.test_layering import ROOT, imported_modules, module_name

DEVICE_PACKAGES = ("device_agent", "hal", "ota", "provisioning", "firmware_hooks")
OPERATOR_ONLY = {
    "fleet",
    "sqlalchemy",
    "segno",
    "prometheus_client",
}  # fleet/ and what only it uses ([fleet])

# Refuse the operator's modules on import, then run the device CLI: what a device without the
# [fleet] extra (and without fleet/) sees.
BLOCKED_RUN = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked on a device: {{name}}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
import device_agent.cli
import device_agent.assemble, device_agent.commands.ota
import device_agent.commands.service, device_agent.ota_component
for argv in (["--help"], ["ota", "--help"], ["boot-check", "--help"], ["install-service", "--help"]):
    try:
        device_agent.cli.main(argv)
    except SystemExit as exc:
        assert exc.code == 0, (argv, exc.code)
assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
print("device CLI ok")
"""


def test_device_code_never_imports_the_operator_dependencies() -> None:
    """Third-party side of the split (tests/test_layering.py's rules cover fleet/ and ota/)."""
    bad = []
    for package in DEVICE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, name in imported_modules(
                path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py"
            ):
                if name.split(".")[0] in OPERATOR_ONLY:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, bad


def test_the_device_cli_runs_without_sqlalchemy_segno_or_fleet() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN.format(blocked=sorted(OPERATOR_ONLY))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "device CLI ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_the_blocker_has_teeth() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN.format(blocked=sorted(OPERATOR_ONLY)) + "\nimport fleet.cli\n"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "blocked on a device: fleet" in proc.stderr


def test_operator_dependencies_are_the_fleet_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {d.split(">")[0].split("=")[0].split(";")[0].strip().lower() for d in project["dependencies"]}
    extras = project["optional-dependencies"]
    assert not base & OPERATOR_ONLY
    assert {d.split(">")[0].lower() for d in extras["fleet"]} == OPERATOR_ONLY - {"fleet"}
    assert project["scripts"] == {"device-agent": "device_agent.cli:main", "fleetctl": "fleet.cli:main"}
    assert "'.[test,fleet]'" in (ROOT / "Makefile").read_text()  # development and tests get both


def test_fleetctl_ota_keeps_its_commands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "ota", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("keygen", "build", "sign", "serve", "rollout", "status"):
        assert command in proc.stdout


def test_the_systemd_unit_copy_matches_the_packaged_unit() -> None:
    """device_agent/commands/device-agent.service is the source (package data, what install-service
    renders); systemd/device-agent.service is the copy for people and packagers."""
    source = ROOT / "device_agent" / "commands" / "device-agent.service"
    copy = ROOT / "systemd" / "device-agent.service"
    assert copy.read_bytes() == source.read_bytes(), (
        f"systemd/ drifted: cp {source.relative_to(ROOT)} {copy.relative_to(ROOT)}"
    )
