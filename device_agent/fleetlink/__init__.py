"""The device's fleet link over MQTT 5: status, telemetry, alerts, events, commands, spool."""

from device_agent.fleetlink.link import FleetLink

__all__ = ["FleetLink"]
