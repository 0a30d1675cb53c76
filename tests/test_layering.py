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
    Rule(
        "hal",
        frozenset({"hal"}),
        "the HAL stands alone: it takes plain arguments and settings dataclasses, never agent types",
    ),
    Rule(
        "ota",
        frozenset({"ota", "firmware_hooks"}),
        "ota is a library below the agent: device_agent binds it (ota_component.py, commands/ota.py), "
        "never the other way; the operator's side is fleet/ota",
    ),
    Rule(
        "firmware_hooks",
        frozenset({"firmware_hooks"}),
        "the hook runner stands alone (ota and the hooks use it)",
    ),
    Rule(
        "device_agent",
        frozenset({"device_agent", "hal", "ota", "provisioning"}),
        "device code never imports the operator's fleet/ (a device installs without the [fleet] extra)",
    ),
    Rule(
        "provisioning",
        frozenset({"provisioning", "device_agent", "hal", "ota"}),
        "device code never imports the operator's fleet/ (a device installs without the [fleet] extra)",
    ),
]


# No cycle between top-level packages: every import between two of them goes one way. These
# back edges existed when the rule was written (package pair, the direction that is the debt); the
# test ignores them and fails on any other import that closes a cycle.
KNOWN_BACK_EDGES = {
    (
        "device_agent",
        "provisioning",
    ): "assemble.py adds the renewal component, diag/redact.py reuses the claim "
    "token pattern, fleetlink reads the identity; provisioning builds on "
    "device_agent.config",
    ("tools", "benchmarks"): "tools/ns_train/evaluate.py reuses the benchmark's reference denoisers",
    ("tests", "benchmarks"): "tests check benchmarks' own measuring code (test_ns_benchmark); benchmarks run "
    "on tests/support's real brokers and ALSA files",
}


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
                base = package[: len(package) - node.level + 1]
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
    source = (
        "from . import base\nfrom ..encoder import annexb\n"
        "def f():\n    import device_agent.config\n"
        "if TYPE_CHECKING:\n    from ota.bundle import Bundle\n"
    )
    assert [name for _, name in imported_modules(source, "hal.camera.x")] == [
        "hal.camera",
        "hal.encoder",
        "device_agent.config",
        "ota.bundle",
    ]
    assert [name for _, name in imported_modules("from . import y", "hal.audio", is_package=True)] == [
        "hal.audio"
    ]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.package)
def test_layering(rule: Rule) -> None:
    assert (ROOT / rule.package).is_dir(), f"rule for a package that does not exist: {rule.package}"
    found = violations(rule)
    assert not found, f"{rule.package}: {rule.why}:\n  " + "\n  ".join(found)


def package_imports() -> dict[tuple[str, str], list[str]]:
    """(importing top-level package, imported one) -> the import sites, over the whole tree."""
    own = project_packages()
    edges: dict[tuple[str, str], list[str]] = {}
    for top in sorted(own):
        if not (ROOT / top).is_dir():
            continue
        for path in sorted((ROOT / top).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            for line, name in imported_modules(source, module_name(path), path.name == "__init__.py"):
                other = name.split(".")[0]
                if other in own and other != top:
                    edges.setdefault((top, other), []).append(
                        f"{path.relative_to(ROOT)}:{line} imports {name}"
                    )
    return edges


def find_cycle(edges: set[tuple[str, str]]) -> list[str] | None:
    """One cycle of the directed graph ``edges`` as [a, b, ..., a], or None."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_find_cycle() -> None:
    assert find_cycle({("a", "b"), ("b", "c")}) is None
    assert find_cycle({("a", "b"), ("b", "c"), ("c", "a")}) == ["a", "b", "c", "a"]


def test_no_cycle_between_top_level_packages() -> None:
    edges = package_imports()
    cycle = find_cycle(set(edges) - set(KNOWN_BACK_EDGES))
    if cycle:
        sites = [site for a, b in zip(cycle, cycle[1:], strict=False) for site in edges[(a, b)][:3]]
        raise AssertionError(f"import cycle {' -> '.join(cycle)}:\n  " + "\n  ".join(sites))
