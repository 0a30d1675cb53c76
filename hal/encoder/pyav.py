"""H.264 encoders through PyAV's libavcodec: libx264 (software) and h264_v4l2m2m (Pi 4 hardware).

Both produce Constrained Baseline (what aiortc negotiates: profile-level-id 42e01f), no B-frames,
one access unit per frame, SPS/PPS in front of every IDR (guaranteed by ``ParameterSetKeeper``
whatever the backend does). ``force_keyframe`` marks the next frame as an I picture, which both
encoders turn into an IDR.
"""

from __future__ import annotations

import fractions
import threading
from collections.abc import Callable
from typing import Any

import av

from hal.camera.base import CapturedFrame
from hal.encoder.annexb import ParameterSetKeeper
from hal.encoder.base import EncodedPacket, H264Encoder

VIDEO_CLOCK = 90000
CodecFactory = Callable[[str], Any]  # codec name -> an object with av.CodecContext's interface


def _create_codec(name: str) -> Any:
    return av.CodecContext.create(name, "w")


class PyAVH264Encoder(H264Encoder):
    """Common part of the PyAV backends; subclasses name the codec and its options."""

    codec_name = ""
    runtime_bitrate = False  # can the bitrate change without reopening?

    def __init__(
        self,
        width: int,
        height: int,
        fps: int,
        bitrate: int,
        max_bitrate: int,
        keyframe_interval_s: float = 2.0,
        reason: str = "",
        codec_factory: CodecFactory = _create_codec,
    ) -> None:
        self.name = self.codec_name.replace("h264_", "")
        self.reason = reason
        self.width, self.height, self.fps = width, height, fps
        self._bitrate = bitrate
        self._max_bitrate = max_bitrate
        self._gop = max(1, round(keyframe_interval_s * fps))
        self._lock = threading.Lock()
        self._force = True  # the first frame is an IDR anyway; make it explicit
        self._params = ParameterSetKeeper()
        self._frames = 0
        self._keyframes = 0
        self._bytes = 0
        self._codec = codec_factory(self.codec_name)
        self._configure(self._codec)
        self._codec.open()
        if self.runtime_bitrate:  # opened at the ceiling (see Libx264Encoder); now the real target
            self._codec.bit_rate = self._bitrate

    def _configure(self, cc: Any) -> None:
        cc.width, cc.height = self.width, self.height
        cc.pix_fmt = "yuv420p"
        cc.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        cc.framerate = fractions.Fraction(self.fps, 1)
        cc.bit_rate = self._max_bitrate if self.runtime_bitrate else self._bitrate
        cc.gop_size = self._gop
        cc.max_b_frames = 0
        cc.options = self.codec_options()

    def codec_options(self) -> dict[str, str]:
        raise NotImplementedError

    def encode(self, frame: CapturedFrame) -> list[EncodedPacket]:
        src = frame.frame
        if src.format.name != "yuv420p" or src.width != self.width or src.height != self.height:
            # fast bilinear: a scaled (lower layer) frame costs ~0.8 ms at 720p -> 360p instead of ~1.3
            src = src.reformat(
                width=self.width, height=self.height, format="yuv420p", interpolation="FAST_BILINEAR"
            )
        pts = round((frame.timestamp) * VIDEO_CLOCK)
        src.pts = pts
        src.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        with self._lock:
            force, self._force = self._force, False
        src.pict_type = av.video.frame.PictureType.I if force else av.video.frame.PictureType.NONE
        out = []
        for packet in self._codec.encode(src):
            data, idr = self._params.fix(bytes(packet))
            self._frames += 1
            self._keyframes += idr
            self._bytes += len(data)
            out.append(
                EncodedPacket(
                    data=data,
                    pts=packet.pts if packet.pts is not None else pts,
                    keyframe=idr,
                    capture_ts=frame.timestamp,
                    frame_index=frame.index,
                )
            )
        return out

    def force_keyframe(self) -> None:
        with self._lock:
            self._force = True

    def set_bitrate(self, bps: int) -> bool:
        if not self.runtime_bitrate:
            return False
        bps = min(bps, self._max_bitrate)
        with self._lock:
            self._codec.bit_rate = bps
            self._bitrate = bps
        return True

    @property
    def bitrate(self) -> int:
        return self._bitrate

    def close(self) -> None:
        try:
            self._codec.close()
        except (AttributeError, av.error.FFmpegError):
            pass  # older PyAV has no close(); the context is freed with the object

    def stats(self) -> dict[str, Any]:
        return {
            **super().stats(),
            "frames": self._frames,
            "keyframes": self._keyframes,
            "bytes": self._bytes,
            "runtime_bitrate": self.runtime_bitrate,
        }


VBV_SECONDS = 1.0  # libx264's VBV buffer: this many seconds of the start target
VBV_INIT = 0.1  # share of the buffer full at start (x264's default 0.9 lets the first IDR take it all)


def vbv_options(start_bps: int) -> dict[str, str]:
    """libx264's VBV buffer for a start target of ``start_bps``.

    Fixed at open: PyAV exposes no writable ``rc_buffer_size`` (nor ``rc_max_rate``), so a later
    ``set_bitrate`` moves only ``bit_rate``. Measured at 720p30 on the ``busy`` pattern with a
    400 kbit/s start target: a 3 Mbit buffer (``max_bitrate / 2``, x264's vbv-init 0.9) gave a
    first IDR of 52 KB (1.05 s at 400 kbit/s); 1 s of the target with vbv-init 0.1 gives 22.6 KB.
    """
    return {"bufsize": f"{max(1, round(start_bps * VBV_SECONDS / 1000))}k"}


class Libx264Encoder(PyAVH264Encoder):
    """Software x264: ultrafast, zerolatency, Constrained Baseline, VBV on so bitrate can move."""

    codec_name = "libx264"
    runtime_bitrate = True

    def codec_options(self) -> dict[str, str]:
        # x264 takes a new bit_rate at run time only with VBV on and opened with bit_rate == maxrate
        # (measured: with maxrate above the opening bit_rate, later changes are ignored). So the
        # encoder opens at the ceiling and the target is set right after; it can then move freely
        # below the ceiling. The VBV buffer is sized from the start target, not the ceiling, and
        # starts nearly empty (``vbv_options``): the first IDR is then bounded by the start rate.
        level = "31" if self.width * self.height <= 1280 * 720 else "40"
        return {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "profile": "baseline",
            "level": level,
            "maxrate": f"{self._max_bitrate // 1000}k",
            **vbv_options(self._bitrate),
            "x264-params": f"keyint={self._gop}:min-keyint={self._gop}:scenecut=0:bframes=0:"
            f"vbv-init={VBV_INIT}:repeat-headers=1:forced-idr=1:sliced-threads=0:threads=1",
        }


class V4l2m2mEncoder(PyAVH264Encoder):
    """The Pi 4's hardware encoder (bcm2835-codec at /dev/video11) through FFmpeg's V4L2 M2M wrapper.

    FFmpeg applies bitrate and GOP at open only, so a new target bitrate is refused (the fan-out
    then keeps the configured one). Forced keyframes map to V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME.
    """

    codec_name = "h264_v4l2m2m"
    runtime_bitrate = False

    def codec_options(self) -> dict[str, str]:
        # 578 = FF_PROFILE_H264_CONSTRAINED_BASELINE, mapped by FFmpeg to the V4L2 profile control
        return {"profile": "578", "num_output_buffers": "4", "num_capture_buffers": "4"}
