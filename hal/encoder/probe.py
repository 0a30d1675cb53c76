"""Choose the H.264 encoder backend: picamera2's hardware encoder, then h264_v4l2m2m, then libx264.

The Pi 4 has a hardware encoder (bcm2835-codec, usually /dev/video11); the Pi 5 has none, and
neither has a desktop machine. The probe looks, it does not guess: it checks that the library is
importable, that a V4L2 memory-to-memory H.264 encoder node exists, and that FFmpeg has the codec.
The choice and the reason are logged and shown in health.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import av

from hal.camera.settings import CameraSettings
from hal.encoder.base import H264Encoder
from hal.encoder.pyav import Libx264Encoder, PyAVH264Encoder, V4l2m2mEncoder
from hal.encoder.settings import EncoderSettings

log = logging.getLogger(__name__)

ENCODER_NODE_NAMES = ("bcm2835-codec-encode",)


@dataclass(frozen=True)
class EncoderChoice:
    backend: str  # "picamera2" | "v4l2m2m" | "libx264"
    reason: str


@dataclass
class ProbeEnvironment:
    """Where the probe looks; tests point it at a scripted sysfs tree."""

    sysfs_video: Path = Path("/sys/class/video4linux")
    dev: Path = Path("/dev")

    def picamera2_importable(self) -> bool:
        return importlib.util.find_spec("picamera2") is not None

    def m2m_encoder_node(self) -> Path | None:
        """The /dev/videoN of a V4L2 M2M H.264 encoder, found by its driver-given name."""
        if not self.sysfs_video.is_dir():
            return None
        for entry in sorted(self.sysfs_video.iterdir()):
            try:
                name = (entry / "name").read_text().strip()
            except OSError:
                continue
            if name in ENCODER_NODE_NAMES and (self.dev / entry.name).exists():
                return self.dev / entry.name
        return None

    def ffmpeg_has(self, codec: str) -> bool:
        return codec in av.codecs_available


def probe_encoder(
    encoder: EncoderSettings, camera: CameraSettings, env: ProbeEnvironment | None = None
) -> EncoderChoice:
    """The first usable backend in preference order (or the configured one, if usable)."""
    env = env or ProbeEnvironment()
    node = env.m2m_encoder_node()
    reasons: list[str] = []
    wanted = encoder.backend
    if wanted in ("auto", "picamera2"):
        if camera.backend != "picamera2":
            reasons.append("picamera2 encoder needs the picamera2 camera")
        elif camera.rotation in (90, 270):
            reasons.append(f"picamera2's zero-copy path cannot rotate {camera.rotation} degrees")
        elif not env.picamera2_importable():
            reasons.append("picamera2 is not installed")
        elif node is None:
            reasons.append("no hardware H.264 encoder node (Pi 5 or not a Pi)")
        else:
            return EncoderChoice("picamera2", f"hardware encoder {node} through picamera2 (zero copy)")
    if wanted in ("auto", "v4l2m2m"):
        if node is None:
            reasons.append("no V4L2 M2M H.264 encoder node")
        elif not env.ffmpeg_has("h264_v4l2m2m"):
            reasons.append("FFmpeg lacks h264_v4l2m2m")
        else:
            return EncoderChoice("v4l2m2m", f"hardware encoder {node} through FFmpeg V4L2 M2M")
    why = "; ".join(reasons) if reasons else "configured"
    if wanted not in ("auto", "libx264"):
        log.error("encoder backend %r is not usable here (%s); falling back to libx264", wanted, why)
    return EncoderChoice("libx264", f"software x264 ({why})")


def create_frame_encoder(
    choice: EncoderChoice, encoder: EncoderSettings, width: int, height: int, fps: int
) -> H264Encoder:
    """Open a frame-in encoder for ``choice`` (picamera2's is an encoded source of its own,
    ``hal.encoder.picamera2.Picamera2H264Source``: frames never reach Python on its path)."""
    classes: dict[str, type[PyAVH264Encoder]] = {"v4l2m2m": V4l2m2mEncoder, "libx264": Libx264Encoder}
    cls = classes.get(choice.backend)
    if cls is None:
        raise ValueError(f"{choice.backend} is not a frame-in encoder")

    def open_encoder(kind: type[PyAVH264Encoder], reason: str) -> H264Encoder:
        return kind(
            width=width,
            height=height,
            fps=fps,
            bitrate=encoder.bitrate,
            max_bitrate=encoder.max_bitrate,
            keyframe_interval_s=encoder.keyframe_interval_s,
            reason=reason,
        )

    try:
        return open_encoder(cls, choice.reason)
    except (av.error.FFmpegError, OSError) as exc:
        if cls is Libx264Encoder:
            raise
        log.error("opening %s failed (%s); falling back to libx264", choice.backend, exc)
        return open_encoder(Libx264Encoder, f"software x264 ({choice.backend} failed to open: {exc})")
