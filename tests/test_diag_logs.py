"""Log pulls end to end: real mosquitto, the real agent (fleet link + media + diagnostics), FleetClient."""

from __future__ import annotations

import gzip
import io
import random
import time
from pathlib import Path

import pytest

from device_agent.logging_setup import iso_ts
from fleet.log_pull import Progress, pull_logs
from tests.support.diag import diag_rig

WORDS = [
    "frame",
    "encoded",
    "viewer",
    "rtcp",
    "nack",
    "pli",
    "bitrate",
    "jitter",
    "audio",
    "level",
    "ns",
    "rtf",
    "spool",
    "telemetry",
    "session",
    "connected",
    "keyframe",
    "fanout",
    "camera",
]


def log_lines(count: int, t0: float, seed: int = 1) -> list[str]:
    """Compressible but not trivial: structured JSON lines with varying ids, numbers and words."""
    rng = random.Random(seed)
    levels = ["DEBUG", "INFO", "INFO", "INFO", "WARNING", "ERROR"]
    out = []
    for i in range(count):
        msg = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
        out.append(
            f'{{"ts": "{iso_ts(t0 + i * 0.001)}", "level": "{rng.choice(levels)}", '
            f'"logger": "device_agent.media", "device": "test-cam", "boot": "b00t{rng.randint(0, 3)}", '
            f'"session": "{rng.getrandbits(32):08x}", "msg": "{msg} {rng.random() * 1000:.3f} ms #{i}"}}\n'
        )
    return out


async def test_pull_of_zero_bytes(tmp_path: Path, mosquitto) -> None:
    async with diag_rig(tmp_path, mosquitto) as rig:
        rig.log_path.write_text("")
        out = tmp_path / "out.log"
        res = await pull_logs(rig.client, rig.device, out=out)
        assert res.info["raw_bytes"] == 0 and res.info["lines"] == 0 and res.info["total"] == 1
        assert res.resent == [] and res.info["truncated"] is False
        assert out.read_bytes() == b""


@pytest.mark.slow
async def test_pull_of_50_mb_with_a_dropped_chunk_re_requested(tmp_path: Path, mosquitto) -> None:
    async with diag_rig(tmp_path, mosquitto, diagnostics={"log_pull_rate_bps": 0}) as rig:
        block = "".join(log_lines(20_000, time.time() - 3600)).encode()
        written = 0
        with open(rig.log_path, "wb") as fh:
            while written < 50 * 1024 * 1024:
                fh.write(block)
                written += len(block)
        dropped: list[int] = []

        def drop_chunk_2_once(header: dict) -> bool:
            if header.get("type") == "chunk" and header.get("seq") == 2 and not dropped:
                dropped.append(2)
                return False
            return True

        bar = io.StringIO()
        out = tmp_path / "pulled.log.gz"
        res = await pull_logs(
            rig.client,
            rig.device,
            out=out,
            progress=Progress(bar),
            chunk_filter=drop_chunk_2_once,
            command_timeout=120,
        )
        assert dropped == [2]
        assert res.resent == [2] and res.rounds == 2  # one chunk re-requested, not the whole file
        assert res.info["total"] > 3 and res.info["raw_bytes"] == written and not res.info["truncated"]
        assert gzip.decompress(out.read_bytes()) == rig.log_path.read_bytes()
        total = res.info["total"]
        assert f"{total}/{total} chunks" in bar.getvalue() and "MB" in bar.getvalue()


async def test_size_cap_keeps_the_newest_lines(tmp_path: Path, mosquitto) -> None:
    cap = 200_000
    async with diag_rig(tmp_path, mosquitto, diagnostics={"log_pull_max_bytes": cap}) as rig:
        lines = log_lines(5000, time.time() - 600)
        rig.log_path.write_text("".join(lines))
        out = tmp_path / "capped.log"
        res = await pull_logs(rig.client, rig.device, out=out)
        text = out.read_text()
        assert res.info["truncated"] is True and res.info["max_bytes"] == cap
        assert len(text.encode()) <= cap
        assert text.endswith(lines[-1]) and lines[0] not in text  # newest kept, oldest dropped
        assert res.info["dropped_bytes"] + len(text.encode()) == sum(len(x.encode()) for x in lines)
        # an operator can ask for less than the device's cap, never more
        res2 = await pull_logs(rig.client, rig.device, max_bytes=10_000, out=tmp_path / "small.log")
        assert res2.info["max_bytes"] == 10_000 and (tmp_path / "small.log").stat().st_size <= 10_000
        res3 = await pull_logs(rig.client, rig.device, max_bytes=10 * cap)
        assert res3.info["max_bytes"] == cap


async def test_secrets_are_redacted_on_the_device_and_filters_apply(tmp_path: Path, mosquitto) -> None:
    async with diag_rig(tmp_path, mosquitto) as rig:
        now = time.time()
        old = iso_ts(now - 7200)
        recent = iso_ts(now - 60)
        rig.log_path.write_text(
            f"{old} INFO device_agent.media [test-cam b1]: old line before the window\n"
            f"{recent} INFO device_agent.config [test-cam b1]: "
            "loaded mqtt password=hunter2 token: abc123XYZ\n"
            f'{recent} INFO device_agent.wifi [test-cam b1]: wpa config {{"psk": "correct horse battery"}}\n'
            f"{recent} WARNING device_agent.fleetlink [test-cam b1]: "
            "url mqtts://op:pa55word@broker:8883 refused\n"
            f"{recent} ERROR device_agent.ota [test-cam b1]: "
            "Authorization: Bearer eyJhbGciOi.eyJzdWIiOiIx.c2lnbmF0dXJl\n"
            f"{recent} DEBUG device_agent.media [test-cam b1]: key material follows\n"
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
        )
        out = tmp_path / "redacted.log"
        res = await pull_logs(rig.client, rig.device, since="1h", out=out)
        text = out.read_text()
        for secret in ("hunter2", "abc123XYZ", "correct horse battery", "pa55word", "eyJhbGciOi", "MIIEvQ"):
            assert secret not in text, secret
        assert "[REDACTED]" in text and "[REDACTED PEM BLOCK]" in text
        assert "old line before the window" not in text  # --since applied on the device
        assert res.info["redacted_lines"] >= 5
        warn = await pull_logs(rig.client, rig.device, level="warning", out=tmp_path / "warn.log")
        wtext = (tmp_path / "warn.log").read_text()
        assert warn.info["lines"] == 2 and "refused" in wtext and "INFO" not in wtext
        await pull_logs(rig.client, rig.device, grep="WPA CONFIG", out=tmp_path / "grep.log")
        assert (tmp_path / "grep.log").read_text().count("\n") == 1
