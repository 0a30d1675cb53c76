"""pyflakes over the whole project: an undefined name or a leftover import fails the suite, not a device."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [
    "device_agent",
    "hal",
    "ota",
    "provisioning",
    "fleet",
    "firmware_hooks",
    "benchmarks",
    "tools",
    "tests",
]


def test_pyflakes_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pyflakes", *PACKAGES], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
