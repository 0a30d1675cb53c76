"""``ota build``'s wheelhouse check: every wheel installs offline from the wheelhouse alone.

A device runs ``pip install --no-index`` against the bundle's wheels, so a wheelhouse missing a
dependency builds a bundle whose canary fails in pip. The check runs the same resolution first,
``pip install --dry-run --no-index --find-links WHEELHOUSE --ignore-installed`` over every wheel
(dependencies on), for the device's platform and Python when given (``--platform`` /
``--python-version``, binary wheels only).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

_MISSING = re.compile(r"No matching distribution found for ([^\s;]+)")
_WANTED = re.compile(r"satisfies the requirement ([^\s;]+)(?: \(from ([^)]+)\))?")


class WheelhouseIncomplete(ValueError):
    """The wheelhouse does not install offline; ``missing`` names the distribution when pip did."""

    def __init__(self, message: str, missing: str = "") -> None:
        super().__init__(message)
        self.missing = missing


def check_installs(
    wheelhouse: Path, platform: str = "", python_version: str = "", timeout_s: float = 300.0
) -> int:
    """Raise WheelhouseIncomplete unless the wheels resolve offline; returns how many wheels were checked."""
    wheels = sorted(Path(wheelhouse).glob("*.whl"))
    if not wheels:
        raise WheelhouseIncomplete(f"{wheelhouse} holds no wheels (*.whl)")
    argv = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--no-index",
        "--find-links",
        str(wheelhouse),
        "--ignore-installed",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
    ]
    if platform or python_version:
        argv += (
            ["--only-binary=:all:"]
            + (["--platform", platform] if platform else [])
            + (["--python-version", python_version] if python_version else [])
        )
    argv += [str(w) for w in wheels]
    try:
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise WheelhouseIncomplete(f"pip did not resolve {wheelhouse} within {timeout_s:g} s") from None
    if res.returncode == 0:
        return len(wheels)
    err = res.stderr + res.stdout
    wanted = _WANTED.search(err)
    missing = _MISSING.search(err)
    name = (missing.group(1) if missing else wanted.group(1) if wanted else "").strip()
    if name:
        needed_by = f" (needed by {wanted.group(2)})" if wanted and wanted.group(2) else ""
        raise WheelhouseIncomplete(
            f"the wheelhouse lacks {name}{needed_by}: devices install with "
            f"pip --no-index and would fail; add it (pip wheel -w {wheelhouse} ...)",
            name,
        )
    last = next((ln.strip() for ln in reversed(err.splitlines()) if ln.strip()), f"exit {res.returncode}")
    raise WheelhouseIncomplete(f"the wheelhouse does not install offline: {last}")
