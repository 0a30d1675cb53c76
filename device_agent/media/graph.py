"""The media graph, built in one place: what feeds what, from the configuration.

``build_media_graph`` constructs every long-lived media object and wires them; it starts
nothing (``MediaComponent`` owns the lifecycle, the commands and the health)::

    camera (hal/camera) --frames--> encoder (hal/encoder, one thread) --Annex-B AUs--> PacketFanout
        PacketFanout --av.Packet--> FanoutVideoTrack (one per viewer, made by the session)
            --> aiortc pack() --> RTP
    (picamera2: camera and hardware encoder are one source, Picamera2H264Source --> PacketFanout)
    encoder.layers = 2: the same frames, scaled --> a second encoder (its own thread) --> the low PacketFanout
    microphone (hal/audio) --> 16 kHz mono --> AudioStage (noise suppression, worker thread) --> Opus once
        --> BroadcastAudioTrack (one per viewer, made by the session)
    viewer's microphone (aiortc receiver) --> Talkback (one talker at a time) --> speaker (hal/audio sink)

The per-viewer parts (tracks, send control, sessions) are made by ``sessions.SessionManager``
from the graph's fan-out, audio pipeline and talkback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from device_agent.config import AgentConfig
from device_agent.media.audio_pipeline import AudioPipeline, Talkback
from device_agent.media.fanout import PacketFanout
from device_agent.media.layers import LayerPolicy, LayerSet
from device_agent.media.stages import StageAlertFn
from device_agent.media.video_source import FrameEncoderSource
from hal.availability import StateCallback
from hal.camera.factory import create_reopening_camera
from hal.encoder.base import EncodedVideoSource
from hal.encoder.probe import EncoderChoice, create_frame_encoder, probe_encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphCallbacks:
    """Where the graph's devices and stage report: availability (HAL contract) and stage alerts."""

    camera_state: StateCallback
    mic_state: StateCallback
    speaker_state: StateCallback
    stage_alert: StageAlertFn


@dataclass
class MediaGraph:
    """The built, not yet started, media objects."""

    choice: EncoderChoice
    video: EncodedVideoSource
    fanout: PacketFanout
    audio: AudioPipeline
    talkback: Talkback | None  # None without a speaker (audio.playback_device)
    ns_error: str | None  # why noise suppression did not load (its stage then passes audio through)
    layers: LayerSet | None = None  # the encoding layers (layer 0's fan-out is ``fanout``); None: one


def build_video(
    config: AgentConfig, on_camera_state: StateCallback, fanout: PacketFanout | None = None
) -> tuple[EncoderChoice, EncodedVideoSource, PacketFanout]:
    """Probe the encoder and build camera -> encoder -> fan-out.

    Given the running ``fanout`` (a restart), it is kept and pointed at the new source: viewers stay
    subscribed and resume at the new encoder's first IDR.
    """
    cam, enc = config.camera, config.encoder
    choice = probe_encoder(enc, cam)
    log.info("H.264 encoder: %s (%s)", choice.backend, choice.reason)
    holder: list[PacketFanout] = [] if fanout is None else [fanout]
    video: EncodedVideoSource
    # the config sections are the HAL's settings dataclasses (device_agent.config): passed as they are
    if choice.backend == "picamera2":
        from hal.encoder.picamera2 import Picamera2H264Source

        video = Picamera2H264Source(cam, enc, reason=choice.reason, on_state=on_camera_state)
    else:
        camera = create_reopening_camera(cam, on_state=on_camera_state)
        encoder = create_frame_encoder(choice, enc, camera.width, camera.height, camera.fps)
        video = FrameEncoderSource(camera, encoder, wanted=lambda: bool(holder) and holder[0].active)
    if fanout is None:
        fanout = PacketFanout(
            video,
            idr_min_interval=enc.idr_min_interval_ms / 1000,
            min_bitrate=enc.min_bitrate,
            max_bitrate=enc.max_bitrate,
        )
        holder.append(fanout)
    else:
        fanout.encoder = video
    return choice, video, fanout


def build_layers(
    config: AgentConfig, video: EncodedVideoSource, fanout: PacketFanout, layers: LayerSet | None = None
) -> LayerSet | None:
    """Add the low layer (``encoder.layers = 2``) to ``video``: a second encoder of the same frames at
    ``low_layer_scale``, its own fan-out. None with one layer or a source that cannot add one.

    Given the running ``layers`` (a restart), its fan-outs are kept and pointed at the new source.
    Only ``FrameEncoderSource`` (libx264, h264_v4l2m2m) has layers so far. The hook for
    ``hal.encoder.picamera2.Picamera2H264Source``: picamera2 can run a second hardware encoder on
    its ``lores`` stream (``Picamera2.start_encoder(encoder2, output2, name="lores")``); such a
    source would expose the same ``add_layer(encoder, on_packet, wanted)`` and return an object
    with ``force_keyframe``/``set_bitrate`` for the low fan-out, and nothing here changes.
    """
    enc = config.encoder
    if enc.layers < 2 or not isinstance(video, FrameEncoderSource):
        return None
    width = max(16, round(video.camera.width * enc.low_layer_scale) // 2 * 2)
    height = max(16, round(video.camera.height * enc.low_layer_scale) // 2 * 2)
    share = enc.low_layer_scale**2
    low_settings = type(enc)(
        **{
            **vars(enc),
            "bitrate": max(enc.min_bitrate, int(enc.bitrate * share)),
            "max_bitrate": max(enc.min_bitrate, int(enc.max_bitrate * share)),
        }
    )
    encoder = create_frame_encoder(
        EncoderChoice("libx264", "low layer: software x264"), low_settings, width, height, video.camera.fps
    )
    if layers is None:
        low = PacketFanout(
            video,
            idr_min_interval=enc.idr_min_interval_ms / 1000,
            min_bitrate=enc.min_bitrate,
            max_bitrate=low_settings.max_bitrate,
        )
        layers = LayerSet([fanout, low], LayerPolicy(layers=2))
    low = layers.fanouts[1]
    low.encoder = video.add_layer(encoder, low.publish, wanted=lambda: low.subscribers > 0)
    log.info(
        "encoding layers: %dx%d and %dx%d (%s)",
        video.camera.width,
        video.camera.height,
        width,
        height,
        encoder.name,
    )
    return layers


def build_audio(
    config: AgentConfig, callbacks: GraphCallbacks
) -> tuple[AudioPipeline, Talkback | None, str | None]:
    """Build microphone -> stage -> Opus (the pipeline) and the talkback speaker, if configured.

    Returns (pipeline, talkback, why noise suppression did not load or None).
    """
    from device_agent.ns.stage import stage_from_config
    from hal.audio.factory import create_sink, create_source

    stage, ns_error = stage_from_config(config.ns, on_stage_alert=callbacks.stage_alert)
    source = create_source(config.audio, on_state=callbacks.mic_state)
    sink = create_sink(config.audio, on_state=callbacks.speaker_state)
    return (
        AudioPipeline(source, stage, offset_s=config.audio.offset_ms / 1000),
        Talkback(sink) if sink is not None else None,
        ns_error,
    )


def build_media_graph(config: AgentConfig, callbacks: GraphCallbacks) -> MediaGraph:
    """The whole graph (see the module docstring for the picture), unstarted."""
    choice, video, fanout = build_video(config, callbacks.camera_state)
    layers = build_layers(config, video, fanout)
    audio, talkback, ns_error = build_audio(config, callbacks)
    return MediaGraph(choice, video, fanout, audio, talkback, ns_error, layers)
