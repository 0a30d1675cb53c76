"""Drives a Rollout over the fleet's MQTT link: sends ``ota.install``, follows ``ota`` events."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device_agent import protocol
from fleet.ota.rollout import Rollout
from ota.atomic import write_atomic

log = logging.getLogger(__name__)


def save(rollout: Rollout, path: Path | None) -> None:
    if path is not None:
        write_atomic(path, json.dumps(rollout.to_dict(), indent=2, sort_keys=True) + "\n")


def load(path: Path) -> Rollout:
    return Rollout.from_dict(json.loads(Path(path).read_text()))


async def run_rollout(
    client: Any,
    rollout: Rollout,
    params: dict[str, Any],
    state_path: Path | None = None,
    command_timeout_s: float = 30.0,
    poll_s: float = 0.25,
    on_change: Callable[[Rollout], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> Rollout:
    """Run waves until the rollout completes or halts; ``client`` is a connected FleetClient."""
    changed = asyncio.Event()

    def on_event(msg: Any) -> None:
        try:
            event = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(event, dict) or event.get("type") != "ota":
            return
        device = protocol.device_of(msg.topic)
        rollout.report(
            device,
            str(event.get("phase", "")),
            clock(),
            version=event.get("version"),
            reason=str(event.get("reason") or event.get("code") or ""),
            percent=event.get("percent"),
        )
        changed.set()

    await client.conn.subscribe_wait(protocol.ALL_EVENTS, on_event)

    async def dispatch(device: str) -> None:
        from fleet.client import CommandFailed

        try:
            await client.send_command(device, "ota.install", params, timeout=command_timeout_s)
        except CommandFailed as exc:
            rollout.dispatch_failed(device, f"{exc.code}: {exc.message}", clock())
        changed.set()

    tasks: set[asyncio.Task] = set()
    while not rollout.finished:
        for device in rollout.next_wave(clock()):
            task = asyncio.create_task(dispatch(device))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            changed.set()
        if changed.is_set():
            changed.clear()
            save(rollout, state_path)
            if on_change:
                on_change(rollout)
        try:
            await asyncio.wait_for(changed.wait(), poll_s)
        except TimeoutError:
            pass
    for task in list(tasks):
        task.cancel()
    save(rollout, state_path)
    if on_change:
        on_change(rollout)
    return rollout


def render(rollout: Rollout, width: int = 20) -> str:
    """A status table with a progress bar per device (for ``fleetctl ota status`` and rollout)."""
    c = rollout.counts()
    lines = [
        f"rollout {rollout.version}: {rollout.status}" + (f" ({rollout.reason})" if rollout.reason else ""),
        "  " + ", ".join(f"{k} {v}" for k, v in c.items() if v),
    ]
    for d in rollout.devices:
        st = rollout.per_device[d]
        pct = 100.0 if st.state == "succeeded" else (st.percent or 0.0)
        bar = "#" * int(pct / 100 * width)
        lines.append(
            f"  {d:<24} {st.state:<11} {st.phase:<12} [{bar:<{width}}] {pct:5.1f}%"
            + (f"  {st.reason}" if st.reason else "")
        )
    return "\n".join(lines)
