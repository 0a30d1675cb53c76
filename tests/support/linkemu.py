"""An impaired network link between two network namespaces, emulated in user space.

Kernel netem is not available on these machines, but network namespaces and TUN devices are (as
root). ``ImpairedLink`` makes two namespaces, ``<name>-a`` and ``<name>-b``, each with one TUN
device and a point-to-point address (``10.251.X.1`` in a, ``10.251.X.2`` in b), and starts a
forwarder process (``python -m tests.support.linkemu``) that holds both TUN descriptors and carries
every IP packet between them through a model of a bottleneck link, per direction:

- ``rate_kbps``: serialisation at that rate (0: unlimited);
- ``queue_ms``: a drop-tail queue in front of it, holding at most that much sending time (a packet
  that would wait longer is dropped, as a router's buffer of that size would);
- ``loss``: random loss after the bottleneck (the packet used the link, then vanished);
- ``delay_ms`` and ``jitter_ms``: propagation delay, jitter without reordering;
- ``down``: every packet dropped (an outage).

Profiles change at run time (``set``), and ``stats()`` returns the forwarder's counters. Traffic
only ever goes to addresses inside the two namespaces the link made. ``close()`` (or leaving the
context) kills the forwarder and deletes the namespaces; namespaces left behind by a process that
died are removed by the next ``ImpairedLink`` (their names carry the owner's pid).

Processes join a namespace with ``netns_command(ns, argv)`` (``ip netns exec``); code in this process
runs there on ``NamespaceLoop``, an asyncio loop on a thread that entered the namespace (setns(2)
is per thread), so an aiortc viewer's and an HTTP client's sockets live in that namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

NS_PREFIX = "dalink"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000


@dataclasses.dataclass(frozen=True)
class LinkProfile:
    """One direction of the link."""

    loss: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_kbps: float = 0.0
    queue_ms: float = 300.0
    down: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CLEAN = LinkProfile()


# ---------------------------------------------------------------- the forwarder (child process)


@dataclasses.dataclass
class _Direction:
    out_fd: int
    profile: LinkProfile = CLEAN
    busy_until: float = 0.0
    last_delivery: float = 0.0
    counters: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(
            (
                "packets",
                "bytes",
                "delivered",
                "delivered_bytes",
                "lost",
                "queue_drops",
                "outage_drops",
                "write_errors",
            ),
            0,
        )
    )

    def admit(self, now: float, size: int, rng: random.Random) -> float | None:
        """When the packet leaves the far end, or None when it is dropped."""
        p, c = self.profile, self.counters
        c["packets"] += 1
        c["bytes"] += size
        if p.down:
            c["outage_drops"] += 1
            return None
        start = max(now, self.busy_until)
        if p.rate_kbps > 0:
            if start - now > p.queue_ms / 1000.0:
                c["queue_drops"] += 1
                return None
            self.busy_until = start + size * 8 / (p.rate_kbps * 1000.0)
            start = self.busy_until
        if p.loss > 0 and rng.random() < p.loss:
            c["lost"] += 1
            return None
        jitter = rng.uniform(-p.jitter_ms, p.jitter_ms) / 1000.0 if p.jitter_ms else 0.0
        at = max(start + max(0.0, p.delay_ms / 1000.0 + jitter), self.last_delivery)
        self.last_delivery = at
        return at


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def _forward(tun_a: str, tun_b: str, seed: int) -> None:
    """The child: open both TUNs, say ready, then forward until stdin closes."""
    fd_a, fd_b = _open_tun(tun_a), _open_tun(tun_b)
    rng = random.Random(seed)
    dirs = {fd_a: _Direction(out_fd=fd_b), fd_b: _Direction(out_fd=fd_a)}
    names = {"a_to_b": dirs[fd_a], "b_to_a": dirs[fd_b]}
    pending: list[tuple[float, int, int, bytes]] = []  # (due, order, out fd, packet)
    order = 0
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    buf = b""
    print("ready", flush=True)
    poller = select.poll()
    for fd in (fd_a, fd_b, stdin):
        poller.register(fd, select.POLLIN)
    while True:
        now = time.monotonic()
        timeout = max(0.0, pending[0][0] - now) * 1000.0 if pending else 1000.0
        for fd, _ in poller.poll(timeout):
            if fd == stdin:
                chunk = os.read(stdin, 65536)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    _control(json.loads(line), names)
                continue
            direction = dirs[fd]
            for _ in range(64):
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                due = direction.admit(time.monotonic(), len(packet), rng)
                if due is not None:
                    order += 1
                    heapq.heappush(pending, (due, order, direction.out_fd, packet))
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, out_fd, packet = heapq.heappop(pending)
            sender = dirs[fd_a] if out_fd == fd_b else dirs[fd_b]
            try:
                os.write(out_fd, packet)
                sender.counters["delivered"] += 1
                sender.counters["delivered_bytes"] += len(packet)
            except OSError:
                sender.counters["write_errors"] += 1


def _control(message: dict[str, Any], names: dict[str, _Direction]) -> None:
    """Apply a control message and answer it: the counters for ``stats``, else ``{}``."""
    for key in ("a_to_b", "b_to_a"):
        if key in message:
            names[key].profile = LinkProfile(**message[key])
    answer = {key: d.counters for key, d in names.items()} if message.get("stats") else {}
    print(json.dumps(answer), flush=True)


# ---------------------------------------------------------------- the parent side


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=20)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces() -> list[str]:
    """Delete our namespaces whose owner process is gone (a test run that was killed)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    removed = []
    for line in listed.splitlines():
        name = line.split()[0] if line.strip() else ""
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == NS_PREFIX and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
            removed.append(name)
    return removed


def netns_command(namespace: str, argv: list[str]) -> list[str]:
    """``argv`` run inside ``namespace``."""
    return ["ip", "netns", "exec", namespace, *argv]


class ImpairedLink:
    """Two namespaces joined by an emulated link; see the module docstring."""

    _counter = 0

    def __init__(self, seed: int = 1) -> None:
        ImpairedLink._counter += 1
        index = (os.getpid() * 7 + ImpairedLink._counter) % 250 + 1
        tag = f"{os.getpid()}-{ImpairedLink._counter}"
        self.ns_a, self.ns_b = f"{NS_PREFIX}-{tag}-a", f"{NS_PREFIX}-{tag}-b"
        short = f"{os.getpid() % 100000}{ImpairedLink._counter % 100}"
        self.tun_a, self.tun_b = f"dla{short}"[:15], f"dlb{short}"[:15]
        self.addr_a, self.addr_b = f"10.251.{index}.1", f"10.251.{index}.2"
        self.seed = seed
        self.proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def start(self) -> ImpairedLink:
        if os.geteuid() != 0:
            raise PermissionError("the link emulator needs root (network namespaces and TUN devices)")
        remove_stale_namespaces()
        try:
            for ns in (self.ns_a, self.ns_b):
                _run("ip", "netns", "add", ns)
                _run("ip", "-n", ns, "link", "set", "lo", "up")
            root = Path(__file__).resolve().parents[2]
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.support.linkemu",
                    "--tun-a",
                    self.tun_a,
                    "--tun-b",
                    self.tun_b,
                    "--seed",
                    str(self.seed),
                ],
                cwd=root,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            assert self.proc.stdout is not None
            ready = self.proc.stdout.readline().strip()
            if ready != "ready":
                raise RuntimeError(f"link forwarder did not start: {ready!r}")
            for tun, ns, local, peer in (
                (self.tun_a, self.ns_a, self.addr_a, self.addr_b),
                (self.tun_b, self.ns_b, self.addr_b, self.addr_a),
            ):
                _run("ip", "link", "set", tun, "netns", ns)
                _run("ip", "-n", ns, "addr", "add", local, "peer", peer, "dev", tun)
                _run("ip", "-n", ns, "link", "set", tun, "up", "mtu", "1400")
        except BaseException:
            self.close()
            raise
        return self

    def set(self, a_to_b: LinkProfile | None = None, b_to_a: LinkProfile | None = None) -> None:
        """Change one or both directions now."""
        message = {}
        if a_to_b is not None:
            message["a_to_b"] = a_to_b.to_json()
        if b_to_a is not None:
            message["b_to_a"] = b_to_a.to_json()
        with self._lock:
            self._request(message)

    def set_both(self, profile: LinkProfile) -> None:
        self.set(profile, profile)

    def stats(self) -> dict[str, dict[str, int]]:
        """The forwarder's counters per direction (``a_to_b``, ``b_to_a``)."""
        with self._lock:
            return self._request({"stats": True})

    def _request(self, message: dict[str, Any]) -> Any:
        """Send a control message and wait for its answer: once ``set`` returns, packets see the change."""
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdout is None or proc.poll() is not None:
            raise RuntimeError("the link forwarder is not running")
        proc.stdin.write(json.dumps(message) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the link forwarder exited")
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream:
                    stream.close()
            self.proc = None
        for ns in (self.ns_a, self.ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)

    def __enter__(self) -> ImpairedLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _enter_namespace(namespace: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({namespace}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NamespaceLoop:
    """An asyncio event loop on its own thread inside ``namespace``; ``run(coro)`` waits for a result."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.loop = asyncio.new_event_loop()
        self._ready: Future[None] = Future()
        self.thread = threading.Thread(target=self._main, name=f"netns-{namespace}", daemon=True)
        self.thread.start()
        self._ready.result(10)

    def _main(self) -> None:
        try:
            _enter_namespace(self.namespace)
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        asyncio.set_event_loop(self.loop)
        self._ready.set_result(None)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        return self.submit(coro).result(timeout)

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await, from another event loop, ``coro`` run on this one."""
        return await asyncio.wrap_future(self.submit(coro))

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the link emulator's forwarder (started by ImpairedLink)")
    parser.add_argument("--tun-a", required=True)
    parser.add_argument("--tun-b", required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    _forward(args.tun_a, args.tun_b, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
