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
from device_agent.media.graph import GraphCallbacks, build_layers, build_media_graph, build_video
from device_agent.media.health_schema import media_section
from device_agent.media.layers import LayerSet
from device_agent.media.session_record import session_event_sink
from device_agent.media.sessions import SessionManager
from device_agent.media.stages import StageAlert
from device_agent.media.tracks import LatencyWindow
from device_agent.media.whep import WhepServer
from device_agent.params import Param
from device_agent.registry import CommandError
from device_agent.tasks import cancel_and_wait
from hal.camera.base import CapturedFrame
from hal.encoder.base import EncodedVideoSource
from hal.encoder.probe import EncoderChoice

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
        self.layers: LayerSet | None = None
        self.audio: AudioPipeline | None = None
        self.talkback: Talkback | None = None
        self.sessions: SessionManager | None = None
        self.web: WhepServer | None = None
        self.ns_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats_task: asyncio.Task[None] | None = None
        agent.commands.register("media.restart", self._cmd_restart, param_error="bad_request")
        agent.commands.register(
            "media.ns", self._cmd_ns, params=[Param("enabled", "boolean")], param_error="bad_request"
        )

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        graph = build_media_graph(
            self.config,
            GraphCallbacks(
                camera_state=self._camera_state,
                mic_state=self._mic_state,
                speaker_state=self._speaker_state,
                stage_alert=self._ns_alert,
            ),
        )
        self.choice, self.video, self.fanout, self.layers = (
            graph.choice,
            graph.video,
            graph.fanout,
            graph.layers,
        )
        self.audio, self.talkback, self.ns_error = graph.audio, graph.talkback, graph.ns_error
        await self._start_video()
        await self._start_audio()
        web = self.config.web
        self.sessions = SessionManager(
            self.fanout,
            self.audio,
            self.talkback,
            latency=self.latency,
            max_viewers=web.max_viewers,
            connect_timeout_s=web.session_timeout_s,
            ice_servers=web.stun_servers,
            layers=self.layers,
        )
        self.sessions.on_end = session_event_sink(self.agent.events, self.config.camera.fps)  # media.session
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
        assert self.video is not None and self.fanout is not None  # built by start() or _cmd_restart
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
        assert self.audio is not None  # built by start()
        await self.audio.start()
        if self.talkback is not None:
            await self.talkback.sink.start()

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

    def _ns_alert(self, alert: StageAlert, message: str) -> None:
        """From the stage (on the audio worker thread when it falls behind): alerts live on the loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.agent.alerts.raise_alert, alert.severity, alert.code, message)

    async def capture_frame(self) -> CapturedFrame | None:
        """A current raw camera frame (for snapshots and self-tests; no second camera open)."""
        return await self.video.capture_frame() if self.video is not None else None

    # -- sessions for other transports (MQTT signaling) ----------------------------------------
    async def open_viewer_session(self, offer_sdp: str, session_id: str) -> tuple[str, Any]:
        """Answer an offer that arrived by another signaling path; returns (answer, close coroutine fn)."""
        sessions = self.sessions
        assert sessions is not None
        session, answer = await sessions.create(offer_sdp, kind="mqtt", session_id=session_id)

        async def close() -> None:
            await sessions.close(session.id, "closed by signaling")

        return answer, close

    # -- commands ------------------------------------------------------------------------------
    async def _cmd_restart(self, params: dict[str, Any]) -> dict[str, Any]:
        """Restart the capture pipelines (viewers stay connected and resync on the next IDR)."""
        if params:
            raise CommandError("bad_request", f"media.restart takes no parameters, got {sorted(params)}")
        await self._stop_video()
        self.choice, self.video, self.fanout = build_video(self.config, self._camera_state, self.fanout)
        if self.layers is not None:  # keep the low fan-out (its viewers) on the new source's low layer
            build_layers(self.config, self.video, self.fanout, self.layers)
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
            if params["enabled"] and stage.fell_back:
                stage.reset_fallback()
                self.agent.alerts.clear(StageAlert.OVER_BUDGET.code, "noise suppression re-enabled")
        return stage.stats() if stage is not None else {"enabled": False}

    # -- health --------------------------------------------------------------------------------
    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            if self.sessions is not None:
                await self.sessions.refresh_stats()
            stage = self.audio.stage if self.audio is not None else None
            if stage is not None and stage.enabled and not stage.fell_back:
                self.agent.alerts.clear(StageAlert.OVER_BUDGET.code, "noise suppression back within budget")

    def _fanout_stats(self) -> dict[str, Any] | None:
        """The high layer's fan-out, with the low layer's as ``low_layer`` when there is one."""
        if self.fanout is None:
            return None
        low = {"low_layer": self.layers.fanouts[1].stats()} if self.layers is not None else {}
        return {**self.fanout.stats(), **low}

    def health(self) -> dict[str, Any]:
        video = self.video.stats() if self.video is not None else {}
        audio = self.audio.stats() if self.audio is not None else None
        latency = self.latency.percentiles()
        return media_section(
            {  # the one schema of this section (health_schema.py; the simulator uses it too)
                "encoder": {
                    "backend": self.choice.backend if self.choice else None,
                    "reason": self.choice.reason if self.choice else None,
                },
                "video": {**video, "capture_to_packet": latency},
                "fanout": self._fanout_stats(),
                "audio": audio,
                "talkback": self.talkback.stats() if self.talkback is not None else None,
                "viewers": self.sessions.stats() if self.sessions is not None else None,
                "web": {"port": self.web.port} if self.web is not None else None,
            }
        )
