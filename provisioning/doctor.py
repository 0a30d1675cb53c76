"""`device-agent doctor`: a checklist a technician can read aloud, each line pass/fail with the fix.

Order: identity, clock, broker (mutual TLS), disk, noise-suppression model, then the hardware
(microphone level, speaker tone, camera frame), which is slowest and may need a person nearby.
Hardware goes through the HAL factories (``hal.audio.factory``, ``hal.camera.factory``); a check
whose factory is not installed is reported as skipped, not passed.

Clock, disk, microphone level and camera frame are judged by the checks library the self-test
uses too (``device_agent.checks``: one ``Check`` type, one set of thresholds). The doctor's lines
are pass / fail / skip: a check's warning is a passing line whose detail says what is off.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from device_agent import checks
from device_agent.checks import FAIL, PASS, SKIP, WARN, Check
from device_agent.checks.thresholds import MIC_SPEECH_MIN_DBFS
from device_agent.config import AgentConfig
from device_agent.diag.frames import frame_stats
from device_agent.fleetlink.mqtt import MqttClient, MqttError, parse_broker_url, tls_context
from hal.audio.factory import create_sink, create_source
from hal.camera.factory import create_camera
from provisioning.identity import IdentityError, IdentityStore

__all__ = ["FAIL", "PASS", "SKIP", "Check", "as_json", "render", "run_doctor"]


def _line(check: Check, name: str) -> Check:
    """A library check as a doctor line: the doctor's name for it, and a warning shown as a pass
    (its detail says what is off)."""
    return dataclasses.replace(check, name=name, status=PASS if check.status == WARN else check.status)


async def check_identity(cfg: AgentConfig) -> Check:
    store = IdentityStore(cfg.provisioning.resolve_identity_dir(cfg.device.state_dir))
    try:
        ident = await asyncio.to_thread(store.load)
    except IdentityError as exc:
        return Check(
            "Identity",
            FAIL,
            str(exc),
            fix="provision the device: device-agent provision --claim TOKEN "
            "--fleet HOST (factory-reset first if it was provisioned)",
        )
    mode = stat.S_IMODE(store.key_path.stat().st_mode)
    if mode & 0o077:
        return Check(
            "Identity",
            FAIL,
            f"the device key {store.key_path} is readable by others (mode {mode:o})",
            fix=f"chmod 600 {store.key_path}",
        )
    days = ident.days_left()
    if days <= 0:
        return Check(
            "Identity",
            FAIL,
            f"device {ident.device_id}: certificate expired on {ident.not_after:%Y-%m-%d}",
            fix="the fleet must issue a new one: factory-reset and provision with a new claim token",
        )
    if ident.device_id != cfg.device.id:
        return Check(
            "Identity",
            FAIL,
            f"certificate is for {ident.device_id} but the configuration says device.id = {cfg.device.id!r}",
            fix=f'set device.id = "{ident.device_id}"',
        )
    note = " (renewal due)" if days <= cfg.provisioning.renew_before_days else ""
    return Check(
        "Identity",
        PASS,
        f"device {ident.device_id}, certificate valid until "
        f"{ident.not_after:%Y-%m-%d} ({days:.0f} days){note}",
    )


async def check_clock(cfg: AgentConfig, now: float | None = None) -> Check:
    """After ``CLOCK_FLOOR``, after the certificate's start (when provisioned), NTP state."""
    store = IdentityStore(cfg.provisioning.resolve_identity_dir(cfg.device.state_dir))
    try:
        ident = await asyncio.to_thread(store.load)
        not_before = ident.cert.not_valid_before_utc
    except IdentityError:
        not_before = None
    sync = await asyncio.to_thread(checks.ntp_synchronized)
    return _line(
        checks.check_clock(time.time() if now is None else now, sync, not_before=not_before), "Clock"
    )


async def check_broker(cfg: AgentConfig) -> Check:
    m = cfg.mqtt
    if not m.url:
        return Check(
            "Broker", FAIL, "no fleet broker configured (mqtt.url is empty)", fix="provision the device"
        )
    if not m.url.startswith("mqtts://") or not m.cert_file:
        return Check(
            "Broker",
            FAIL,
            f"{m.url} is not mutual TLS",
            fix="provision the device (mqtts with a certificate)",
        )
    try:
        addr = parse_broker_url(m.url)
    except ValueError as exc:
        return Check("Broker", FAIL, str(exc), fix="provision the device again")
    host, port = addr.host, addr.port
    try:
        tls = tls_context(m.ca_file, m.cert_file, m.key_file)
    except (OSError, ValueError) as exc:
        return Check(
            "Broker", FAIL, f"cannot load the TLS files: {exc}", fix="factory-reset and provision again"
        )
    client = MqttClient(f"{cfg.device.id}-doctor", tls=tls)
    t0 = time.monotonic()
    try:
        await client.connect(host, port, timeout=10)
    except MqttError as exc:
        fix = {
            "dns": "check the network (cable, Wi-Fi) and DNS",
            "network": "check the network cable or Wi-Fi",
            "refused": "the broker is down or the port is wrong: tell the fleet operator",
            "timeout": "a firewall may block the port; check the network",
            "tls": "the certificate may be revoked or expired: tell the fleet operator",
            "rejected": "the certificate was refused: tell the fleet operator",
        }.get(exc.kind, "")
        return Check("Broker", FAIL, str(exc), fix=fix)
    ms = (time.monotonic() - t0) * 1000
    await client.close()
    return Check("Broker", PASS, f"{host}:{port} reachable with mutual TLS ({ms:.0f} ms)")


async def check_disk(cfg: AgentConfig) -> Check:
    """Free space where the state lives (``[diagnostics] disk_fail_free``/``disk_warn_free``, 200 MB)."""
    d = cfg.diagnostics
    return _line(
        await asyncio.to_thread(
            checks.check_disk, Path(cfg.device.state_dir), d.disk_fail_free, d.disk_warn_free
        ),
        "Disk",
    )


async def check_ns(cfg: AgentConfig) -> Check:
    if not cfg.ns.enabled:
        return Check("Noise suppression model", SKIP, "disabled in the configuration (ns.enabled = false)")

    def load() -> str:
        from device_agent.ns.model import MaskModel

        model = MaskModel(cfg.ns.model, cfg.ns.threads)
        model.step(np.zeros(model.bins, np.float32))  # the phase input, if any, defaults to zeros
        return str(model.path)

    try:
        path = await asyncio.to_thread(load)
    except Exception as exc:
        return Check(
            "Noise suppression model",
            FAIL,
            str(exc),
            fix="reinstall the agent, or fix ns.model in the configuration",
        )
    return Check("Noise suppression model", PASS, f"loaded {Path(path).name}")


async def check_microphone(cfg: AgentConfig, seconds: float = 1.0) -> Check:
    try:
        source = create_source(cfg.audio)
        await source.start()
        try:
            chunks, got = [], 0
            while got < seconds * source.rate:
                chunk = await asyncio.wait_for(source.read(), 5.0)
                chunks.append(chunk.samples.astype(np.float32))
                got += chunk.frames
        finally:
            await source.stop()
    except Exception as exc:
        return Check(
            "Microphone",
            FAIL,
            f"{cfg.audio.backend} capture from {cfg.audio.device!r} failed: {exc}",
            fix="check the microphone is connected and audio.device names it (arecord -l)",
        )
    x = np.concatenate(chunks) / 32768.0
    rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    level, peak_dbfs = (20 * float(np.log10(max(v, 1e-9))) for v in (rms, peak))
    # a person speaks near it during the doctor: its floor is the speech one, not digital silence
    return _line(checks.check_mic_level(level, peak_dbfs, min_level_dbfs=MIC_SPEECH_MIN_DBFS), "Microphone")


async def check_speaker(cfg: AgentConfig, seconds: float = 1.0) -> Check:
    if not cfg.audio.playback_device:
        return Check("Speaker", SKIP, "no speaker configured (audio.playback_device is empty)")
    try:
        from hal.audio.base import AudioChunk

        sink = create_sink(cfg.audio)
        if sink is None:
            return Check("Speaker", SKIP, "no speaker configured")
        await sink.start()
        try:
            rate, ch = sink.rate, sink.channels
            n = rate // 50  # 20 ms blocks, paced in real time ~100 ms ahead (the sink's queue is short)
            t = np.arange(int(seconds * rate)) / rate
            tone = (0.25 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
            t0 = time.monotonic()
            for k, i in enumerate(range(0, tone.size, n)):
                ahead = t0 + k * 0.02 - 0.1 - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
                block = np.repeat(tone[i : i + n, None], ch, axis=1)
                await asyncio.wait_for(sink.write(AudioChunk(block, rate, time.monotonic())), 5.0)
            drain = getattr(sink, "drain", None)
            if drain is not None:
                await drain(timeout=2.0)
            stats = sink.stats()
        finally:
            await sink.stop()
    except Exception as exc:
        return Check(
            "Speaker",
            FAIL,
            f"playback on {cfg.audio.playback_device!r} failed: {exc}",
            fix="check the speaker is connected and audio.playback_device names it (aplay -l)",
        )
    written = stats.get("frames_written")
    if stats.get("dropped_frames") or (written is not None and written < 0.9 * tone.size):
        return Check(
            "Speaker",
            FAIL,
            f"the speaker did not take the tone ({written} of {tone.size} frames "
            f"played, {stats.get('dropped_frames', 0)} dropped)",
            fix="check the speaker device is not used by another program (fuser -v /dev/snd/*)",
        )
    return Check(
        "Speaker",
        PASS,
        f"played a 1 kHz tone for {seconds:g} s on {cfg.audio.playback_device!r} "
        f"({written} frames): you should have heard it",
    )


async def check_camera(cfg: AgentConfig) -> Check:
    try:
        cam = create_camera(cfg.camera)
        await cam.start()
        try:
            captured = await asyncio.wait_for(cam.read(), 10.0)
        finally:
            await cam.stop()
        stats = await asyncio.to_thread(frame_stats, captured.frame)
    except Exception as exc:
        return Check(
            "Camera",
            FAIL,
            f"{cfg.camera.backend} camera gave no frame: {exc}",
            fix="check the camera cable and camera.device/backend in the configuration",
        )
    return _line(checks.check_camera_frame(stats), "Camera")


async def run_doctor(cfg: AgentConfig, hardware: bool = True) -> list[Check]:
    steps: list[Callable[[AgentConfig], Awaitable[Check]]] = [
        check_identity,
        check_clock,
        check_broker,
        check_disk,
        check_ns,
    ]
    if hardware:
        steps += [check_microphone, check_speaker, check_camera]
    results = []
    for step in steps:
        try:
            results.append(await step(cfg))
        except Exception as exc:  # a broken check is a failed line, not a crash
            results.append(
                Check(
                    step.__name__.removeprefix("check_").capitalize(),
                    FAIL,
                    f"{type(exc).__name__}: {exc}",
                    fix="report this to the device maker",
                )
            )
    return results


def render(results: list[Check]) -> str:
    lines = []
    for i, c in enumerate(results, 1):
        lines.append(f"{i:2d}. {c.status.upper():4s}  {c.name}: {c.detail}")
        if c.status == FAIL and c.fix:
            lines.append(f"          fix: {c.fix}")
    n = {s: sum(c.status == s for c in results) for s in (PASS, FAIL, SKIP)}
    lines.append(f"{n[PASS]} passed, {n[FAIL]} failed, {n[SKIP]} skipped")
    return "\n".join(lines)


def as_json(results: list[Check]) -> dict[str, Any]:
    return {
        "ok": not any(c.status == FAIL for c in results),
        "checks": [{"name": c.name, "status": c.status, "detail": c.detail, "fix": c.fix} for c in results],
        "host": os.uname().nodename,
    }
