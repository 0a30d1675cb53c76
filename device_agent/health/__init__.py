"""Device health providers that are not tied to one component (system metrics)."""

from device_agent.health.system import SystemMetrics

__all__ = ["SystemMetrics"]
