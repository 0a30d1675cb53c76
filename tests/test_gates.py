"""The style and type gates, as part of the suite (so CI enforces them): ruff's lint rules, ruff's
formatting, and mypy on the product packages. Zero findings; a failure shows the tools' own output.

Configuration lives in pyproject.toml ([tool.ruff], [tool.ruff.lint], [tool.mypy]); the tools are the
pinned ones of the ``test`` extra, run from this interpreter's environment. mypy keeps its default
incremental cache (.mypy_cache): about 10 s cold, 1-2 s warm.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin/: ruff and mypy come with the test extra


def product_packages() -> list[str]:
    """The packages that ship (pyproject's setuptools include list): mypy checks these."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return [pattern.rstrip("*") for pattern in include]


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / tool
    if not exe.exists():
        pytest.fail(f"{exe} is missing: install the test extra (pip install -e '.[test]')")
    return subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=240)


GATES = {
    "ruff-check": ("ruff", "check", "--no-fix", "--output-format", "concise", "."),
    "ruff-format": ("ruff", "format", "--check", "."),
}


@pytest.mark.parametrize("gate", sorted(GATES))
def test_ruff_gate_is_clean(gate: str) -> None:
    result = _run(*GATES[gate])
    assert result.returncode == 0, f"`{' '.join(GATES[gate])}` failed:\n{result.stdout}{result.stderr}"


def test_mypy_on_the_product_packages_is_clean() -> None:
    packages = product_packages()
    assert {"device_agent", "hal", "fleet", "ota"} <= set(packages), packages
    result = _run("mypy", *packages)
    assert result.returncode == 0, f"`mypy {' '.join(packages)}` failed:\n{result.stdout}{result.stderr}"
