"""Grafana dashboards for the fleet service's Prometheus metrics (package data)."""
