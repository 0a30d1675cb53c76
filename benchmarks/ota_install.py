"""OTA figures: install + switch time with the agent's own wheels, bytes downloaded, resume cost.

    .venv/bin/python -m benchmarks.ota_install                   # agent wheel, deps from a layer
    .venv/bin/python -m benchmarks.ota_install --wheelhouse DIR  # a full wheelhouse (pip wheel .)

Without ``--wheelhouse`` the bundle carries the agent's own wheel (built here with ``pip wheel
--no-deps``) and the slots take the third-party dependencies from a shared layer
(``ota.slot_extra_paths`` = this venv's site-packages). With a full wheelhouse every dependency
is installed into the slot too, which is what a device without such a layer does.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from device_agent.config import config_from_dict
from fleet.ota.serve import make_app
from ota import bundle as bundle_mod
from ota import signing
from ota.download import CHUNK, download
from ota.installer import Installer, InstallOptions
from ota.layout import Layout, boot_check
from ota.trial import commit

REPO = Path(__file__).resolve().parents[1]


def build_agent_wheel(out: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--disable-pip-version-check",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
    )
    return next(out.glob("device_agent-*.whl"))


class CuttingProxy:
    """Forwards TCP to ``port``; the first connection is cut after ``cut_after`` response bytes."""

    def __init__(self, port: int, cut_after: int) -> None:
        self.port, self.cut_after, self.sent = port, cut_after, []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.sent)
        self.sent.append(0)
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.port)
        up_w.write(await reader.readuntil(b"\r\n\r\n"))
        limit = self.cut_after if index == 0 else None
        while data := await up_r.read(16384):
            if limit is not None and self.sent[index] + len(data) > limit:
                writer.write(data[: limit - self.sent[index]])
                self.sent[index] = limit
                break
            writer.write(data)
            self.sent[index] += len(data)
            await writer.drain()
        writer.close()
        up_w.close()


async def download_figures(bundle: Path, work: Path) -> dict[str, float]:
    size, sha = bundle.stat().st_size, hashlib.sha256(bundle.read_bytes()).hexdigest()
    srv = work / "srv"
    srv.mkdir()
    shutil.copy(bundle, srv / "b.tar")
    runner = web.AppRunner(make_app(srv))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    t0 = time.monotonic()
    full = await download(f"http://127.0.0.1:{port}/b.tar", work / "full.tar", size, sha, reserve_bytes=0)
    full_s = time.monotonic() - t0
    proxy = CuttingProxy(port, size // 2)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/b.tar"
    try:
        await download(url, work / "cut.tar", size, sha, retries=0, reserve_bytes=0)
    except Exception:
        pass
    first = (work / "cut.tar.part").stat().st_size
    resumed = await download(url, work / "cut.tar", size, sha, retries=1, reserve_bytes=0)
    server.close()
    await runner.cleanup()
    missing = size - size // 2
    return {
        "bundle_bytes": size,
        "full_download_bytes": full.bytes_fetched,
        "full_download_s": full_s,
        "cut_after_bytes": first,
        "resume_bytes": resumed.bytes_fetched,
        "resume_wire_bytes": proxy.sent[1],
        "missing_half": missing,
        "resume_over_missing": resumed.bytes_fetched / missing,
        "resume_limit": missing + CHUNK,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--wheelhouse", type=Path, help="a full wheelhouse (pip wheel -w DIR .) instead of a layer"
    )
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ota-bench-"))
    try:
        wh = work / "wheels"
        t0 = time.monotonic()
        if args.wheelhouse:
            shutil.copytree(args.wheelhouse, wh)
            extra: list[str] = []
        else:
            wh.mkdir()
            build_agent_wheel(wh)
            site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
            extra = [str(site)]
        build_s = time.monotonic() - t0
        wheels = sorted(wh.glob("*.whl"))
        signing.generate(work / "k.key", work / "keys" / "k.pub")
        key = signing.load_private(work / "k.key")
        state_dir, root = work / "state", work / "opt"
        cfg = config_from_dict(
            {
                "device": {"state_dir": str(state_dir), "hardware": "bench"},
                "ota": {"root": str(root), "trusted_keys_dir": str(work / "keys"), "slot_extra_paths": extra},
            }
        )
        layout = Layout(root, state_dir)
        opts = InstallOptions.from_config(cfg)
        times = []
        bundle = work / "b.tar"
        for i in range(args.rounds + 1):
            version = f"1.0.{i}"
            bundle_mod.build(bundle, version, wh, ["bench"], keys=[key])
            marks: list[tuple[str, float]] = []
            t0 = time.monotonic()
            Installer(
                layout,
                opts,
                lambda name, info, marks=marks: (
                    name == "verify.progress" or marks.append((name, time.monotonic()))
                ),
            ).install(bundle)
            installed = time.monotonic() - t0
            steps = {a[0]: b[1] - a[1] for a, b in zip(marks, marks[1:], strict=False)}
            t1 = time.monotonic()
            slot, _ = boot_check(layout)
            boot = time.monotonic() - t1
            check = subprocess.run(
                [str(root / "current" / "bin" / "python"), "-m", "device_agent.cli", "--help"],
                capture_output=True,
                text=True,
            )
            assert check.returncode == 0, check.stderr
            commit(layout, opts)
            if i:  # round 0 is the factory install into an empty slot
                times.append((installed, boot))
            print(
                f"round {i}: install+switch {installed:.2f} s, boot check {boot * 1000:.0f} ms, slot {slot}; "
                + ", ".join(f"{k} {v:.2f}" for k, v in steps.items() if v >= 0.005)
            )
        figures = asyncio.run(download_figures(bundle, work))
        inst = sorted(t for t, _ in times)
        print()
        print(
            f"wheels in bundle:            {len(wheels)} "
            f"({'full wheelhouse' if args.wheelhouse else 'agent wheel, deps from a layer'})"
        )
        print(
            f"bundle size:                 {figures['bundle_bytes'] / 1e6:.2f} MB "
            f"(wheel build {build_s:.1f} s)"
        )
        print(
            f"install + switch (median):   {inst[len(inst) // 2]:.2f} s  "
            f"(min {inst[0]:.2f}, max {inst[-1]:.2f}, {len(inst)} rounds)"
        )
        print(f"boot check:                  {sorted(b for _, b in times)[len(times) // 2] * 1000:.0f} ms")
        print(
            f"download, uncut:             {figures['full_download_bytes']} bytes "
            f"in {figures['full_download_s']:.2f} s "
            f"(ratio to bundle {figures['full_download_bytes'] / figures['bundle_bytes']:.4f})"
        )
        print(
            f"cut at 50 %, then resumed:   first attempt kept {figures['cut_after_bytes']} bytes; "
            f"resume fetched {figures['resume_bytes']} body bytes "
            f"({figures['resume_wire_bytes']} on the wire)"
        )
        print(
            f"resume / missing half:       {figures['resume_over_missing']:.4f} "
            f"(limit: missing half + one {CHUNK}-byte chunk = {figures['resume_limit']} bytes)"
        )
        ok = figures["resume_bytes"] <= figures["resume_limit"]
        print(f"resume within the limit:     {'yes' if ok else 'NO'}")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
