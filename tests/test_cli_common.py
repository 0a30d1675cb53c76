"""What both command lines share (device_agent/subcommands.py): --version, one-line usage errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from device_agent.subcommands import package_version

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("module,prog", [("device_agent.cli", "device-agent"), ("fleet.cli", "fleetctl")])
def test_version(module: str, prog: str) -> None:
    proc = _run(module, "--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"{prog} {package_version()}"
    assert package_version() != "0+unknown"  # the test environment installs the package


def test_a_broker_url_the_transport_refuses_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = _run("fleet.cli", "serve", "--mqtt", "http://broker.example", "--db", f"sqlite:///{tmp_path}/f.db")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "fleetctl: error: mqtt url 'http://broker.example': expected mqtt://host[:port] or mqtts://host[:port]"
    ]
