"""``device-agent diag netcheck``: the network check run on the device itself (no running agent needed).

The other diagnostic actions read the running agent's media pipeline; run them remotely with
``fleetctl diag DEVICE ACTION``.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from device_agent.config import ConfigError, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diag", help="run the network check locally (DNS, broker TCP/TLS)")
    p.add_argument("action", choices=("netcheck",))
    p.add_argument("--config", help="agent.toml (default: the embedded defaults)")
    p.add_argument("--json", action="store_true", help="print the structured result")
    p.set_defaults(func=cmd_diag)


def cmd_diag(args: argparse.Namespace) -> int:
    from device_agent.diag.netcheck import run_netcheck
    from device_agent.diag.results import format_report

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}")
        return 2
    result = asyncio.run(run_netcheck(cfg, None))
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 1 if result["status"] == "fail" else 0
