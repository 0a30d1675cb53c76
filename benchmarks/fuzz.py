"""The long, seeded fuzz run: ``python -m benchmarks.fuzz --minutes N`` (or ``make fuzz MINUTES=N``).

Runs the suite's own property-based fuzz tests (``tests/test_fuzz_<target>.py``, see
``tests/support/fuzzing.py``) far past their bounded default, each target for its share of the
time, in rounds of fresh seeds, and prints per target ``N tried, C crashes, L lost`` with the
seeds it used. A round that fails keeps its pytest output under ``--out`` so the falsifying example
(Hypothesis prints it, with a reproduction blob) is not lost. Exit status 1 when anything crashed,
was lost, or a round failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
# a round at scale 1 is the default run; later rounds are sized to take about this long
ROUND_SECONDS = 240.0


@dataclass
class TargetTally:
    """What the rounds of one target added up to."""

    tried: int = 0
    crashes: int = 0
    lost: int = 0
    rounds: int = 0
    failed_rounds: int = 0
    seconds: float = 0.0
    seeds: list[int] = field(default_factory=list)

    def line(self, name: str) -> str:
        failed = f", {self.failed_rounds} failed rounds" if self.failed_rounds else ""
        return (
            f"{name:8s} {self.tried} tried, {self.crashes} crashes, {self.lost} lost "
            f"({self.rounds} rounds, {self.seconds:.0f} s, seeds {self.seeds[0]}..{self.seeds[-1]}{failed})"
        )


def available_targets() -> list[str]:
    """Every ``tests/test_fuzz_<target>.py`` in the tree."""
    return sorted(p.stem.removeprefix("test_fuzz_") for p in TESTS.glob("test_fuzz_*.py"))


def run_round(target: str, seed: int, scale: float, out: Path) -> tuple[bool, float, dict[str, int]]:
    """One pytest run of one target at ``scale`` with ``seed``; its counts from the report file."""
    report = out / f"{target}-{seed}.jsonl"
    report.unlink(missing_ok=True)
    env = {
        **os.environ,
        "DEVICE_AGENT_FUZZ_SCALE": f"{scale:.3f}",
        "DEVICE_AGENT_FUZZ_SEED": str(seed),
        "DEVICE_AGENT_FUZZ_REPORT": str(report),
    }
    log = out / f"{target}-{seed}.log"
    started = time.monotonic()
    with open(log, "wb") as sink:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-m",
                "fuzz",
                "-o",
                "timeout=0",
                str(TESTS / f"test_fuzz_{target}.py"),
            ],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    seconds = time.monotonic() - started
    counts = {"tried": 0, "crashes": 0, "lost": 0}
    if report.exists():
        for line in report.read_text().splitlines():
            row = json.loads(line)
            for key in counts:
                counts[key] += int(row.get(key, 0))
    if proc.returncode == 0:
        log.unlink()
    report.unlink(missing_ok=True)
    return proc.returncode == 0, seconds, counts


def fuzz_target(target: str, budget_s: float, first_seed: int, out: Path) -> TargetTally:
    """Rounds of ``target`` with seeds from ``first_seed`` until ``budget_s`` is spent."""
    tally = TargetTally()
    scale, deadline, seed = 1.0, time.monotonic() + budget_s, first_seed
    while True:
        ok, seconds, counts = run_round(target, seed, scale, out)
        tally.rounds += 1
        tally.failed_rounds += 0 if ok else 1
        tally.seconds += seconds
        tally.seeds.append(seed)
        tally.tried += counts["tried"]
        tally.crashes += counts["crashes"]
        tally.lost += counts["lost"]
        left = deadline - time.monotonic()
        if left < 0.25 * seconds or left <= 5:
            return tally
        # size the next round to the time left (at most ROUND_SECONDS), from this round's pace
        scale = max(1.0, scale * min(left, ROUND_SECONDS) / max(seconds, 1.0))
        seed += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="total time, shared by the targets")
    parser.add_argument("--seed", type=int, default=1, help="first seed (each round takes the next)")
    parser.add_argument(
        "--targets",
        default=",".join(available_targets()),
        help=f"comma-separated, from: {', '.join(available_targets())}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("/tmp/device-agent-fuzz"),
        help="where failed rounds keep their output",
    )
    parser.add_argument("--json", action="store_true", help="print the tallies as JSON too")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(targets) - set(available_targets()))
    if unknown or not targets:
        parser.error(f"unknown targets: {', '.join(unknown) or '(none given)'}")
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    args.out.mkdir(parents=True, exist_ok=True)
    share = args.minutes * 60.0 / len(targets)
    tallies: dict[str, TargetTally] = {}
    for index, target in enumerate(targets):
        tallies[target] = fuzz_target(target, share, args.seed + 1000 * index, args.out)
        print(tallies[target].line(target), flush=True)
    total = TargetTally(seeds=[args.seed])
    for t in tallies.values():
        total.tried += t.tried
        total.crashes += t.crashes
        total.lost += t.lost
        total.failed_rounds += t.failed_rounds
    print(
        f"all      {total.tried} tried, {total.crashes} crashes, {total.lost} lost"
        + (f"; failed rounds kept in {args.out}" if total.failed_rounds else "")
    )
    if args.json:
        print(json.dumps({name: vars(t) for name, t in tallies.items()}))
    return 1 if total.crashes or total.lost or total.failed_rounds else 0


if __name__ == "__main__":
    raise SystemExit(main())
