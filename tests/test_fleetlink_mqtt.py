"""The MQTT connection layer: backoff policy, URL parsing, and the paho internals it relies on."""

from __future__ import annotations

import asyncio
import inspect
import random
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from device_agent.fleetlink.mqtt import MqttConnection, MqttOptions, backoff_delay
from tests.support.mosquitto import Mosquitto, free_port


def test_full_jitter_backoff_bounds_and_spread() -> None:
    rng = random.Random(7)
    for attempt, cap in [(0, 1.0), (1, 2.0), (3, 8.0), (10, 60.0), (100, 60.0)]:
        xs = [backoff_delay(attempt, 1.0, 60.0, rng) for _ in range(2000)]
        assert 0 <= min(xs) and max(xs) <= cap
        assert min(xs) < cap * 0.05 and max(xs) > cap * 0.95  # the whole window is used
        assert abs(sum(xs) / len(xs) - cap / 2) < cap * 0.05


@pytest.mark.parametrize("url", ["http://x", "mqtt://", "tcp://host:1883", "host:1883"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="mqtt url"):
        MqttOptions(url=url).host_port()
    assert MqttOptions(url="mqtts://b.example").host_port() == ("b.example", 8883, True)
    assert MqttOptions(url="mqtt://10.0.0.1:1999").host_port() == ("10.0.0.1", 1999, False)


def test_paho_private_api_we_override_is_still_there() -> None:
    """_BufferedClient overrides Client._sock_recv and close() calls _sock_close (paho pinned < 3)."""
    assert list(inspect.signature(mqtt.Client._sock_recv).parameters) == ["self", "bufsize"]
    assert list(inspect.signature(mqtt.Client._sock_close).parameters) == ["self"]
    src = inspect.getsource(mqtt.Client._packet_read)
    assert "_sock_recv(" in src


async def test_reconnects_after_broker_restart_and_resubscribes(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "b").start()
    got: list[bytes] = []
    conn = MqttConnection(MqttOptions(url=broker.url, reconnect_min_s=0.1, reconnect_max_s=0.5))
    conn.subscribe("a/#", lambda m: got.append(m.payload))
    conn.start()
    try:
        await conn.wait_connected(5)
        broker.kill()
        for _ in range(50):
            if not conn.connected:
                break
            await asyncio.sleep(0.05)
        assert not conn.connected
        with pytest.raises(ConnectionError):
            await conn.publish("a/b", b"x")
        broker.start()
        await conn.wait_connected(10)
        assert conn.connects == 2
        await asyncio.sleep(0.2)
        await conn.publish("a/b", b"after")
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.05)
        assert got == [b"after"]
    finally:
        await conn.close()
        broker.stop()


async def test_unreachable_broker_keeps_retrying_without_blocking() -> None:
    conn = MqttConnection(
        MqttOptions(url=f"mqtt://127.0.0.1:{free_port()}", reconnect_min_s=0.05, reconnect_max_s=0.1)
    )
    conn.start()
    t0 = time.monotonic()
    ticks = 0
    while time.monotonic() - t0 < 0.5:  # the loop stays responsive
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks > 20 and not conn.connected and "Connection refused" in conn.last_connect_error
    await conn.close()


def test_socket_hooks_after_the_loop_closed_are_ignored() -> None:
    """paho's client closes its socket from ``__del__`` too, possibly after the connection's loop is gone:
    the hook must not raise (``RuntimeError: Event loop is closed`` in an unraisable-exception warning)."""
    import socket

    async def started() -> MqttConnection:
        conn = MqttConnection(MqttOptions(url=f"mqtt://127.0.0.1:{free_port()}", reconnect_min_s=5))
        conn.start()
        await asyncio.sleep(0)
        conn._runner.cancel()  # noqa: SLF001 - the loop ends with the connection never closed
        return conn

    conn = asyncio.run(started())
    errors: list[BaseException] = []

    def collect() -> None:  # the garbage collector may run it in any thread
        try:
            with socket.socket() as sock:
                conn._sock_close(conn._client, None, sock)  # noqa: SLF001 - what paho's __del__ calls
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    worker = threading.Thread(target=collect)
    worker.start()
    worker.join()
    assert not errors, errors
