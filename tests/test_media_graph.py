"""The media graph built in one place (device_agent/media/graph.py) and the complete AudioStage
protocol: stage alerts reach the agent by their enum code, no probing of the stage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from device_agent.config import config_from_dict
from device_agent.media.graph import build_video
from device_agent.media.stages import AudioStage, StageAlert
from device_agent.ns.model import MaskModel
from device_agent.ns.stage import BypassStage, NoiseSuppressionStage, create_stage
from tests.support.media import media_config, running_agent


def test_alert_codes_are_unchanged_and_every_stage_has_the_whole_protocol() -> None:
    assert {a.code for a in StageAlert} == {"ns_over_budget", "ns_unavailable"}
    assert all(a.severity == "P2" for a in StageAlert)
    stages: list[AudioStage] = [NoiseSuppressionStage(MaskModel()), BypassStage("no model")]
    for stage in stages:
        assert stage.fell_back is False and isinstance(stage.latency, int)
        stage.reset_fallback()
        out = stage.process(np.zeros(320, np.int16))
        assert out.shape == (320,) and isinstance(stage.stats(), dict)
    assert stages[0].error is None and stages[1].error == "no model"


def test_typed_and_plain_alert_callbacks_both_hear_a_missing_model(tmp_path: Path) -> None:
    typed: list[tuple[StageAlert, str]] = []
    plain: list[tuple[str, str]] = []
    stage, err = create_stage(
        str(tmp_path / "missing.tflite"),
        on_alert=lambda s, m: plain.append((s, m)),
        on_stage_alert=lambda a, m: typed.append((a, m)),
    )
    assert isinstance(stage, BypassStage) and err
    assert [a for a, _ in typed] == [StageAlert.UNAVAILABLE] and plain[0][0] == "P2"
    assert typed[0][1] == plain[0][1]


def test_a_restart_rebuild_keeps_the_fanout_and_points_it_at_the_new_source(tmp_path: Path) -> None:
    cfg = config_from_dict(media_config(tmp_path, camera={"width": 160, "height": 120}))
    states: list[tuple[bool, str]] = []
    choice, video, fanout = build_video(cfg, lambda ok, msg: states.append((ok, msg)))
    assert fanout.encoder is video and choice.backend
    _, again, same = build_video(cfg, lambda ok, msg: states.append((ok, msg)), fanout)
    assert same is fanout and fanout.encoder is again and again is not video


async def test_a_missing_model_raises_ns_unavailable(tmp_path: Path) -> None:
    config = media_config(tmp_path, ns={"model": str(tmp_path / "missing.tflite")})
    async with running_agent(config) as agent:
        await asyncio.sleep(0.1)  # the alert is raised on the loop (call_soon_threadsafe)
        alerts = {a.code: a for a in agent.alerts.active()}
        assert (
            alerts["ns_unavailable"].severity == "P2" and "missing.tflite" in alerts["ns_unavailable"].message
        )
        assert "ns_over_budget" not in alerts


async def test_over_budget_raises_ns_over_budget_and_re_enabling_clears_it(tmp_path: Path) -> None:
    config = media_config(tmp_path, ns={"budget_rtf": 1e-6})  # any real model run is over this budget
    async with running_agent(config) as agent:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            a.code == "ns_over_budget" for a in agent.alerts.active()
        ):
            await asyncio.sleep(0.1)
        alerts = {a.code: a for a in agent.alerts.active()}
        assert alerts["ns_over_budget"].severity == "P2" and "ns_unavailable" not in alerts
        media = agent.get("media")
        assert media.audio.stage.fell_back
        stats = await agent.commands.dispatch("media.ns", {"enabled": True})
        assert stats["fell_back"] is False
        assert not any(a.code == "ns_over_budget" for a in agent.alerts.active())
