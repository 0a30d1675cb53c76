"""The media component: camera -> shared encoder -> fan-out, microphone -> stage -> Opus, WHEP viewers.

It owns the pipelines and the viewer sessions, reports health as ``media``, raises P1 alerts
when the camera or microphone is gone and P2 when noise suppression falls back, and registers
``media.restart`` and ``media.ns`` (switch noise suppression at run time).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from device_agent.agent import Agent
from device_agent.media.audio_pipeline import AudioPipeline, Talkback
from device_agent.media.fanout import PacketFanout
from device_agent.media.sessions import SessionManager
from device_agent.media.tracks import LatencyWindow
from device_agent.media.video_source import FrameEncoderSource
from device_agent.media.whep import WhepServer
from device_agent.params import Param
from device_agent.registry import CommandError
from device_agent.tasks import cancel_and_wait
from hal.camera.base import CapturedFrame
from hal.camera.factory import create_reopening_camera
from hal.encoder.base import EncodedVideoSource
from hal.encoder.probe import EncoderChoice, create_frame_encoder, probe_encoder

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 2.0


class MediaComponent:
    """Video and audio pipelines plus the WHEP server; one per agent."""

    name = "media"

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.config = agent.config
        self.latency = LatencyWindow()
        self.choice: EncoderChoice | None = None
        self.video: EncodedVideoSource | None = None
        self.fanout: PacketFanout | None = None
        self.audio: AudioPipeline | None = None
        self.talkback: Talkback | None = None
        self.sessions: SessionManager | None = None
        self.web: WhepServer | None = None
        self.ns_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats_task: asyncio.Task[None] | None = None
        agent.commands.register("media.restart", self._cmd_restart, param_error="bad_request")
        agent.commands.register("media.ns", self._cmd_ns, params=[Param("enabled", "boolean")],
                                param_error="bad_request")

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._start_video()
        await self._start_audio()
        web = self.config.web
        self.sessions = SessionManager(self.fanout, self.audio, self.talkback, latency=self.latency,
                                       max_viewers=web.max_viewers, connect_timeout_s=web.session_timeout_s,
                                       ice_servers=web.stun_servers)
        if web.enabled:
            host, _, port = web.listen.rpartition(":")
            self.web = WhepServer(self.sessions, self.health, token=web.token)
            await self.web.start(host or "0.0.0.0", int(port))
        self._stats_task = asyncio.create_task(self._stats_loop(), name="media-stats")
        self.agent.health.add("media", self.health)

    async def stop(self) -> None:
        self.agent.health.remove("media")
        await cancel_and_wait(self._stats_task)
        if self.web is not None:
            await self.web.stop()
        if self.sessions is not None:
            await self.sessions.close_all()
        if self.talkback is not None:
            await self.talkback.close()
            await self.talkback.sink.stop()
        await self._stop_audio()
        await self._stop_video()

    def healthy(self) -> bool:
        video_ok = self.video is not None and self.video.healthy()
        audio_ok = self.audio is None or self.audio.healthy()
        return video_ok and audio_ok

    # -- video ---------------------------------------------------------------------------------
    async def _start_video(self) -> None:
        cam, enc = self.config.camera, self.config.encoder
        self.choice = probe_encoder(enc, cam)
        log.info("H.264 encoder: %s (%s)", self.choice.backend, self.choice.reason)
        # the config sections are the HAL's settings dataclasses (device_agent.config): passed as they are
        if self.choice.backend == "picamera2":
            from hal.encoder.picamera2 import Picamera2H264Source

            self.video = Picamera2H264Source(cam, enc, reason=self.choice.reason, on_state=self._camera_state)
        else:
            camera = create_reopening_camera(cam, on_state=self._camera_state)
            encoder = create_frame_encoder(self.choice, enc, camera.width, camera.height, camera.fps)
            self.video = FrameEncoderSource(camera, encoder,
                                            wanted=lambda: self.fanout is not None and self.fanout.subscribers > 0)
        if self.fanout is None:
            self.fanout = PacketFanout(self.video, idr_min_interval=enc.idr_min_interval_ms / 1000,
                                       min_bitrate=enc.min_bitrate, max_bitrate=enc.max_bitrate)
        else:  # a restart: viewers stay subscribed and resume at the new encoder's first IDR
            self.fanout.encoder = self.video
        await self.video.start(self.fanout.publish)

    async def _stop_video(self) -> None:
        if self.video is not None:
            await self.video.stop()

    def _camera_state(self, available: bool, message: str) -> None:
        if available:
            self.agent.alerts.clear("camera_unavailable", message)
        else:
            self.agent.alerts.raise_alert("P1", "camera_unavailable", message)

    # -- audio ---------------------------------------------------------------------------------
    async def _start_audio(self) -> None:
        from device_agent.ns.stage import stage_from_config
        from hal.audio.factory import create_sink, create_source

        stage, self.ns_error = stage_from_config(self.config.ns, on_alert=self._ns_alert)
        source = create_source(self.config.audio, on_state=self._mic_state)
        self.audio = AudioPipeline(source, stage)
        await self.audio.start()
        sink = create_sink(self.config.audio, on_state=self._speaker_state)
        if sink is not None:
            await sink.start()
            self.talkback = Talkback(sink)

    async def _stop_audio(self) -> None:
        if self.audio is not None:
            await self.audio.stop()

    def _mic_state(self, available: bool, message: str) -> None:
        if available:
            self.agent.alerts.clear("microphone_unavailable", message)
        else:
            self.agent.alerts.raise_alert("P1", "microphone_unavailable", message)

    def _speaker_state(self, available: bool, message: str) -> None:
        if available:
            self.agent.alerts.clear("speaker_unavailable", message)
        else:  # talkback is a degraded feature, not the service
            self.agent.alerts.raise_alert("P2", "speaker_unavailable", message)

    def _ns_alert(self, severity: str, message: str) -> None:
        """From the stage (on the audio worker thread when it falls behind): alerts live on the loop."""
        code = "ns_unavailable" if "off:" in message else "ns_over_budget"
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.agent.alerts.raise_alert, severity, code, message)

    async def capture_frame(self) -> CapturedFrame | None:
        """A current raw camera frame (for snapshots and self-tests; no second camera open)."""
        return await self.video.capture_frame() if self.video is not None else None

    # -- sessions for other transports (MQTT signaling) ----------------------------------------
    async def open_viewer_session(self, offer_sdp: str, session_id: str) -> tuple[str, Any]:
        """Answer an offer that arrived by another signaling path; returns (answer, close coroutine fn)."""
        assert self.sessions is not None
        session, answer = await self.sessions.create(offer_sdp, kind="mqtt", session_id=session_id)

        async def close() -> None:
            await self.sessions.close(session.id, "closed by signaling")

        return answer, close

    # -- commands ------------------------------------------------------------------------------
    async def _cmd_restart(self, params: dict[str, Any]) -> dict[str, Any]:
        """Restart the capture pipelines (viewers stay connected and resync on the next IDR)."""
        if params:
            raise CommandError("bad_request", f"media.restart takes no parameters, got {sorted(params)}")
        await self._stop_video()
        await self._start_video()
        if self.audio is not None:
            await self.audio.restart_source()
        return {"restarted": True, "encoder": self.choice.backend if self.choice else None}

    async def _cmd_ns(self, params: dict[str, Any]) -> dict[str, Any]:
        """``{"enabled": bool}`` switches noise suppression; ``{}`` only reports its state."""
        unknown = set(params) - {"enabled"}
        if unknown:
            raise CommandError("bad_request", f"unknown parameters {sorted(unknown)} (known: enabled)")
        stage = self.audio.stage if self.audio is not None else None
        if "enabled" in params:
            if not isinstance(params["enabled"], bool):
                raise CommandError("bad_request", "enabled must be true or false")
            if stage is None or self.ns_error:
                raise CommandError("unavailable", f"noise suppression is not loaded: {self.ns_error}")
            stage.enabled = params["enabled"]
            if params["enabled"] and getattr(stage, "fell_back", False):
                stage.reset_fallback()
                self.agent.alerts.clear("ns_over_budget", "noise suppression re-enabled")
        return stage.stats() if stage is not None else {"enabled": False}

    # -- health --------------------------------------------------------------------------------
    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            if self.sessions is not None:
                await self.sessions.refresh_stats()
            stage = self.audio.stage if self.audio is not None else None
            if stage is not None and stage.enabled and not getattr(stage, "fell_back", True):
                self.agent.alerts.clear("ns_over_budget", "noise suppression back within budget")

    def health(self) -> dict[str, Any]:
        video = self.video.stats() if self.video is not None else {}
        audio = self.audio.stats() if self.audio is not None else None
        latency = self.latency.percentiles()
        return {
            "encoder": {"backend": self.choice.backend if self.choice else None,
                        "reason": self.choice.reason if self.choice else None},
            "video": {**video, "capture_to_packet": latency},
            "fanout": self.fanout.stats() if self.fanout is not None else None,
            "audio": audio,
            "talkback": self.talkback.stats() if self.talkback is not None else None,
            "viewers": self.sessions.stats() if self.sessions is not None else None,
            "web": {"port": self.web.port} if self.web is not None else None,
        }
