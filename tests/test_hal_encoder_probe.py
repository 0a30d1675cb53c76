"""Encoder probe over a scripted sysfs tree, and V4l2m2mEncoder through its codec_factory seam."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import pytest

from device_agent.config import CameraSection, EncoderSection
from hal.camera.test_pattern import TestPatternCamera
from hal.encoder.annexb import NAL_IDR, NAL_PPS, NAL_SPS, join_nals, nal_type, split_nals
from hal.encoder.probe import ProbeEnvironment, create_frame_encoder, probe_encoder
from hal.encoder.pyav import V4l2m2mEncoder


class ScriptedEnv(ProbeEnvironment):
    """A sysfs/dev tree in tmp dirs; picamera2 importability and FFmpeg codecs are scripted."""

    def __init__(
        self, root: Path, nodes: dict[str, str], dev_nodes: set[str], picamera2: bool, codecs: set[str]
    ) -> None:
        super().__init__(sysfs_video=root / "sys", dev=root / "dev")
        self.sysfs_video.mkdir(parents=True)
        self.dev.mkdir()
        for node, name in nodes.items():
            (self.sysfs_video / node).mkdir()
            (self.sysfs_video / node / "name").write_text(name + "\n")
        for node in dev_nodes:
            (self.dev / node).touch()
        self._picamera2, self._codecs = picamera2, codecs

    def picamera2_importable(self) -> bool:
        return self._picamera2

    def ffmpeg_has(self, codec: str) -> bool:
        return codec in self._codecs


PI4 = {"video10": "bcm2835-codec-decode", "video11": "bcm2835-codec-encode", "video12": "bcm2835-codec-isp"}


def env(
    tmp_path,
    nodes=PI4,
    dev=("video10", "video11", "video12"),
    picamera2=True,
    codecs=("h264_v4l2m2m", "libx264"),
) -> ScriptedEnv:
    return ScriptedEnv(tmp_path, dict(nodes), set(dev), picamera2, set(codecs))


def choose(e, camera="picamera2", backend="auto"):
    return probe_encoder(EncoderSection(backend=backend), CameraSection(backend=camera), e)


def test_pi4_with_picamera2_camera_uses_picamera2(tmp_path):
    choice = choose(env(tmp_path))
    assert choice.backend == "picamera2"
    assert str(tmp_path / "dev" / "video11") in choice.reason


def test_usb_camera_on_pi4_uses_v4l2m2m(tmp_path):
    choice = choose(env(tmp_path), camera="v4l2")
    assert choice.backend == "v4l2m2m" and "video11" in choice.reason


def test_picamera2_not_installed_falls_to_v4l2m2m(tmp_path):
    choice = choose(env(tmp_path, picamera2=False))
    assert choice.backend == "v4l2m2m"


def test_pi5_or_desktop_uses_libx264_with_reasons(tmp_path):
    choice = choose(env(tmp_path, nodes={"video19": "pispbe"}, dev={"video19"}))
    assert choice.backend == "libx264"
    assert "no hardware H.264 encoder node" in choice.reason and "no V4L2 M2M" in choice.reason


def test_node_without_dev_entry_or_codec_is_not_used(tmp_path):
    (tmp_path / "a").mkdir()
    assert choose(env(tmp_path / "a", dev=()), camera="v4l2").backend == "libx264"
    (tmp_path / "b").mkdir()
    choice = choose(env(tmp_path / "b", codecs=("libx264",)), camera="v4l2")
    assert choice.backend == "libx264" and "FFmpeg lacks h264_v4l2m2m" in choice.reason


def test_configured_backend_is_honoured_or_falls_back(tmp_path):
    assert choose(env(tmp_path), backend="libx264").backend == "libx264"
    (tmp_path / "b").mkdir()
    choice = choose(env(tmp_path / "b", nodes={}, dev=()), backend="v4l2m2m")
    assert choice.backend == "libx264" and "no V4L2 M2M" in choice.reason


def test_real_sysfs_probe_runs_here():
    assert choose(ProbeEnvironment(), camera="test-pattern").backend in ("v4l2m2m", "libx264")


class _Packet:
    def __init__(self, data: bytes, pts: int | None) -> None:
        self.data, self.pts = data, pts

    def __bytes__(self) -> bytes:
        return self.data


class M2MStandIn:
    """Claims to be h264_v4l2m2m; records what it is given; encodes with a real libx264 context.

    Like some hardware encoders it sends SPS/PPS only once, with the first IDR (later IDRs lack
    them), so the test proves the encoder puts them back.
    """

    def __init__(self, name: str) -> None:
        assert name == "h264_v4l2m2m"
        self.__dict__["name"] = name
        self.__dict__["recorded"] = {}
        self.__dict__["_real"] = av.CodecContext.create("libx264", "w")
        self.__dict__["_sent_headers"] = False

    def encode(self, frame: Any) -> list[_Packet]:
        out = []
        for packet in self._real.encode(frame):
            nals = split_nals(bytes(packet))
            if self._sent_headers:
                nals = [n for n in nals if nal_type(n) not in (NAL_SPS, NAL_PPS)]
            self.__dict__["_sent_headers"] = True
            out.append(_Packet(join_nals(nals), packet.pts))
        return out

    def __setattr__(self, key: str, value: Any) -> None:
        self.recorded[key] = value
        if key == "options":  # translate the V4L2 M2M options to what x264 understands
            value = {
                "preset": "ultrafast",
                "tune": "zerolatency",
                "profile": "baseline",
                "x264-params": "forced-idr=1:scenecut=0",
            }
        setattr(self._real, key, value)

    def __getattr__(self, key: str) -> Any:
        return getattr(self._real, key)


def test_v4l2m2m_encoder_through_codec_factory():
    made: list[M2MStandIn] = []

    def factory(name: str) -> M2MStandIn:
        made.append(M2MStandIn(name))
        return made[-1]

    enc = V4l2m2mEncoder(
        320,
        240,
        30,
        bitrate=1_000_000,
        max_bitrate=4_000_000,
        keyframe_interval_s=10,
        reason="scripted",
        codec_factory=factory,
    )
    cc = made[0]
    assert cc.recorded["options"]["profile"] == "578"  # Constrained Baseline
    assert cc.recorded["bit_rate"] == 1_000_000 and cc.recorded["gop_size"] == 300
    assert cc.recorded["max_b_frames"] == 0 and cc.recorded["pix_fmt"] == "yuv420p"
    assert enc.name == "v4l2m2m" and enc.stats()["runtime_bitrate"] is False

    pattern = TestPatternCamera(320, 240, 30)
    packets = [p for i in range(12) for p in enc.encode(pattern.render(i))]
    assert packets[0].keyframe and not any(p.keyframe for p in packets[1:])
    enc.force_keyframe()
    forced = enc.encode(pattern.render(12))
    assert forced and forced[0].keyframe
    types = [nal_type(n) for n in split_nals(forced[0].data)]
    # the stand-in stripped them: the keeper put SPS/PPS in front of the forced IDR
    assert types.index(NAL_SPS) < types.index(NAL_PPS) < types.index(NAL_IDR)
    assert enc.set_bitrate(500_000) is False and enc.bitrate == 1_000_000
    decoder = av.CodecContext.create("h264", "r")
    assert len(decoder.decode(av.Packet(forced[0].data))) == 1  # decodable on its own
    enc.close()


def test_create_frame_encoder_falls_back_when_v4l2m2m_cannot_open(tmp_path):
    from hal.encoder.probe import EncoderChoice

    enc = create_frame_encoder(EncoderChoice("v4l2m2m", "node found"), EncoderSection(), 320, 240, 30)
    try:
        assert enc.name in ("v4l2m2m", "libx264")
        if enc.name == "libx264":  # no M2M device here: libav fails to open, libx264 takes over
            assert "failed to open" in enc.reason
    finally:
        enc.close()
    with pytest.raises(ValueError):
        create_frame_encoder(EncoderChoice("picamera2", "x"), EncoderSection(), 320, 240, 30)
