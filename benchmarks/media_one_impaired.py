"""Four Chromium viewers, one behind an impaired link: do the three clean ones keep what they had alone?

For the agent (``device-agent run``) and the naive aiortc peer (benchmarks.naive_whep), in the same
run, with busy content (tests/support/impaired_media.busy_clip through the file camera, 1280x720
30 fps by default): the server runs in namespace a of an emulated link (tests/support/linkemu.py);
three clean viewers (headless Chromium as it comes, no permission flags, the shipped viewer page)
run in namespace a too, next to the server; the impaired viewer in namespace b, behind the link
(``--loss`` 5 %, ``--delay-ms`` 100 each way, ``--rate-kbps`` 1000, ``--queue-ms`` 300 drop-tail
queue, as benchmarks.media_impaired).

Phases, per server: the three clean viewers join and ramp (until their received bitrates settle:
within 10 % over 5 s, ``--warmup`` to ``--max-warmup`` s), then are measured alone
for ``--seconds``; then the impaired viewer joins and the same three (still connected) are measured
for ``--seconds`` more, the join included. Per viewer and phase (getStats deltas, the page's clock):
received bitrate, presented fps (requestVideoFrameCallback; mean, per-second median and 5th
percentile), freezeCount, totalFreezesDuration, keyFramesDecoded, PLIs and NACKs sent. Printed per
server: the clean viewers' bitrate and fps with the impaired one over alone (target: each >= 0.9),
the keyframes they decoded in each phase (target: none more caused by the impaired one; the
periodic IDR comes every ``keyframe_interval_s``, 2 s), the agent's own IDR accounting per phase
(forced IDRs and keyframe requests by cause, per layer; per viewer session: IDR causes, PLIs, the
keyframe guard's decisions, layer), the encoders' frame rates, the CPU (cores) of the server and of
each Chromium, and the impaired viewer's figures. ``--layers 1`` runs the agent with one encoding
(no low layer) for comparison. Needs root (namespaces, TUN).

Run (as root): .venv/bin/python -m benchmarks.media_one_impaired [--seconds 30] [--servers agent naive]
[--layers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.async_api import async_playwright

from benchmarks._media_common import add_impaired_link_args, cpu_seconds, load, pct
from tests.support.impaired_media import (
    INBOUND_JS,
    PLAIN_FLAGS,
    busy_clip,
    chromium_wrapper,
    close_viewer_page,
    get_json,
    open_viewer_page,
    server_in_namespace,
)
from tests.support.linkemu import ImpairedLink, LinkProfile, NamespaceLoop

TARGET = 0.9  # the clean viewers' bitrate and fps with the impaired viewer, as a share of alone
CLEAN_VIEWERS = 3
SNAPSHOT_JS = f"""async () => ({{now: performance.now(), inbound: await ({INBOUND_JS})(),
  first: window.viewer ? window.viewer.postToFirstFrameMs : null}})"""
SESSION_KEYS = (
    "layer",
    "layer_switches",
    "estimate_bps",
    "video_budget_bps",
    "remb_bps",
    "fraction_lost",
    "rtt_est_ms",
    "protecting",
    "constrained",
    "rate_cuts",
)
SESSION_COUNTERS = ("pli", "fir", "nack", "keyframes_sent", "rtx_sent", "rtx_protective", "rtx_suppressed")


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """``after - before`` for the counters of a ``{name: count}`` dict (zeros left out)."""
    out = {k: v - (before.get(k) or 0) for k, v in (after or {}).items() if isinstance(v, int | float)}
    return {k: v for k, v in out.items() if v}


def viewer_phase(a: dict[str, Any], b: dict[str, Any], presented: list[float]) -> dict[str, Any]:
    """One viewer's figures between two of its snapshots (``SNAPSHOT_JS``); ``presented``: page times."""
    dt = (b["now"] - a["now"]) / 1000.0
    ia, ib = a.get("inbound") or {}, b.get("inbound") or {}

    def d(key: str) -> float | None:
        return None if ib.get(key) is None else ib[key] - (ia.get(key) or 0)

    frames = [t for t in presented if a["now"] <= t < b["now"]]
    bins: list[float] = [0] * max(1, int(dt))
    for t in frames:
        index = int((t - a["now"]) / 1000)
        if index < len(bins):
            bins[index] += 1
    received = d("bytesReceived")
    frozen = d("totalFreezesDuration")
    return {
        "seconds": round(dt, 1),
        "kbps": None if received is None else round(received * 8 / 1000 / dt),
        "fps": round(len(frames) / dt, 1),
        "fps_median": statistics.median(bins),
        "fps_p5": pct(bins, 0.05),
        "freezes": d("freezeCount"),
        "frozen_s": None if frozen is None else round(frozen, 2),
        "keyframes_decoded": d("keyFramesDecoded"),
        "frames_decoded": d("framesDecoded"),
        "frames_dropped": d("framesDropped"),
        "pli_sent": d("pliCount"),
        "nack_sent": d("nackCount"),
        "packets_lost": d("packetsLost"),
        "size": f"{ib.get('frameWidth')}x{ib.get('frameHeight')}",
        "per_second": bins,  # presented frames in each second of the phase
    }


def _fanout_phase(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any]:
    if not b:
        return {}
    a = a or {}
    return {
        "idrs_forced": b.get("idrs_forced", 0) - a.get("idrs_forced", 0),
        "idrs_by_cause": _delta(b.get("idrs_by_cause") or {}, a.get("idrs_by_cause") or {}),
        "keyframe_requests": _delta(b.get("keyframe_requests") or {}, a.get("keyframe_requests") or {}),
        "resyncs": b.get("resyncs", 0) - a.get("resyncs", 0),
        "viewers": b.get("viewers"),
        "target_kbps_end": None if b.get("target_bitrate") is None else b["target_bitrate"] // 1000,
    }


def agent_phase(a: dict[str, Any], b: dict[str, Any], clean_ids: list[str]) -> dict[str, Any]:
    """The agent's IDR accounting between two /api/stats snapshots, per layer and per session."""
    fa, fb = a.get("fanout") or {}, b.get("fanout") or {}
    va, vb = a.get("video") or {}, b.get("video") or {}
    enc_a, enc_b = va.get("encoder") or {}, vb.get("encoder") or {}
    low_a = (va.get("layers") or [{}])[0]
    low_b = (vb.get("layers") or [{}])[0]
    before = {s["id"]: s for s in (a.get("viewers") or {}).get("sessions") or []}
    sessions = []
    for s in (b.get("viewers") or {}).get("sessions") or []:
        p = before.get(s["id"], {})
        row: dict[str, Any] = {"id": s["id"], "clean": s["id"] in clean_ids}
        row.update({k: s.get(k) for k in SESSION_KEYS if k in s})
        row.update({k: (s.get(k) or 0) - (p.get(k) or 0) for k in SESSION_COUNTERS if k in s})
        row["idrs_by_cause"] = _delta(s.get("idrs_by_cause") or {}, p.get("idrs_by_cause") or {})
        row["pli_handling"] = _delta(s.get("pli_handling") or {}, p.get("pli_handling") or {})
        sessions.append(row)
    cam_a, cam_b = va.get("camera") or {}, vb.get("camera") or {}
    dt = max(1e-3, b.get("_t", 0.0) - a.get("_t", 0.0))
    return {
        "camera_fps": round(((cam_b.get("frames") or 0) - (cam_a.get("frames") or 0)) / dt, 1),
        "camera_skipped": (cam_b.get("skipped") or 0) - (cam_a.get("skipped") or 0),
        "high": {
            **_fanout_phase(fa, fb),
            "encoder_keyframes": (enc_b.get("keyframes") or 0) - (enc_a.get("keyframes") or 0),
            "encoder_fps": round(((enc_b.get("frames") or 0) - (enc_a.get("frames") or 0)) / dt, 1),
            "encode_ms": vb.get("encode_ms"),
        },
        "low": {
            **_fanout_phase(fa.get("low_layer"), fb.get("low_layer")),
            "encoder_keyframes": (low_b.get("keyframes") or 0) - (low_a.get("keyframes") or 0),
            "encoder_fps": round(((low_b.get("frames") or 0) - (low_a.get("frames") or 0)) / dt, 1),
        },
        "sessions": sessions,
    }


def _cpu(namespace: str, match: str) -> float:
    """CPU seconds (utime + stime) of the processes in ``namespace`` whose command line has ``match``."""
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=10)
    total = 0.0
    for pid in (int(x) for x in listed.stdout.split()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if match.encode() in f.read():
                    total += cpu_seconds(pid)
        except OSError:
            pass  # gone meanwhile
    return total


def cpu_phase(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """CPU use (cores) per process group between two ``_cpu`` readings (``t``: monotonic time)."""
    dt = max(1e-3, b["t"] - a["t"])
    return {k: round((b[k] - a[k]) / dt, 2) for k in b if k != "t"}


async def _first_frames(pages: list[Any], timeout: float) -> list[float | None]:
    deadline = time.monotonic() + timeout
    firsts: list[float | None] = [None] * len(pages)
    while time.monotonic() < deadline and None in firsts:
        for i, page in enumerate(pages):
            if firsts[i] is None:
                firsts[i] = await page.evaluate("window.viewer && window.viewer.postToFirstFrameMs")
        await asyncio.sleep(0.5)
    return firsts


async def _ramped(pages: list[Any], least: float, most: float) -> float:
    """Wait until every page's received bitrate over the last 5 s is within 10 % of the 5 s before
    (the senders' ramp is over), at least ``least`` and at most ``most`` seconds; returns the wait."""
    started = time.monotonic()
    history: list[list[float]] = []  # bytes received per page, once a second
    while True:
        history.append(
            [float((await p.evaluate(f"({INBOUND_JS})()")).get("bytesReceived") or 0) for p in pages]
        )
        waited = time.monotonic() - started
        if len(history) >= 11 and waited >= least:
            now, mid, old = history[-1], history[-6], history[-11]
            if all(
                n - m > 0 and 0.9 <= (n - m) / max(1.0, m - o) <= 1.1
                for n, m, o in zip(now, mid, old, strict=True)
            ):
                return waited
        if waited >= most:
            return waited
        await asyncio.sleep(1.0 - (time.monotonic() - started) % 1.0)


async def run_server(kind: str, args: argparse.Namespace, clip: Path, tmp: Path) -> dict[str, Any]:
    """Both phases against one server; returns its figures."""
    profile = LinkProfile(
        loss=args.loss, delay_ms=args.delay_ms, rate_kbps=args.rate_kbps, queue_ms=args.queue_ms
    )
    extra = {"encoder": f"layers = {args.layers}\n"} if kind == "agent" else None
    with ImpairedLink(seed=11) as link:
        link.set_both(profile)
        async with async_playwright() as pw:
            near = await pw.chromium.launch(
                executable_path=str(chromium_wrapper(link.ns_a, tmp)), args=PLAIN_FLAGS, headless=True
            )
            far = await pw.chromium.launch(
                executable_path=str(chromium_wrapper(link.ns_b, tmp)), args=PLAIN_FLAGS, headless=True
            )
            probe = NamespaceLoop(link.ns_a)
            opened: list[tuple[Any, Any]] = []
            try:
                with server_in_namespace(link, kind, clip, args.width, args.height, args.fps, extra) as base:

                    def cpu() -> dict[str, float]:
                        return {
                            "t": time.monotonic(),
                            "server": _cpu(link.ns_a, "device-agent" if kind == "agent" else "naive_whep"),
                            "clean_chromium": _cpu(link.ns_a, "chromium"),
                            "impaired_chromium": _cpu(link.ns_b, "chromium"),
                        }

                    async def server_stats() -> dict[str, Any]:
                        if kind != "agent":
                            return {}
                        stats = await probe.run_async(get_json(base + "/api/stats"))
                        return {**stats, "_t": time.monotonic()}

                    async def timeline(phase: str, seconds: float, out: list[dict[str, Any]]) -> None:
                        """Poll the agent every 2 s (both phases alike): targets and each session's layer."""
                        started = time.monotonic()
                        while time.monotonic() - started < seconds - 0.5:
                            await asyncio.sleep(
                                min(2.0, max(0.0, seconds - 0.5 - (time.monotonic() - started)))
                            )
                            if kind != "agent":
                                continue
                            s = await server_stats()
                            fan = s.get("fanout") or {}
                            out.append(
                                {
                                    "phase": phase,
                                    "t": round(time.monotonic() - started, 1),
                                    "high_kbps": (fan.get("target_bitrate") or 0) // 1000,
                                    "low_kbps": ((fan.get("low_layer") or {}).get("target_bitrate") or 0)
                                    // 1000,
                                    "sessions": [
                                        [
                                            x["id"],
                                            x.get("layer"),
                                            (x.get("estimate_bps") or 0) // 1000,
                                        ]
                                        for x in (s.get("viewers") or {}).get("sessions") or []
                                    ],
                                }
                            )

                    for _ in range(CLEAN_VIEWERS):
                        opened.append(await open_viewer_page(near, base))
                    clean_pages = [page for _, page in opened]
                    firsts = await _first_frames(clean_pages, 45)
                    warmup = await _ramped(clean_pages, args.warmup, args.max_warmup)
                    samples: list[dict[str, Any]] = []
                    load_alone = load()
                    stats_a = await server_stats()
                    cpu_a = cpu()
                    snap_a = [await p.evaluate(SNAPSHOT_JS) for p in clean_pages]
                    await timeline("alone", args.seconds, samples)
                    snap_b = [await p.evaluate(SNAPSHOT_JS) for p in clean_pages]
                    stats_b = await server_stats()
                    cpu_b = cpu()
                    link_b = link.stats()
                    clean_ids = [s["id"] for s in (stats_b.get("viewers") or {}).get("sessions") or []]
                    phase2_started = time.monotonic()
                    context, far_page = await open_viewer_page(far, base)
                    opened.append((context, far_page))
                    await timeline("with", args.seconds - (time.monotonic() - phase2_started), samples)
                    snap_c = [await p.evaluate(SNAPSHOT_JS) for p in clean_pages]
                    far_snap = await far_page.evaluate(SNAPSHOT_JS)
                    stats_c = await server_stats()
                    cpu_c = cpu()
                    link_c = link.stats()
                    load_with = load()
                    presented = [await p.evaluate("window.__presented") for p in clean_pages]
                    far_presented = await far_page.evaluate("window.__presented")
                    for ctx, page in opened:
                        await close_viewer_page(ctx, page)
                    opened.clear()
            finally:
                for ctx, page in opened:
                    await close_viewer_page(ctx, page)
                probe.close()
                await near.close()
                await far.close()
    clean = []
    for i, first in enumerate(firsts):
        alone = viewer_phase(snap_a[i], snap_b[i], presented[i])
        with_ = viewer_phase(snap_b[i], snap_c[i], presented[i])
        clean.append(
            {
                "first_frame_ms": None if first is None else round(first),
                "alone": alone,
                "with": with_,
                "kbps_ratio": None if not alone["kbps"] else round((with_["kbps"] or 0) / alone["kbps"], 3),
                "fps_ratio": None if not alone["fps"] else round(with_["fps"] / alone["fps"], 3),
            }
        )
    # the impaired viewer: from its page's start (its join) to the end of the phase
    impaired = viewer_phase({"now": 0.0, "inbound": {}}, far_snap, far_presented)
    impaired["first_frame_ms"] = None if far_snap.get("first") is None else round(far_snap["first"])
    a_to_b_b, a_to_b_c = link_b["a_to_b"], link_c["a_to_b"]
    impaired["link"] = {
        "offered_kbps": round((a_to_b_c["bytes"] - a_to_b_b["bytes"]) * 8 / 1000 / impaired["seconds"]),
        "queue_drops": a_to_b_c["queue_drops"] - a_to_b_b["queue_drops"],
        "lost": a_to_b_c["lost"] - a_to_b_b["lost"],
        "packets": a_to_b_c["packets"] - a_to_b_b["packets"],
    }
    out: dict[str, Any] = {
        "clean": clean,
        "impaired": impaired,
        "warmup_s": round(warmup, 1),
        "cpu_cores": {"alone": cpu_phase(cpu_a, cpu_b), "with": cpu_phase(cpu_b, cpu_c)},
        "load": {"alone": load_alone, "with": load_with},
    }
    if kind == "agent":
        out["agent"] = {
            "alone": agent_phase(stats_a, stats_b, []),
            "with": agent_phase(stats_b, stats_c, clean_ids),
        }
        out["timeline"] = samples
    return out


def summary(kind: str, res: dict[str, Any]) -> list[str]:
    """Readable lines for one server's figures."""
    clean = res["clean"]
    kr = [c["kbps_ratio"] for c in clean if c["kbps_ratio"] is not None]
    fr = [c["fps_ratio"] for c in clean if c["fps_ratio"] is not None]
    verdict = "met" if kr and fr and min(kr) >= TARGET and min(fr) >= TARGET else "NOT met"
    lines = [
        f"{kind}: clean viewers' bitrate with/alone "
        + ", ".join(f"{c['with']['kbps']}/{c['alone']['kbps']} kbit/s = {c['kbps_ratio']}" for c in clean),
        f"{kind}: clean viewers' fps with/alone "
        + ", ".join(f"{c['with']['fps']}/{c['alone']['fps']} = {c['fps_ratio']}" for c in clean),
        f"{kind}: warm-up {res['warmup_s']} s; min ratio bitrate {min(kr) if kr else None}, "
        f"fps {min(fr) if fr else None} "
        f"(target >= {TARGET}): {verdict}",
        f"{kind}: clean viewers' keyframes decoded alone {[c['alone']['keyframes_decoded'] for c in clean]}, "
        f"with {[c['with']['keyframes_decoded'] for c in clean]}; freezes alone "
        f"{[c['alone']['freezes'] for c in clean]}, with {[c['with']['freezes'] for c in clean]}",
    ]
    lines.append(f"{kind}: CPU (cores) alone {res['cpu_cores']['alone']}, with {res['cpu_cores']['with']}")
    imp = res["impaired"]
    lines.append(
        f"{kind}: impaired viewer: first frame {imp['first_frame_ms']} ms, {imp['kbps']} kbit/s, "
        f"fps {imp['fps']} (median {imp['fps_median']}, p5 {imp['fps_p5']}), "
        f"{imp['freezes']} freezes / {imp['frozen_s']} s, "
        f"{imp['keyframes_decoded']} keyframes, {imp['pli_sent']} PLIs, size {imp['size']}, "
        f"link {imp['link']}"
    )
    if "agent" in res:
        for phase in ("alone", "with"):
            a = res["agent"][phase]
            lines.append(
                f"{kind} [{phase}]: camera {a['camera_fps']} fps ({a['camera_skipped']} skipped), high layer "
                f"{a['high']['encoder_fps']} fps, target {a['high']['target_kbps_end']} kbit/s at the end, "
                f"{a['high']['encoder_keyframes']} keyframes encoded, "
                f"{a['high']['idrs_forced']} forced, by cause {a['high']['idrs_by_cause']}, requests "
                f"{a['high']['keyframe_requests']}; low layer {a['low'].get('encoder_fps')} fps, "
                f"{a['low'].get('encoder_keyframes')} keyframes encoded, "
                f"{a['low'].get('idrs_forced')} forced, by cause {a['low'].get('idrs_by_cause')}"
            )
            for s in a["sessions"]:
                role = "clean" if s["clean"] or phase == "alone" else "impaired"
                lines.append(
                    f"    session {s['id']} ({role}): "
                    f"layer {s.get('layer')} switches {s.get('layer_switches')}, estimate "
                    f"{(s.get('estimate_bps') or 0) // 1000} kbit/s, PLIs {s.get('pli')}, IDR causes "
                    f"{s['idrs_by_cause']}, guard {s['pli_handling']}"
                )
    return lines


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="media-one-impaired-") as tmp_name:
        tmp = Path(tmp_name)
        clip = busy_clip(tmp / "busy.mp4", args.width, args.height, args.fps)
        for kind in args.servers:
            results[kind] = await run_server(kind, args, clip, tmp)
            print(f"{kind}: {json.dumps(results[kind])}", flush=True)
            print("\n".join(summary(kind, results[kind])), f"\n({load()})", flush=True)
    if "agent" in results and "naive" in results:

        def worst(kind: str, key: str) -> float | None:
            values = [c[key] for c in results[kind]["clean"] if c[key] is not None]
            return min(values) if values else None

        print(
            "agent vs naive, clean viewers' worst ratio with/alone: bitrate "
            f"{worst('agent', 'kbps_ratio')} vs {worst('naive', 'kbps_ratio')}, fps "
            f"{worst('agent', 'fps_ratio')} vs {worst('naive', 'fps_ratio')}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="each phase")
    parser.add_argument("--warmup", type=float, default=15, help="least wait for the clean viewers' ramp")
    parser.add_argument("--max-warmup", type=float, default=90, help="most wait for it (then measure anyway)")
    parser.add_argument("--loss", type=float, default=0.05)
    add_impaired_link_args(parser)
    parser.add_argument("--layers", type=int, choices=[1, 2], default=2, help="the agent's encoder.layers")
    parser.add_argument("--json", default="", help="also write every figure to this file")
    args = parser.parse_args()
    print(
        f"media_one_impaired: {args.width}x{args.height} {args.fps} fps, {CLEAN_VIEWERS} clean viewers "
        f"+ 1 behind {args.loss:.0%} loss, {args.delay_ms:.0f} ms each way, {args.rate_kbps:.0f} kbit/s, "
        f"{args.queue_ms:.0f} ms queue; warm-up {args.warmup:.0f}-{args.max_warmup:.0f} s "
        f"(until the clean bitrates settle), {args.seconds:.0f} s per phase; {load()}"
    )
    print(
        f"target: the clean viewers' bitrate and fps with the impaired viewer >= {TARGET} x alone, "
        "no IDRs caused by it"
    )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
