"""Telemetry deflated with the preset dictionary: ratio on a sample the dictionary was not built from,
refusals (zip bomb, corrupt, unknown dictionary), and a real agent's link through a real mosquitto
into the fleet store, next to an old device's plain JSON and a hostile payload."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_agent import telemetry_codec as codec
from device_agent.fleetlink.link import compact, dumps
from fleet.client import FleetClient
from fleet.service import FleetService
from fleet.store import Store
from tests.support.mosquitto import Mosquitto
from tools import telemetry_dict

ROOT = Path(__file__).resolve().parent.parent
# two viewers reporting QoE, from another run than the dictionary's samples (tools/telemetry_samples/)
HELD_OUT = ROOT / "tests" / "data" / "telemetry_two_viewers.json"


def _plain(path: Path) -> bytes:
    return dumps(json.loads(path.read_text()))


def _props(ctype: str) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = ctype
    return props


def test_dictionary_is_reproducible_from_the_committed_samples() -> None:
    built = telemetry_dict.build(sorted(telemetry_dict.SAMPLES.glob("*.json")))
    assert built == codec.dictionary(1)
    assert zlib.adler32(built) == codec.DICT_ADLER32[1]
    assert json.loads(built)  # the package file is valid JSON


# a headless Chromium viewer of the shipped page (page-only QoE fields), tests/test_qoe_browser.py's setup
CHROMIUM = ROOT / "tests" / "data" / "telemetry_chromium_viewer.json"


@pytest.mark.parametrize("sample", [HELD_OUT, CHROMIUM], ids=["two-aiortc-viewers", "chromium-viewer"])
def test_held_out_sample_round_trips_and_compresses(sample: Path) -> None:
    plain = _plain(sample)
    assert sample.name not in {p.name for p in telemetry_dict.SAMPLES.glob("*.json")}
    wire = codec.encode(plain)
    assert codec.decode(wire, codec.content_type()) == plain
    assert codec.decode(wire, None) == plain  # properties dropped by a bridge: the DICTID says it
    assert codec.decode(plain, None) == plain and codec.decode(plain, "application/json") == plain
    # plain zlib for comparison: the dictionary is what makes a small message small
    assert len(plain) / len(wire) >= 6, (len(plain), len(wire))
    assert len(wire) < len(zlib.compress(plain, 9)) / 2


@pytest.mark.parametrize(
    ("payload", "ctype", "reason"),
    [
        (codec.encode(b"[" + b"0," * 2_000_000 + b"0]"), codec.content_type(), "more than"),  # zip bomb
        (codec.encode(b"{}")[:-6], codec.content_type(), "truncated"),
        (codec.encode(b"{}") + b"xx", codec.content_type(), "after the end"),
        (b'{"plain": 1}', codec.content_type(), "not a zlib stream"),
        (b"x\xbb" + b"\x00" * 30, codec.content_type(), "needs dictionary 0x00000000"),
        (codec.encode(b"{}")[:6] + b"\xff" * 20, codec.content_type(), "corrupt"),
        (codec.encode(b"{}"), "application/json; enc=deflate-dict-99", "unknown telemetry dictionary"),
        (codec.encode(b"{}"), "application/json; enc=gzip", "unsupported encoding"),
        (codec.encode(b"{}"), "application/cbor", "unsupported content type"),
    ],
)
def test_refusals_name_their_reason(payload: bytes, ctype: str, reason: str) -> None:
    with pytest.raises(codec.PayloadError, match=reason):
        codec.decode(payload, ctype)


def test_stream_for_another_dictionary_is_refused() -> None:
    other = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, b'{"another":"dictionary"}')
    payload = other.compress(b'{"another":1}') + other.flush()
    with pytest.raises(codec.PayloadError, match="needs dictionary"):
        codec.decode(payload, codec.content_type())
    with pytest.raises(codec.PayloadError, match="unknown dictionary"):
        codec.decode(payload, None)


def test_bomb_costs_at_most_the_cap() -> None:
    bomb = codec.encode(b" " * (64 * 1024 * 1024))  # 64 MB of JSON whitespace in ~64 KB
    assert len(bomb) < 100_000
    t0 = time.process_time()
    with pytest.raises(codec.PayloadError, match="more than 262144"):
        codec.decode(bomb, codec.content_type())
    assert time.process_time() - t0 < 1.0
    exactly = codec.encode(b" " * codec.MAX_DECODED)
    assert len(codec.decode(exactly, codec.content_type())) == codec.MAX_DECODED


async def _until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_agent_link_to_store_through_mosquitto_with_old_devices_and_a_bomb(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    from device_agent.agent import Agent
    from device_agent.config import config_from_dict
    from device_agent.fleetlink import FleetLink

    store = Store(str(tmp_path / "fleet.db"))
    svc = FleetService(mosquitto.url, store, rule_interval_s=3600, rollouts=False)
    wire: list[tuple[int, str | None]] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    watcher.on_message = lambda _c, _u, msg: wire.append((len(msg.payload), codec.message_content_type(msg)))
    watcher.on_connect = lambda c, *_a: c.subscribe("dev/new-cam/telemetry", qos=1)
    host, port = mosquitto.url.split("//", 1)[1].split(":")
    watcher.connect(host, int(port))
    watcher.loop_start()
    agent = Agent(
        config_from_dict(
            {
                "device": {"id": "new-cam", "state_dir": str(tmp_path / "state")},
                "mqtt": {"url": mosquitto.url, "telemetry_interval_s": 3600},
            }
        )
    )
    link = FleetLink(agent, system_metrics=False)
    agent.add(link)
    old = FleetClient(mosquitto.url)
    health = json.loads(HELD_OUT.read_text())["health"]
    try:
        await svc.start()
        await old.connect()
        await agent.start()
        await link.wait_ready(10)
        link.emit_telemetry(health)  # seq 2 (seq 1: the sample at start)
        # an old device: plain JSON, no content type
        await old.publish(
            "dev/old-cam/telemetry", dumps({"boot": "b0", "seq": 1, "ts": 1.0, "health": health})
        )
        # hostile payloads with the content type: a bomb, garbage, an unknown dictionary
        bomb = codec.encode(b" " * (32 * 1024 * 1024))
        with caplog.at_level(logging.WARNING, logger="fleet.service"):
            for payload, ctype in (
                (bomb, codec.content_type()),
                (b"x\x9c not deflate at all", codec.content_type()),
                (codec.encode(b"{}"), "application/json; enc=deflate-dict-7"),
            ):
                await old.conn.publish("dev/evil-cam/telemetry", payload, qos=1, properties=_props(ctype))
            # the service keeps going: the next messages of everyone are stored
            await old.publish(
                "dev/old-cam/telemetry", dumps({"boot": "b0", "seq": 2, "ts": 2.0, "health": {}})
            )
            link.emit_telemetry({"after": True})  # seq 3
            await _until(
                lambda: (
                    len(store.telemetry_seqs("new-cam")) >= 3 and len(store.telemetry_seqs("old-cam")) == 2
                ),
                15,
                "ingest of both devices",
            )
            await _until(lambda: svc.stats["refused"] == 3, 5, "the refusals")
        # what the fleet reads is the JSON the agent built, unchanged
        dev = store.device("new-cam")
        assert dev is not None and dev["health"] == {"after": True}
        row = next(
            json.loads(r.payload)
            for r in store.engine.connect().execute(
                store.telemetry.select().where(
                    store.telemetry.c.device_id == "new-cam", store.telemetry.c.seq == 2
                )
            )
        )
        assert row["health"] == compact(health)
        old_dev = store.device("old-cam")
        assert old_dev is not None and old_dev["telemetry_count"] == 2
        assert store.device("evil-cam") is None or store.device("evil-cam")["telemetry_count"] == 0  # type: ignore[index]
        assert svc.stats["bad"] >= 3
        refusals = [
            r.getMessage() for r in caplog.records if "refused telemetry from evil-cam" in r.getMessage()
        ]
        assert refusals and "more than 262144" in refusals[0], caplog.text
        # on the wire: marked, and about 8x smaller than the JSON it carries
        await _until(lambda: len(wire) >= 3, 5, "the watcher")
        assert all(ct == codec.content_type() for _, ct in wire), wire
        assert wire[1][0] * 6 < len(dumps({"boot": agent.boot_id, "seq": 2, "ts": 0.0, "health": health}))
    finally:
        await agent.stop()
        await old.close()
        await svc.stop()
        watcher.loop_stop()
        watcher.disconnect()
        store.close()


async def test_compression_off_sends_plain_json(tmp_path: Path, mosquitto: Mosquitto) -> None:
    from device_agent.agent import Agent
    from device_agent.config import config_from_dict
    from device_agent.fleetlink import FleetLink

    got: list[tuple[bytes, str | None]] = []
    agent = Agent(
        config_from_dict(
            {
                "device": {"id": "plain-cam", "state_dir": str(tmp_path / "state")},
                "mqtt": {"url": mosquitto.url, "telemetry_interval_s": 3600, "compress_telemetry": False},
            }
        )
    )
    link = FleetLink(agent, system_metrics=False)
    agent.add(link)
    fc = FleetClient(mosquitto.url)
    try:
        await fc.connect()
        await fc.conn.subscribe_wait(
            "dev/plain-cam/telemetry",
            lambda msg: got.append((bytes(msg.payload), codec.message_content_type(msg))),
        )
        await agent.start()
        await _until(lambda: got, 10, "the first sample")
        payload, ctype = got[0]
        assert ctype is None and json.loads(payload)["seq"] == 1
    finally:
        await agent.stop()
        await fc.close()
