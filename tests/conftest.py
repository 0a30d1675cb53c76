"""Shared fixtures: a real mosquitto broker per test on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A plain, anonymous broker; tests needing TLS/ACL build their own ``Mosquitto``."""
    broker = Mosquitto(tmp_path / "broker").start()
    yield broker
    broker.stop()
