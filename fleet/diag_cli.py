"""``fleetctl logs``, ``fleetctl diag``, ``fleetctl view``: remote diagnostics from the operator's shell.

Exit status (fleet/errors.py, the same for every fleetctl command): 0 pass (or warn), 1 a check
failed (or a view got no frames), 3 the broker cannot be reached, 4 no such device, 5 the device is
offline, refused the request, did not answer in time, or the transfer could not be verified.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.errors import Exit, FleetctlError
from fleet.lookup import connect, reachable, resolve
from fleet.profile import add_flags

if TYPE_CHECKING:  # imported when a command runs: fleetctl starts faster
    from fleet.client import FleetClient

ACTIONS = ("selftest", "snapshot", "netcheck", "stats")


def _mqtt_args(p: argparse.ArgumentParser) -> None:
    add_flags(p, "mqtt", "ca", "cert", "key", "db", "db_prefix", "state_dir")
    p.add_argument(
        "--wait",
        action="store_true",
        help="a device that is offline or not yet known: wait for it (up to --timeout), not fail at once",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the device (default 60)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``logs``, ``diag`` and ``view`` subcommands."""
    p = sub.add_parser("logs", help="pull a device's logs (filtered and redacted on the device)")
    p.add_argument("device")
    p.add_argument("--since", help="2h, 30m, an ISO time or epoch seconds")
    p.add_argument("--until", help="2h, 30m, an ISO time or epoch seconds")
    p.add_argument("--level", help="minimum level: debug, info, warning, error, critical")
    p.add_argument("--grep", help="only lines containing TEXT (case-insensitive)")
    p.add_argument("--max-bytes", type=int, help="cap below the device's diagnostics.log_pull_max_bytes")
    p.add_argument(
        "-o", "--output", type=Path, help="output file (.gz keeps it compressed); default DEVICE-TIME.log"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _mqtt_args(p)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("diag", help="run an allow-listed diagnostic action on a device")
    p.add_argument("device")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("-o", "--output", type=Path, help="snapshot: JPEG path (default DEVICE-snapshot.jpg)")
    p.add_argument("--width", type=int, help="snapshot width (default: diagnostics.snapshot_width)")
    p.add_argument("--height", type=int, help="snapshot height (default: diagnostics.snapshot_height)")
    p.add_argument("--json", action="store_true", help="print the structured result as JSON")
    _mqtt_args(p)
    p.set_defaults(func=cmd_diag)

    p = sub.add_parser("view", help="live look at a device's camera over WebRTC (MQTT signaling)")
    p.add_argument("device")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to watch (default 10)")
    p.add_argument("--record", type=Path, help="save the received H.264 to this MP4 (no re-encode)")
    _mqtt_args(p)
    p.set_defaults(func=cmd_view)


def _run(args: argparse.Namespace, body: Callable[[FleetClient], Awaitable[int]]) -> int:
    from fleet.client import CommandFailed
    from fleet.live_view import ViewError
    from fleet.log_pull import TransferError

    args.device = resolve(args, args.device, required=False)  # a name or a unique id prefix

    async def main() -> int:
        client = await connect(args, f"fleetctl {args.command}")
        try:
            await reachable(client, args.device, args.wait, args.timeout)
            return await body(client)
        except (CommandFailed, TransferError, ViewError) as exc:
            raise FleetctlError(Exit.DEVICE, f"{args.device}: {exc.code}: {exc.message}") from None
        finally:
            await client.close()

    return asyncio.run(main())


def cmd_logs(args: argparse.Namespace) -> int:
    from fleet.log_pull import Progress, human, pull_logs

    out = args.output or Path(f"{args.device}-{time.strftime('%Y%m%dT%H%M%S')}.log")

    async def body(client: FleetClient) -> int:
        res = await pull_logs(
            client,
            args.device,
            since=args.since,
            until=args.until,
            level=args.level,
            grep=args.grep,
            max_bytes=args.max_bytes,
            out=out,
            progress=None if args.quiet else Progress(sys.stderr),
            command_timeout=args.timeout,
        )
        info = res.info
        print(
            f"{out}: {info['lines']} lines, {human(info['raw_bytes'])} ({human(info['bytes'])} gzipped, "
            f"{info['total']} chunks, sha256 verified) in {res.seconds:.1f} s"
            + (f"; {len(res.resent)} chunks re-requested" if res.resent else "")
        )
        if info.get("truncated"):
            print(
                f"warning: truncated at the cap of {info['max_bytes']} bytes (newest lines kept, "
                f"{info['dropped_bytes']} older bytes left out)",
                file=sys.stderr,
            )
        if info.get("redacted_lines"):
            print(f"note: {info['redacted_lines']} lines had secrets redacted on the device", file=sys.stderr)
        for src in info.get("sources", []):
            if src.get("status") != "ok":
                print(
                    f"note: {src.get('source')} {src.get('unit') or src.get('path', '')}: "
                    f"{src.get('status')} "
                    f"({src.get('reason', '')})",
                    file=sys.stderr,
                )
        return 0

    return _run(args, body)


def cmd_diag(args: argparse.Namespace) -> int:
    from fleet.log_pull import fetch_transfer
    from ota.atomic import write_atomic

    async def body(client: FleetClient) -> int:
        if args.action == "snapshot":
            size = {k: v for k, v in (("width", args.width), ("height", args.height)) if v}
            res = await fetch_transfer(
                client, args.device, "diag.snapshot", size, command_timeout=args.timeout
            )
            out = args.output or Path(f"{args.device}-snapshot.jpg")
            await asyncio.to_thread(write_atomic, out, res.data)
            if args.json:
                print(json.dumps({**res.info, "path": str(out)}, indent=2))
            else:
                frame = res.info.get("frame", {})
                print(
                    f"{out}: {res.info['width']}x{res.info['height']} JPEG, {len(res.data)} bytes "
                    f"(camera frame {frame.get('width')}x{frame.get('height')}, brightness "
                    f"{frame.get('brightness')}, {res.info.get('age_ms')} ms old)"
                )
            return 0
        params: dict[str, Any] = {"fleet_ts": time.time()} if args.action == "selftest" else {}
        result = await client.send_command(args.device, f"diag.{args.action}", params, timeout=args.timeout)
        from device_agent.diag.results import format_report

        print(json.dumps(result, indent=2) if args.json else format_report(result))
        return 1 if result.get("status") == "fail" else 0

    return _run(args, body)


def cmd_view(args: argparse.Namespace) -> int:
    from fleet.live_view import live_view

    def show(stats: dict[str, Any]) -> None:
        print(
            f"  {stats.get('frames')} frames, packets {stats.get('packetsReceived')} "
            f"lost {stats.get('packetsLost')} jitter {stats.get('jitter')}",
            file=sys.stderr,
        )

    async def body(client: FleetClient) -> int:
        res = await live_view(
            client,
            args.device,
            seconds=args.seconds,
            record=args.record,
            answer_timeout=args.timeout,
            on_stats=show,
        )
        print(res.summary())
        return 0 if res.frames else 1

    return _run(args, body)
