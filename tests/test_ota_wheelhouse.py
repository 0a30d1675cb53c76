"""`fleetctl ota build` refuses a wheelhouse that does not install offline (real pip, real wheels)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from fleet.ota.wheelhouse import WheelhouseIncomplete, check_installs
from tests.support.ota_harness import probe_wheel

PY = sys.executable


def _wheel(tmp: Path, name: str, deps: list[str]) -> Path:
    src = tmp / f"src-{name}"
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text("")
    (src / "pyproject.toml").write_text(
        textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{name}"
        version = "1.0"
        dependencies = {deps!r}
    """).replace("'", '"')
    )
    out = tmp / f"built-{name}"
    subprocess.run(
        [
            PY,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--disable-pip-version-check",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
    )
    return next(out.glob("*.whl"))


def _build(wh: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            PY,
            "-m",
            "fleet.cli",
            "ota",
            "build",
            "--version",
            "2.0.0",
            "--wheelhouse",
            str(wh),
            "-o",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_build_refuses_a_wheelhouse_missing_a_dependency(tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    wh.mkdir()
    app = _wheel(tmp_path, "otaapp", ["otadepmissing>=1"])
    (wh / app.name).write_bytes(app.read_bytes())
    with_dep = _wheel(tmp_path, "otadepmissing", [])
    r = _build(wh, tmp_path / "b.tar")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "otadepmissing" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert "incomplete_wheelhouse" in lines[0]
    assert not (tmp_path / "b.tar").exists()
    (wh / with_dep.name).write_bytes(with_dep.read_bytes())  # complete now: builds
    r = _build(wh, tmp_path / "b.tar")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b.tar").exists()


def test_check_counts_wheels_and_names_what_is_missing(tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    wh.mkdir()
    try:
        check_installs(wh)
        raise AssertionError("an empty wheelhouse passed")
    except WheelhouseIncomplete as exc:
        assert "no wheels" in str(exc)
    w = probe_wheel("2.0.0")
    (wh / w.name).write_bytes(w.read_bytes())
    assert check_installs(wh) == 1
    app = _wheel(tmp_path, "otaapp2", ["otadep2-absent"])
    (wh / app.name).write_bytes(app.read_bytes())
    try:
        check_installs(wh)
        raise AssertionError("a wheelhouse missing otadep2-absent passed")
    except WheelhouseIncomplete as exc:
        assert exc.missing.lower().startswith("otadep2")
