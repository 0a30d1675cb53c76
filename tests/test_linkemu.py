"""The user-space link emulator (tests/support/linkemu.py): delay, loss, rate, queue, outage, cleanup."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

from tests.support.linkemu import ImpairedLink, LinkProfile, NamespaceLoop, netns_command

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and TUN devices need root")


async def _echo_server(addr: str) -> asyncio.DatagramTransport:
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, peer: tuple[str, int]) -> None:
            self.transport.sendto(data, peer)  # type: ignore[attr-defined]

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Echo, local_addr=(addr, 9999))
    return transport


async def _probe(addr: str, count: int, size: int, interval: float) -> list[float]:
    """Round trip times (ms) of the echoes that came back."""
    arrived: dict[int, float] = {}

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, peer: tuple[str, int]) -> None:
            arrived[int(data[:8])] = time.monotonic()

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Client, remote_addr=(addr, 9999))
    sent = {}
    for i in range(count):
        sent[i] = time.monotonic()
        transport.sendto(b"%08d" % i + b"x" * (size - 8))
        await asyncio.sleep(interval)
    await asyncio.sleep(1.0)
    transport.close()
    return sorted((arrived[i] - sent[i]) * 1000 for i in arrived)


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_delay_loss_rate_and_outage() -> None:
    with ImpairedLink(seed=7) as link:
        server, client = NamespaceLoop(link.ns_b), NamespaceLoop(link.ns_a)
        try:
            server.run(_echo_server(link.addr_b))
            clean = client.run(_probe(link.addr_b, 40, 100, 0.005))
            assert len(clean) == 40 and clean[len(clean) // 2] < 20

            link.set_both(LinkProfile(delay_ms=50, loss=0.1))
            lossy = client.run(_probe(link.addr_b, 300, 100, 0.002))
            assert 95 <= lossy[len(lossy) // 2] < 140  # 2 x 50 ms
            assert 0.70 * 300 < len(lossy) < 0.90 * 300  # 0.9 x 0.9 survive a round trip

            link.set_both(LinkProfile(rate_kbps=400, queue_ms=100))
            before = link.stats()["a_to_b"]
            started = time.monotonic()
            client.run(_probe(link.addr_b, 150, 1000, 0.004))  # 2 Mbit/s offered into 400 kbit/s
            after = link.stats()["a_to_b"]
            sending_s = time.monotonic() - started - 1.0
            delivered_bits = (after["delivered_bytes"] - before["delivered_bytes"]) * 8
            assert after["queue_drops"] > before["queue_drops"]
            # at most the rate over the sending time plus the queue it drained afterwards
            assert delivered_bits <= 400_000 * (sending_s + 0.100) + 8 * 1100
            assert delivered_bits >= 400_000 * sending_s * 0.8

            link.set_both(LinkProfile(down=True))
            assert client.run(_probe(link.addr_b, 10, 100, 0.01)) == []
            link.set_both(LinkProfile())
            assert len(client.run(_probe(link.addr_b, 10, 100, 0.01))) == 10
        finally:
            client.close()
            server.close()
    assert link.ns_a not in _namespaces() and link.ns_b not in _namespaces()


def test_namespaces_are_removed_when_the_test_fails_and_after_a_killed_run() -> None:
    link = ImpairedLink()
    with pytest.raises(RuntimeError), link:
        raise RuntimeError("the test failed")
    assert link.ns_a not in _namespaces()

    # a run killed before its cleanup leaves a namespace named after its pid: the next link removes it
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"dalink-{dead.pid}-1-a"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    with ImpairedLink():
        assert stale not in _namespaces()


def test_processes_join_a_namespace() -> None:
    with ImpairedLink() as link:
        out = subprocess.run(
            netns_command(link.ns_a, ["ip", "-brief", "addr"]), capture_output=True, text=True, check=True
        ).stdout
        assert link.addr_a in out
