"""Diagnostic actions against the real agent over a real mosquitto: selftest, snapshot, netcheck, stats,
the CLI, and refusals of unknown or malformed requests."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path

import av
import pytest

from fleet.client import CommandFailed
from fleet.log_pull import fetch_transfer
from tests.support.diag import diag_rig


def _by_name(result: dict) -> dict[str, dict]:
    return {c["name"]: c for c in result["checks"]}


def _decode_jpeg(data: bytes) -> av.VideoFrame:
    with av.open(io.BytesIO(data), format="mjpeg") as container:
        return next(container.decode(video=0))


async def test_selftest_reports_each_check(tmp_path: Path, mosquitto) -> None:
    thermal = tmp_path / "temp"
    thermal.write_text("48500\n")
    async with diag_rig(tmp_path, mosquitto, diagnostics={"thermal_path": str(thermal)}) as rig:
        await asyncio.sleep(1.5)  # let the pipelines run long enough for fps and NS figures
        import time

        res = await rig.client.send_command(
            rig.device, "diag.selftest", {"fleet_ts": time.time()}, timeout=30
        )
        checks = _by_name(res)
        assert set(checks) >= {
            "mic",
            "loopback",
            "camera",
            "encoder",
            "ns",
            "disk",
            "temperature",
            "throttling",
            "clock",
            "broker",
        }
        assert checks["camera"]["status"] == "pass" and checks["camera"]["value"]["width"] == 640
        assert checks["encoder"]["status"] in ("pass", "warn") and checks["encoder"]["value"]["backend"]
        assert checks["mic"]["status"] in ("pass", "warn"), checks["mic"]
        assert checks["mic"]["value"]["peak_dbfs"] > -90  # the synthetic voice was heard
        assert checks["loopback"]["status"] == "skip"  # no speaker configured
        assert checks["ns"]["status"] in ("pass", "warn") and "rtf" in checks["ns"]["value"]
        assert checks["temperature"]["status"] == "pass" and checks["temperature"]["value"]["celsius"] == 48.5
        assert checks["broker"]["status"] == "pass" and checks["broker"]["value"]["rtt_ms"] < 500
        assert checks["clock"]["status"] == "pass" and abs(checks["clock"]["value"]["skew_vs_fleet_s"]) < 5
        assert res["status"] in ("pass", "warn") and res["summary"].startswith("selftest: ")
        thermal.write_text("91000\n")  # a hot SoC fails the self-test, with the reason in the summary
        hot = await rig.client.send_command(rig.device, "diag.selftest", {}, timeout=30)
        assert hot["status"] == "fail" and _by_name(hot)["temperature"]["status"] == "fail"
        assert "SoC at 91.0 C" in hot["summary"]


async def test_snapshot_is_a_jpeg_of_the_configured_size(tmp_path: Path, mosquitto) -> None:
    async with diag_rig(
        tmp_path, mosquitto, diagnostics={"snapshot_width": 320, "snapshot_height": 180, "chunk_bytes": 4096}
    ) as rig:
        await asyncio.sleep(0.5)
        res = await fetch_transfer(rig.client, rig.device, "diag.snapshot", {})
        assert res.data[:2] == b"\xff\xd8" and res.info["content_type"] == "image/jpeg"
        assert res.info["total"] > 1  # sent in chunks like logs
        frame = _decode_jpeg(res.data)
        assert (frame.width, frame.height) == (320, 180)
        assert res.info["frame"]["width"] == 640 and res.info["frame"]["brightness"] > 12
        other = await fetch_transfer(rig.client, rig.device, "diag.snapshot", {"width": 160, "height": 90})
        assert (_decode_jpeg(other.data).width, _decode_jpeg(other.data).height) == (160, 90)


async def test_netcheck_measures_the_broker(tmp_path: Path, mosquitto) -> None:
    async with diag_rig(tmp_path, mosquitto, diagnostics={"ping_count": 10}) as rig:
        res = await rig.client.send_command(rig.device, "diag.netcheck", {}, timeout=30)
        checks = _by_name(res)
        assert checks["dns"]["status"] == "pass" and "127.0.0.1" in checks["dns"]["value"]["addresses"]
        assert checks["tcp"]["status"] == "pass" and checks["tcp"]["value"]["port"] == mosquitto.port
        assert checks["tls"]["status"] == "skip"
        assert checks["mqtt_loss"]["status"] == "pass"
        assert checks["mqtt_loss"]["value"]["sent"] == 10 and checks["mqtt_loss"]["value"]["loss_pct"] == 0
        assert res["status"] == "pass"


async def test_stats_reports_live_media(tmp_path: Path, mosquitto) -> None:
    async with diag_rig(tmp_path, mosquitto) as rig:
        await asyncio.sleep(1.5)
        res = await rig.client.send_command(rig.device, "diag.stats", {}, timeout=10)
        checks = _by_name(res)
        assert checks["video"]["status"] in ("pass", "warn") and checks["video"]["value"]["fps"] > 0
        assert checks["viewers"]["detail"] == "no viewer connected"
        assert "level_dbfs" in checks["audio"]["value"]
        assert res["media"]["encoder"]["backend"] == checks["video"]["value"]["encoder"]


async def test_unknown_and_malformed_requests_are_refused(tmp_path: Path, mosquitto) -> None:
    async with diag_rig(tmp_path, mosquitto) as rig:
        c, dev = rig.client, rig.device
        cases = [
            ("diag.shell", {"cmd": "id"}, None, "unknown_command"),
            ("diag.selftest", {"cmd": "rm -rf /"}, None, "bad_request"),
            ("diag.selftest", {"fleet_ts": "yesterday"}, None, "bad_request"),
            ("diag.netcheck", None, b"{not json", "bad_json"),
            ("diag.stats", None, b"[1, 2]", "bad_params"),
            ("logs.pull", {"level": "verbose"}, None, "bad_request"),
            ("logs.pull", {"since": "last tuesday"}, None, "bad_request"),
            ("logs.pull", {"request": "../../etc"}, None, "bad_request"),
            ("logs.pull", {"request": "nope", "resend": [0]}, None, "not_found"),
            ("logs.pull", {"max_bytes": -1}, None, "bad_request"),
            ("diag.snapshot", {"width": 641}, None, "bad_request"),
        ]
        for name, params, raw, code in cases:
            with pytest.raises(CommandFailed) as err:
                await c.send_command(dev, name, params, timeout=10, raw_payload=raw)
            assert err.value.code == code, (name, params, raw, err.value)
        # still serving after all that
        assert (await c.send_command(dev, "diag.stats", {}, timeout=10))["action"] == "stats"


async def test_fleetctl_cli_logs_and_diag(tmp_path: Path, mosquitto) -> None:
    async with diag_rig(tmp_path, mosquitto) as rig:
        rig.log_path.write_text("2026-01-01T00:00:00.000Z INFO x [d b]: hello password=hunter2\n")
        out = tmp_path / "cli.log"

        async def fleetctl(*argv: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fleet.cli",
                *argv,
                "--mqtt",
                mosquitto.url,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            o, e = await asyncio.wait_for(proc.communicate(), 60)
            return proc.returncode or 0, o.decode(), e.decode()

        rc, stdout, stderr = await fleetctl("logs", rig.device, "-o", str(out))
        assert rc == 0, stderr
        assert "sha256 verified" in stdout and "1/1 chunks" in stderr
        assert "hunter2" not in out.read_text() and "hello" in out.read_text()
        rc, stdout, stderr = await fleetctl("diag", rig.device, "netcheck", "--json")
        assert rc == 0, stderr
        assert json.loads(stdout)["action"] == "netcheck"
        rc, stdout, stderr = await fleetctl("diag", rig.device, "snapshot", "-o", str(tmp_path / "s.jpg"))
        assert rc == 0, stderr
        assert (tmp_path / "s.jpg").read_bytes()[:2] == b"\xff\xd8"
        rc, stdout, stderr = await fleetctl("logs", rig.device, "--level", "loud")
        assert rc == 5 and "bad_request" in stderr  # the device refused it (fleet/errors.py Exit.DEVICE)


async def test_over_mutual_tls_with_acls(tmp_path: Path) -> None:
    """The production shape: mqtts with client certificates and per-device ACLs (dev/%u/#)."""
    from tests.support.fleet import mtls_broker

    with mtls_broker(tmp_path / "broker", ["test-cam"]) as (broker, pki):
        url = f"mqtts://127.0.0.1:{broker.ports['tls']}"
        async with diag_rig(
            tmp_path,
            broker,
            client_url=url,
            client_tls={
                "ca_file": pki["ca"],
                "cert_file": pki["operator_cert"],
                "key_file": pki["operator_key"],
            },
            mqtt={
                "url": url,
                "ca_file": pki["ca"],
                "cert_file": pki["test-cam_cert"],
                "key_file": pki["test-cam_key"],
            },
            diagnostics={"ping_count": 5},
        ) as rig:
            res = await rig.client.send_command(rig.device, "diag.netcheck", {}, timeout=30)
            checks = _by_name(res)
            assert checks["tls"]["status"] == "pass" and checks["tls"]["value"]["version"].startswith("TLS")
            assert checks["mqtt_loss"]["value"]["loss_pct"] == 0 and res["status"] == "pass"
            rig.log_path.write_text("2026-01-01T00:00:00.000Z INFO x [d b]: over tls key=abc\n")
            from fleet.log_pull import pull_logs

            pulled = await pull_logs(rig.client, rig.device, out=tmp_path / "tls.log")
            assert pulled.info["lines"] == 1 and "abc" not in (tmp_path / "tls.log").read_text()


async def test_selftest_loopback_plays_a_tone_the_synthetic_mic_cannot_hear(
    tmp_path: Path, mosquitto, monkeypatch
) -> None:
    """A real ALSA playback PCM (tests/support/alsa.py: file plugin, no sound card) as the speaker and the
    synthetic microphone, which cannot hear it: the tone reaches the speaker and the loopback fails."""
    import numpy as np

    from tests.support.alsa import AlsaTestConfig

    alsa = AlsaTestConfig(tmp_path / "alsa")
    spk = alsa.add_playback("spk")
    alsa.write()
    alsa.activate(monkeypatch)
    async with diag_rig(tmp_path, mosquitto, audio={"playback_device": "spk", "playback_rate": 16000}) as rig:
        await asyncio.sleep(0.5)
        res = await rig.client.send_command(rig.device, "diag.selftest", {}, timeout=30)
        checks = _by_name(res)
        assert checks["mic"]["status"] in ("pass", "warn"), checks["mic"]
        loop = checks["loopback"]
        assert loop["status"] == "fail" and "test tone not heard" in loop["detail"], loop
        assert loop["value"]["rise_db"] < 10 and res["status"] == "fail"
        played = np.fromfile(spk, dtype="<i2").astype(np.float64)
        assert len(played) >= 8000, len(played)
        tail = played[-8000:]  # the tone is the last thing played
        assert abs(np.argmax(np.abs(np.fft.rfft(tail))) * 16000 / 8000 - 1000) <= 4  # 1 kHz on the speaker
