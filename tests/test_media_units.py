"""Video core units on real data: the stamp, SPS/PPS keeping, libx264 through PyAV, the fan-out."""

from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np
import pytest

from device_agent.media.fanout import QUEUE_LIMIT, PacketFanout
from hal.camera.base import CameraError, CapturedFrame
from hal.camera.marker import read_stamp, write_stamp
from hal.camera.test_pattern import TestPatternCamera
from hal.encoder.annexb import NAL_IDR, NAL_PPS, NAL_SPS, ParameterSetKeeper, join_nals, nal_type, split_nals
from hal.encoder.base import EncodedPacket
from hal.encoder.pyav import Libx264Encoder


def _types(data: bytes) -> list[int]:
    return [nal_type(n) for n in split_nals(data)]


def test_stamp_survives_h264_round_trip() -> None:
    cam = TestPatternCamera(640, 360, 30)
    enc = Libx264Encoder(640, 360, 30, bitrate=300_000, max_bitrate=1_000_000)
    dec = av.CodecContext.create("h264", "r")
    seen = []
    for i in range(0, 12):
        for packet in enc.encode(cam.render(1000 + i)):
            for frame in dec.decode(av.Packet(packet.data)):
                seen.append(read_stamp(frame.to_ndarray(format="gray")).index)
    assert seen == list(range(1000, 1000 + len(seen))) and len(seen) >= 10


@pytest.mark.parametrize("width", [64, 640, 1920])
def test_stamp_round_trip_raw(width: int) -> None:
    luma = np.full((64, width), 128, np.uint8)
    write_stamp(luma, 0xDEADBEEF, 123456789)
    stamp = read_stamp(luma)
    assert (stamp.index, stamp.capture_ms) == (0xDEADBEEF, 123456789)


def test_stamp_is_skipped_where_it_does_not_fit() -> None:
    luma = np.full((16, 16), 128, np.uint8)
    write_stamp(luma, 7, 7)
    assert (luma == 128).all()


def test_parameter_sets_are_put_before_a_bare_idr() -> None:
    keeper = ParameterSetKeeper()
    sps, pps, idr, p_slice = b"\x67\x42\xe0\x1f\xaa", b"\x68\xce\x3c\x80", b"\x65\x88\x84", b"\x41\x9a\x02"
    first, is_idr = keeper.fix(join_nals([sps, pps, idr]))
    assert is_idr and _types(first) == [NAL_SPS, NAL_PPS, NAL_IDR]
    bare, is_idr = keeper.fix(join_nals([b"\x09\xf0", idr]))  # AUD + IDR, no parameter sets
    assert is_idr and _types(bare) == [9, NAL_SPS, NAL_PPS, NAL_IDR]
    assert split_nals(bare)[1:3] == [sps, pps]
    same, is_idr = keeper.fix(join_nals([p_slice]))
    assert not is_idr and same == join_nals([p_slice])


def test_libx264_idr_on_demand_with_parameter_sets() -> None:
    cam = TestPatternCamera(320, 240, 30)
    enc = Libx264Encoder(320, 240, 30, bitrate=300_000, max_bitrate=1_000_000, keyframe_interval_s=10)
    packets = [p for i in range(20) for p in enc.encode(cam.render(i))]
    assert packets[0].keyframe and _types(packets[0].data)[:2] == [NAL_SPS, NAL_PPS]
    assert not any(p.keyframe for p in packets[1:])  # GOP of 10 s: no IDR unless asked
    enc.force_keyframe()
    forced = enc.encode(cam.render(20))
    assert forced[0].keyframe and NAL_SPS in _types(forced[0].data) and NAL_PPS in _types(forced[0].data)
    profile_idc, constraints = split_nals(packets[0].data)[0][1:3]
    assert profile_idc == 66 and constraints & 0x40  # Constrained Baseline (constraint_set1)


def test_libx264_bitrate_changes_at_run_time() -> None:
    enc = Libx264Encoder(640, 360, 30, bitrate=2_000_000, max_bitrate=4_000_000)
    texture = np.random.default_rng(1).integers(0, 255, (540, 1280), np.uint8)  # hard to compress

    def frame(i: int) -> CapturedFrame:
        yuv = np.ascontiguousarray(texture[:, i * 7 % 640 : i * 7 % 640 + 640])
        return CapturedFrame(av.VideoFrame.from_ndarray(yuv, format="yuv420p"), i, i / 30)

    def rate(frames: range) -> float:
        sizes = [len(p.data) for i in frames for p in enc.encode(frame(i))]
        return sum(sizes) * 8 * 30 / len(sizes)

    rate(range(0, 30))
    high = rate(range(30, 90))
    assert enc.set_bitrate(300_000) and enc.bitrate == 300_000
    rate(range(90, 120))
    low = rate(range(120, 180))
    assert low < high * 0.5, (high, low)


class RecordingEncoder:
    def __init__(self) -> None:
        self.forced = 0
        self.bitrates: list[int] = []

    def force_keyframe(self) -> None:
        self.forced += 1

    def set_bitrate(self, bps: int) -> bool:
        self.bitrates.append(bps)
        return True


def _packet(i: int, key: bool) -> EncodedPacket:
    return EncodedPacket(
        data=b"\x00\x00\x00\x01" + bytes([0x65 if key else 0x41, i % 256]),
        pts=i * 3000,
        keyframe=key,
        capture_ts=float(i),
        frame_index=i,
    )


async def test_new_subscriber_starts_at_an_idr_and_requests_one() -> None:
    enc = RecordingEncoder()
    fan = PacketFanout(enc, idr_min_interval=0.05)
    sub = fan.subscribe("a")
    assert enc.forced == 1
    fan.publish(_packet(1, False))
    fan.publish(_packet(2, True))
    fan.publish(_packet(3, False))
    got = [await sub.get(), await sub.get()]
    assert [g.frame_index for g in got] == [2, 3] and got[0].keyframe
    assert got[0].packet.pts == 6000 and got[0].packet.time_base == fractions.Fraction(1, 90000)


async def test_keyframe_requests_are_rate_limited_but_not_lost() -> None:
    enc = RecordingEncoder()
    fan = PacketFanout(enc, idr_min_interval=0.1)
    fan.request_keyframe("pli")
    for _ in range(10):
        fan.request_keyframe("pli")  # within the cool-down: coalesced into one deferred IDR
    assert enc.forced == 1
    await asyncio.sleep(0.15)
    assert enc.forced == 2
    assert fan.keyframe_requests["pli"] == 11


async def test_lowest_estimate_sets_bitrate_clamped() -> None:
    enc = RecordingEncoder()
    fan = PacketFanout(enc, min_bitrate=200_000, max_bitrate=3_000_000)
    a, b = fan.subscribe("a"), fan.subscribe("b")
    fan.report_estimate(a, 2_500_000)
    fan.report_estimate(b, 1_500_000)
    assert enc.bitrates[-1] == 1_500_000  # comparable viewers: the lowest estimate
    fan.report_estimate(a, 150_000)
    fan.report_estimate(b, 100_000)
    assert enc.bitrates[-1] == 200_000  # clamped to min
    fan.unsubscribe(b)  # a viewer leaves: the others' estimate applies (going up is throttled)
    fan.report_estimate(a, 9_000_000)
    fan._last_bitrate_change -= 5
    fan._apply_estimates()
    assert enc.bitrates[-1] == 3_000_000  # clamped to max


async def test_one_bad_viewer_does_not_drag_the_others_down() -> None:
    enc = RecordingEncoder()
    fan = PacketFanout(enc, min_bitrate=200_000, max_bitrate=6_000_000)
    good = [fan.subscribe(f"good{i}") for i in range(3)]
    bad = fan.subscribe("bad")
    for sub, bps in zip(good, (2_500_000, 2_800_000, 3_000_000), strict=True):
        fan.report_estimate(sub, bps)
    fan.report_estimate(bad, 300_000)
    assert enc.bitrates[-1] == 2_500_000 and fan.target_bitrate == 2_500_000
    assert bad.constrained and not any(s.constrained for s in good)
    assert fan.stats()["constrained"] == 1
    fan.report_estimate(bad, 2_000_000)  # its link recovered: it counts again
    assert not bad.constrained and enc.bitrates[-1] == 2_000_000


async def test_a_viewer_that_falls_behind_is_resynchronised_at_an_idr() -> None:
    enc = RecordingEncoder()
    fan = PacketFanout(enc, idr_min_interval=0.0)
    slow, fast = fan.subscribe("slow"), fan.subscribe("fast")
    assert enc.forced == 1  # the second subscriber starts at the IDR the first one asked for
    fan.publish(_packet(0, True))
    for i in range(1, QUEUE_LIMIT + 5):
        fan.publish(_packet(i, False))
        await fast.get()
    await fast.get() if fast.queue else None
    assert slow.resyncs == 1 and slow.need_keyframe and enc.forced >= 2
    fan.publish(_packet(500, True))
    assert (await slow.get()).frame_index == 500


class FlakyCamera(TestPatternCamera):
    """A real test-pattern camera whose reads fail for a while, like a USB camera unplugged and replugged."""

    def __init__(self, fail_from: int, fail_count: int) -> None:
        super().__init__(320, 180, 30)
        self.reads = 0
        self.fail_from, self.fail_count = fail_from, fail_count
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        if self.fail_from <= self.reads < self.fail_from + self.fail_count:
            self.reads += 1
            raise CameraError("camera not found (unplugged)")
        await super().start()

    async def read(self) -> CapturedFrame:
        self.reads += 1
        if self.fail_from <= self.reads - 1 < self.fail_from + self.fail_count:
            raise CameraError("camera not found (unplugged)")
        return await super().read()


async def test_camera_loss_is_reported_retried_and_recovered() -> None:
    from device_agent.media.video_source import FrameEncoderSource

    camera = FlakyCamera(fail_from=10, fail_count=3)
    states: list[tuple[bool, str]] = []
    source = FrameEncoderSource(
        camera,
        Libx264Encoder(320, 180, 30, 300_000, 1_000_000),
        on_state=lambda ok, msg: states.append((ok, msg)),
        retry_max_s=0.05,
    )
    packets: list[EncodedPacket] = []
    await source.start(packets.append)
    for _ in range(300):
        if len(packets) >= 25 and states and states[-1][0]:
            break
        await asyncio.sleep(0.02)
    await source.stop()
    assert states[0] == (False, "camera unavailable: camera not found (unplugged)")
    assert states[-1][0] is True and source.camera_errors >= 1 and camera.starts >= 2
    assert len(packets) >= 25 and source.stats()["last_error"] is None
    assert any(p.keyframe for p in packets[10:])  # the stream restarts decodable


async def test_a_joiner_right_after_an_idr_starts_from_the_cached_gop() -> None:
    now = [100.0]
    enc = RecordingEncoder()
    fan = PacketFanout(enc, idr_min_interval=0.25, clock=lambda: now[0])
    first = fan.subscribe("first")
    assert enc.forced == 1
    fan.publish(_packet(1, True))
    fan.publish(_packet(2, False))
    now[0] += 0.1  # within the cool-down: replay instead of waiting for the deferred IDR
    late = fan.subscribe("late")
    assert enc.forced == 1 and fan.replayed_joins == 1
    assert [(await late.get()).frame_index for _ in range(2)] == [1, 2]
    fan.publish(_packet(3, False))
    assert (await late.get()).frame_index == 3 and [(await first.get()).frame_index for _ in range(3)] == [
        1,
        2,
        3,
    ]
    now[0] += 1.0  # the cached IDR is old now: a newcomer asks for a fresh one
    fan.subscribe("later")
    assert enc.forced == 2 and fan.replayed_joins == 1


async def test_frames_are_not_encoded_while_nobody_watches() -> None:
    from device_agent.media.video_source import FrameEncoderSource

    watching = [False]
    source = FrameEncoderSource(
        TestPatternCamera(320, 180, 30),
        Libx264Encoder(320, 180, 30, 300_000, 1_000_000),
        wanted=lambda: watching[0],
    )
    packets: list[EncodedPacket] = []
    await source.start(packets.append)
    await asyncio.sleep(0.3)
    assert packets == [] and source.stats()["fps"] > 20  # capturing, not encoding
    assert await source.capture_frame() is not None
    watching[0] = True
    source.force_keyframe()  # what the first subscriber's keyframe request does
    for _ in range(100):
        if len(packets) >= 3:
            break
        await asyncio.sleep(0.02)
    await source.stop()
    assert packets[0].keyframe and len(packets) >= 3


async def test_a_refused_bitrate_is_not_reported_as_applied() -> None:
    class FixedRate(RecordingEncoder):
        def set_bitrate(self, bps: int) -> bool:
            super().set_bitrate(bps)
            return False  # like picamera2 / h264_v4l2m2m

    fan = PacketFanout(FixedRate(), min_bitrate=200_000, max_bitrate=3_000_000)
    fan.report_estimate(fan.subscribe("a"), 900_000)
    assert fan.requested_bitrate == 900_000 and fan.target_bitrate is None
