"""``python -m benchmarks [NAME ...]`` (``make bench``): run benchmarks one after another with their defaults.

Without names it runs the quick set (each a minute or less); ``--list`` shows every benchmark with the
first line of its docstring. Each benchmark is also one command of its own, ``python -m benchmarks.NAME``,
whose flags are in its ``--help``; the figures and the commands that produced them are in
docs/performance.md.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the long ones (a soak, the fuzz run, the full fleet ingest, first frame, impaired links) by name only
QUICK = ["audio_hal", "provisioning", "ota_install", "media_latency", "media_cpu", "ns_quality"]


def benchmarks() -> dict[str, str]:
    """Every benchmark module and the first line of its docstring."""
    found = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem.startswith("_") or path.stem == "naive_whep":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: the quick set)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    known = benchmarks()
    if args.list:
        for name, line in known.items():
            print(f"{name:18s} {'(quick) ' if name in QUICK else ''}{line}")
        return 0
    names = args.names or [n for n in QUICK if n in known]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(unknown)} (see --list)")
    failed = []
    for name in names:
        print(f"== python -m benchmarks.{name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], cwd=HERE.parent).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
