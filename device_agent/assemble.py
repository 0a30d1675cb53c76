"""Builds an Agent with every component the configuration asks for, in start order."""

from __future__ import annotations

from device_agent.agent import Agent
from device_agent.config import AgentConfig


def build_agent(config: AgentConfig) -> Agent:
    """Compose the agent. Components start in this order and stop in reverse."""
    from device_agent.diag.component import DiagnosticsComponent
    from device_agent.media.component import MediaComponent
    from device_agent.ota_component import OtaComponent
    from device_agent.watchdog import WatchdogComponent, pipelines_healthy

    agent = Agent(config)
    if config.mqtt.url:  # fleet link first: it carries the others' alerts, events and commands
        from device_agent.fleetlink import FleetLink

        agent.add(FleetLink(agent))
    if config.mqtt.url.startswith("mqtts://") and config.mqtt.cert_file:  # provisioned: renew before expiry
        from provisioning.renewal import RenewalComponent

        agent.add(RenewalComponent(agent))
    agent.add(MediaComponent(agent))
    agent.add(OtaComponent(agent))  # commands, progress events, the post-switch trial
    agent.add(DiagnosticsComponent(agent))  # after media and the link it uses
    agent.add(WatchdogComponent(pipelines_healthy(agent)))  # last: READY=1 means everything started
    return agent
