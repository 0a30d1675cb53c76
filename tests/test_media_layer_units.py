"""Layer policy (down at once, up after a hold, probation, doubling hold) and a track's switch at an IDR."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from device_agent.config import ConfigError, config_from_dict
from device_agent.media.fanout import PacketFanout
from device_agent.media.graph import build_layers, build_video
from device_agent.media.layers import HOLD_S, PROBE_S, LayerPolicy
from device_agent.media.tracks import FanoutVideoTrack, LatencyWindow
from device_agent.media.video_source import FrameEncoderSource
from hal.camera.base import CapturedFrame
from hal.camera.test_pattern import TestPatternCamera
from hal.encoder.base import EncodedPacket
from hal.encoder.pyav import Libx264Encoder
from tests.support.media import media_config


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_policy_down_at_once_up_after_hold_with_hysteresis() -> None:
    clock = Clock()
    policy = LayerPolicy(layers=2, clock=clock)
    assert policy.report("a", 2_000_000) == 0 and policy.report("b", 2_000_000) == 0
    assert policy.report("c", 900_000) == 1  # below half the reference: down at once
    clock.now += 10
    assert policy.report("c", 1_300_000) == 1  # above the down line, below UP_RATIO: stays
    clock.now += 10
    assert policy.report("c", 1_600_000) == 1  # fits now: the hold starts
    clock.now += HOLD_S - 0.5
    assert policy.report("c", 1_600_000) == 1
    clock.now += 1
    assert policy.report("c", 1_600_000) == 0  # held long enough: up


def test_policy_up_past_the_low_ceiling_then_probation_and_a_longer_hold_after_a_failed_probe() -> None:
    clock = Clock()
    policy = LayerPolicy(layers=2, clock=clock)
    policy.report("a", 2_000_000)
    policy.report("b", 2_000_000)
    assert policy.report("c", 300_000, low_ceiling=500_000) == 1
    clock.now += 10
    policy.report("c", 560_000, low_ceiling=500_000)  # past the low layer's ceiling: fits
    clock.now += HOLD_S + 0.1
    assert policy.report("c", 560_000, low_ceiling=500_000) == 0  # up, on probation
    clock.now += PROBE_S - 1
    assert policy.report("c", 560_000, low_ceiling=500_000) == 0  # still constrained, not sent down yet
    clock.now += 1.5
    assert policy.report("c", 560_000, low_ceiling=500_000) == 1  # probe failed: down
    clock.now += HOLD_S + 0.1
    policy.report("c", 560_000, low_ceiling=500_000)
    clock.now += HOLD_S + 0.1
    assert policy.report("c", 560_000, low_ceiling=500_000) == 1  # the hold doubled
    clock.now += HOLD_S
    assert policy.report("c", 560_000, low_ceiling=500_000) == 0


def test_one_layer_never_switches() -> None:
    policy = LayerPolicy(layers=1)
    policy.report("a", 2_000_000)
    assert policy.report("b", 100_000) == 0


class Enc:
    def __init__(self) -> None:
        self.forced = 0

    def force_keyframe(self) -> None:
        self.forced += 1

    def set_bitrate(self, bps: int) -> bool:
        return True


def _packet(index: int, key: bool, size: int) -> EncodedPacket:
    return EncodedPacket(data=bytes(size), pts=index * 3000, keyframe=key, capture_ts=0.0, frame_index=index)


@pytest.mark.timeout(10)
async def test_track_switches_at_the_target_layers_idr_and_asks_only_that_layer() -> None:
    high_enc, low_enc = Enc(), Enc()
    high, low = PacketFanout(high_enc, idr_min_interval=0), PacketFanout(low_enc, idr_min_interval=0)
    track = FanoutVideoTrack(high, LatencyWindow(), name="v")
    high.publish(_packet(0, True, 1000))
    receiving = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    high.publish(_packet(1, True, 1000))
    assert (await receiving).size == 1000
    high_forced, low_forced = high_enc.forced, low_enc.forced
    track.switch_to(low)
    assert low_enc.forced == low_forced + 1 and high_enc.forced == high_forced  # the target layer's IDR
    high.publish(_packet(2, False, 1001))
    low.publish(_packet(2, False, 501))  # not an IDR: not switched yet
    assert (await track.recv()).size == 1001
    receiving = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    low.publish(_packet(3, True, 500))  # the low layer's IDR: the track moves at it
    assert (await receiving).size == 500
    assert track.fanout is low and high.subscribers == 0 and low.subscribers == 1
    high.publish(_packet(4, False, 1002))
    low.publish(_packet(4, False, 502))
    assert (await track.recv()).size == 502
    assert track.stats()["layer_switches"] == 1
    track.stop()


def test_the_low_layer_is_built_from_config_and_kept_across_a_restart(tmp_path: Path) -> None:
    cfg = config_from_dict(media_config(tmp_path, camera={"width": 160, "height": 120}))
    _, video, fanout = build_video(cfg, lambda ok, msg: None)
    layers = build_layers(cfg, video, fanout)
    assert layers is not None and layers.fanouts[0] is fanout
    low = layers.fanouts[1]
    assert isinstance(video, FrameEncoderSource) and low.encoder is video.layers[0]
    assert (video.layers[0].encoder.width, video.layers[0].encoder.height) == (80, 60)
    assert low.max_bitrate == cfg.encoder.max_bitrate // 4
    _, again, same = build_video(cfg, lambda ok, msg: None, fanout)
    assert build_layers(cfg, again, same, layers) is layers and low.encoder is again.layers[0]
    one = config_from_dict(media_config(tmp_path, encoder={"layers": 1}))
    assert build_layers(one, *build_video(one, lambda ok, msg: None)[1:]) is None
    with pytest.raises(ConfigError):
        config_from_dict(media_config(tmp_path, encoder={"layers": 3}))


@pytest.mark.timeout(10)
async def test_a_constrained_viewers_plis_reach_only_its_layer_after_the_switch() -> None:
    from device_agent.media.layers import LayerPolicy, LayerSet
    from device_agent.media.viewer_control import ViewerControl

    high_enc, low_enc = Enc(), Enc()
    high, low = PacketFanout(high_enc, idr_min_interval=0), PacketFanout(low_enc, idr_min_interval=0)
    layers = LayerSet([high, low], LayerPolicy(layers=2))
    others = [high.subscribe(name) for name in ("a", "b")]
    for name, sub in zip(("a", "b"), others, strict=True):
        high.report_estimate(sub, 2_000_000)
        layers.report(name, 2_000_000)
    track = FanoutVideoTrack(high, LatencyWindow(), name="v")
    control = ViewerControl(high, "v", layers=layers, switch_layer=track.switch_to)
    track.hooks = control
    receiving = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    high.publish(_packet(0, True, 1000))
    assert (await receiving).size == 1000 and control.fanout is high
    control.estimator.rate = 300_000.0  # a thin link: far below the others
    control.on_remb(300_000)
    assert track._pending is not None and track._pending[0] is low  # switching, at low's next IDR
    low.publish(_packet(1, True, 500))
    assert (await track.recv()).size == 500 and control.fanout is low and control.stats()["layer"] == 1
    high_forced, low_forced = high_enc.forced, low_enc.forced
    control.guard.idr_sent_at = -1e9
    control.on_keyframe_request("pli")
    assert low_enc.forced == low_forced + 1 and high_enc.forced == high_forced
    assert "pli" not in high.idrs_by_cause and low.idrs_by_cause["pli"] == 1
    control.close()
    track.stop()


class _SlowEncoder:
    """A real libx264 encoder whose encode takes at least ``delay_s`` longer (a loaded second core)."""

    def __init__(self, encoder: Libx264Encoder, delay_s: float) -> None:
        self.encoder, self.delay_s, self.calls = encoder, delay_s, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.encoder, name)

    def encode(self, frame: CapturedFrame) -> list[EncodedPacket]:
        self.calls += 1
        time.sleep(self.delay_s)
        return self.encoder.encode(frame)


async def test_a_slow_lower_layer_skips_frames_and_never_holds_the_first_layer() -> None:
    """The low layer's encode takes 100 ms: it runs at ~10 fps, skipping frames, while the first
    layer keeps the camera's 30 fps (it used to wait for every layer before the next capture)."""
    high_packets: list[EncodedPacket] = []
    low_packets: list[EncodedPacket] = []
    source = FrameEncoderSource(
        TestPatternCamera(160, 120, 30), Libx264Encoder(160, 120, 30, 200_000, 400_000)
    )
    low = _SlowEncoder(Libx264Encoder(80, 60, 30, 100_000, 200_000), 0.1)
    layer = source.add_layer(low, low_packets.append, lambda: True)  # type: ignore[arg-type]
    await source.start(high_packets.append)
    await asyncio.sleep(3.0)
    await source.stop()
    assert len(high_packets) >= 60, len(high_packets)  # 30 fps for 3 s, with room for a loaded machine
    assert len(low_packets) <= 35 and low.calls <= 35, (len(low_packets), low.calls)
    assert layer.skipped > 20, layer.skipped
    assert len(low_packets) == low.calls  # every encode that started was delivered, the last at stop
    assert source.stats()["layers"][0]["skipped"] == layer.skipped
    pts = [p.pts for p in low_packets]
    assert pts == sorted(pts)  # one at a time, in order
