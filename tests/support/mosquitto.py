"""A real mosquitto broker for tests: free loopback port, own config, kill and restart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """One mosquitto process. ``extra_config`` is appended after the listener lines.

    ``listeners`` maps a name to extra lines for an additional ``listener PORT 127.0.0.1``
    block (for TLS or claim listeners); their ports are in ``self.ports[name]``.
    """

    def __init__(
        self,
        workdir: Path,
        extra_config: str = "",
        listeners: dict[str, str] | None = None,
        plain: bool = True,
        persistence: bool = True,
    ) -> None:
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port() if plain else 0
        self.ports: dict[str, int] = {name: free_port() for name in (listeners or {})}
        # As root, mosquitto would drop to its own user, which cannot write pytest's 0700 tmp dirs:
        # persistence would fail silently. Tests stay root; a device's broker never runs like this.
        lines = (["user root"] if os.geteuid() == 0 else []) + [
            "per_listener_settings false" if not listeners else "per_listener_settings true",
            "set_tcp_nodelay true",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 100000",
            "max_inflight_messages 0",
        ]
        if plain:
            lines += [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        self.config_text = "\n".join(lines) + "\n" + extra_config + "\n"
        for name, block in (listeners or {}).items():
            self.config_text += f"\nlistener {self.ports[name]} 127.0.0.1\n{block}\n"
        self.config_path = self.workdir / "mosquitto.conf"
        self.config_path.write_text(self.config_text)
        self.log_path = self.workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Mosquitto:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)], stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        ports = [p for p in [self.port, *self.ports.values()] if p]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
            if all(_listening(p) for p in ports):
                return self
            time.sleep(0.02)
        raise TimeoutError(f"mosquitto did not listen on {ports}")

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
