"""Delay from a viewer's freezes to the P2 alert in the fleet store, and to its clear, with the shipped rule.

The run of tests/support/freeze_alert.py (agent, mosquitto and ``fleetctl serve`` with SQLite in
one namespace, headless Chromium on the shipped page behind the emulated link in the other; the
link down ``--outage`` s in every ``--period`` s until the alert is stored, then clean) with
``freeze_rate_high`` as shipped: a 60 s window and a 10 s hold (``--window``, ``--hold`` to try
others), the viewer watching a clean link for a whole window first (``--clean``: a window rule is
silent until it has watched one). Target (issue 21): alert stored within the hold + 10 s of the
first outage. Needs root (namespaces, TUN).

Run: .venv/bin/python -m benchmarks.freeze_alert [--window 60] [--hold 10] [--runs 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tests.support.freeze_alert import freeze_alert_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=60.0, help="rule window (s)")
    parser.add_argument("--hold", type=float, default=10.0, help="rule hold (s)")
    parser.add_argument(
        "--clean", type=float, default=None, help="clean viewing first (s; default: the window)"
    )
    parser.add_argument("--outage", type=float, default=1.5, help="link down this long (s)...")
    parser.add_argument("--period", type=float, default=3.0, help="... in every period (s)")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    for i in range(args.runs):
        run = freeze_alert_run(
            Path(tempfile.mkdtemp(prefix="freeze-alert-")),
            window_s=args.window,
            hold_s=args.hold,
            clear_within_s=args.window + 60,
            clean_s=args.window if args.clean is None else args.clean,
            outage_s=args.outage,
            period_s=args.period,
        )
        raised, stored, cleared = run["raised_s"], run["stored_s"], run["cleared_s"]
        verdict = "within" if raised is not None and stored <= args.hold + 10 else "OVER"
        print(
            f"run {i + 1}: window {args.window:.0f} s, hold {args.hold:.0f} s, "
            f"{args.window if args.clean is None else args.clean:.0f} s clean first, down {args.outage:g} s "
            f"every {args.period:g} s: raised "
            f"{'-' if raised is None else f'{raised:.1f}'} s after the first outage, in the store by "
            f"{stored:.1f} s ({verdict} hold + 10 s), cleared "
            f"{'-' if cleared is None else f'{cleared:.1f}'} s after the link was restored"
        )


if __name__ == "__main__":
    main()
