"""Log pull benchmark: on-device collect+filter+redact+gzip, end-to-end pulls, the rate cap, media impact.

Run: .venv/bin/python -m benchmarks.diag_log_pull [--mb 50]

Everything real: the agent from ``assemble.build_agent`` (fleet link + media with libx264 + NS +
diagnostics) on a real mosquitto, pulled with FleetClient. Peer for the on-device step: ``grep |
gzip -6`` (what an operator runs over ssh; no redaction, no size cap).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from device_agent.diag.logsource import LogQuery, collect_compressed
from fleet.log_pull import pull_logs
from tests.support.diag import diag_rig
from tests.support.mosquitto import Mosquitto
from tests.test_diag_logs import log_lines


def synthetic_log(path: Path, mb: int) -> int:
    block = "".join(log_lines(20_000, time.time() - 3600)).encode()
    written = 0
    with open(path, "wb") as fh:
        while written < mb * 1024 * 1024:
            fh.write(block)
            written += len(block)
    return written


def bench_processing(path: Path, size: int) -> None:
    start = time.perf_counter()
    blob, bundle = collect_compressed(LogQuery(max_bytes=1 << 40), str(path), "", "")
    ours = time.perf_counter() - start
    start = time.perf_counter()
    peer = subprocess.run(
        f"grep -i 'level' {path} | gzip -6 -c", shell=True, capture_output=True, check=True
    ).stdout
    theirs = time.perf_counter() - start
    mb = size / 1e6
    print(
        f"collect+filter+redact+gzip (one process): {ours:6.2f} s {mb / ours:6.1f} MB/s -> "
        f"{len(blob) / 1e6:.2f} MB gz ({size / len(blob):.1f}:1)"
    )
    print(
        f"peer grep | gzip -6 (no redaction)      : {theirs:6.2f} s {mb / theirs:6.1f} MB/s -> "
        f"{len(peer) / 1e6:.2f} MB gz"
    )
    print(f"ratio ours/peer time: {ours / theirs:.2f}")


def media_figures(agent: Any) -> dict[str, Any]:
    video = agent.health.sample()["media"]["video"]
    return {
        "fps": video.get("fps"),
        "jitter_ms": video.get("frame_interval_jitter_ms"),
        "capture_to_packet": video.get("capture_to_packet"),
    }


async def bench_pulls(tmp: Path, mb: int) -> None:
    broker = Mosquitto(tmp / "broker").start()
    try:
        async with diag_rig(tmp / "uncapped", broker, diagnostics={"log_pull_rate_bps": 0}) as rig:
            size = synthetic_log(rig.log_path, mb)
            await asyncio.sleep(3)
            idle = media_figures(rig.agent)
            start = time.perf_counter()
            task = asyncio.create_task(pull_logs(rig.client, rig.device, command_timeout=300))
            await asyncio.sleep(2.5)
            during = media_figures(rig.agent)
            res = await task
            took = time.perf_counter() - start
            print(
                f"uncapped pull of {size / 1e6:.1f} MB ({res.info['bytes'] / 1e6:.2f} MB gz, "
                f"{res.info['total']} chunks): {took:.2f} s end to end, collect {res.info['collect_s']} s, "
                f"{size / 1e6 / took:.1f} MB/s raw"
            )
            print(f"  media idle        : {idle}")
            print(f"  media during pull : {during}")
        async with diag_rig(tmp / "capped", broker) as rig:  # the default cap
            cap = rig.agent.config.diagnostics.log_pull_rate_bps
            raw = synthetic_log(rig.log_path, 4)
            start = time.perf_counter()
            res = await pull_logs(rig.client, rig.device, command_timeout=300)
            took = time.perf_counter() - start - res.info["collect_s"]
            ratio = raw / res.info["bytes"]  # measured compression ratio of this very pull
            gz50 = 50 * 1048576 / ratio
            print(
                f"default cap {cap} B/s: {res.info['bytes']} B gz sent in {took:.2f} s = "
                f"{res.info['bytes'] / took:.0f} B/s (ratio to cap {res.info['bytes'] / took / cap:.2f}); "
                f"measured compression {ratio:.1f}:1, so a 50 MB log (~{gz50 / 1e6:.1f} MB gz) takes "
                f"~{gz50 / cap:.0f} s at this cap"
            )
    finally:
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path = tmp / "agent.log"
        size = synthetic_log(path, args.mb)
        bench_processing(path, size)
        path.unlink()
        asyncio.run(bench_pulls(tmp, args.mb))


if __name__ == "__main__":
    main()
