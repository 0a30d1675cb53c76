"""Builds an Agent with every component the configuration asks for."""

from __future__ import annotations

from device_agent.agent import Agent
from device_agent.config import AgentConfig


def build_agent(config: AgentConfig) -> Agent:
    """Compose the agent. Each feature adds its component here, in start order."""
    agent = Agent(config)
    # media (camera, encoder, audio, WHEP web server) -- issue 2
    # fleet link (MQTT telemetry, alerts, commands) -- issue 4
    # OTA trial / watchdog -- issue 5
    # diagnostics commands -- issue 7
    return agent
