"""Layering rules, checked by an AST scan of the source tree (every import, including lazy ones
inside functions and ``TYPE_CHECKING`` blocks).

Each rule says which of the project's own top-level packages a package may import; the standard
library and third-party packages are always allowed. To add a rule, add a row to ``RULES``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Rule:
    package: str  # a top-level package of the project
    may_import: frozenset[str]  # project packages it may import (itself included)
    why: str


RULES = [
    Rule("hal", frozenset({"hal"}),
         "the HAL stands alone: it takes plain arguments and settings dataclasses, never agent types"),
    Rule("ota", frozenset({"ota", "firmware_hooks"}),
         "ota is a library below the agent: device_agent binds it (ota_component.py, commands/ota.py), "
         "never the other way; the operator's side is fleet/ota"),
    Rule("firmware_hooks", frozenset({"firmware_hooks"}), "the hook runner stands alone (ota and the hooks use it)"),
    Rule("device_agent", frozenset({"device_agent", "hal", "ota", "provisioning"}),
         "device code never imports the operator's fleet/ (a device installs without the [fleet] extra)"),
    Rule("provisioning", frozenset({"provisioning", "device_agent", "hal", "ota"}),
         "device code never imports the operator's fleet/ (a device installs without the [fleet] extra)"),
]


def project_packages() -> set[str]:
    """Top-level packages and modules of this repository (anything else is stdlib or third-party)."""
    names = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    names |= {p.stem for p in ROOT.glob("*.py")}
    return names


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source`` of ``module``; relative imports
    are resolved against its package."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def violations(rule: Rule) -> list[str]:
    own = project_packages()
    out = []
    for path in sorted((ROOT / rule.package).rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for line, name in imported_modules(source, module_name(path), path.name == "__init__.py"):
            top = name.split(".")[0]
            if top in own and top not in rule.may_import:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return out


def test_the_scan_sees_every_import_and_resolves_relative_ones() -> None:
    assert {"hal", "device_agent", "ota", "fleet", "provisioning", "tests"} <= project_packages()
    source = ("from . import base\nfrom ..encoder import annexb\n"
              "def f():\n    import device_agent.config\n"
              "if TYPE_CHECKING:\n    from ota.bundle import Bundle\n")
    assert [name for _, name in imported_modules(source, "hal.camera.x")] == [
        "hal.camera", "hal.encoder", "device_agent.config", "ota.bundle"]
    assert [name for _, name in imported_modules("from . import y", "hal.audio", is_package=True)] == ["hal.audio"]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.package)
def test_layering(rule: Rule) -> None:
    assert (ROOT / rule.package).is_dir(), f"rule for a package that does not exist: {rule.package}"
    found = violations(rule)
    assert not found, f"{rule.package}: {rule.why}:\n  " + "\n  ".join(found)
