"""A device agent as a real subprocess for fleet tests: ``python -m tests.support.agent_proc CONFIG``.

Builds the agent with ``assemble.build_agent`` (so the fleet link comes from the config), runs it
until SIGTERM/SIGINT and exits 75 when ``agent.restart`` asked for a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from device_agent.agent import RESTART_EXIT_CODE
from device_agent.assemble import build_agent
from device_agent.config import dump_toml, load_config


async def _main(path: str) -> int:
    agent = build_agent(load_config(path))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, agent.request_stop)
    await agent.run()
    return RESTART_EXIT_CODE if agent.restart_requested else 0


class AgentProcess:
    """Start/kill the agent subprocess for a config dict written to ``workdir/agent.toml``."""

    def __init__(self, workdir: Path, config: dict) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "agent.toml"
        # the whole assembled agent runs; keep its media side light and its OTA root in the test dir
        light = {
            "camera": {"width": 160, "height": 120, "fps": 5},
            "ns": {"enabled": False},
            "web": {"enabled": False},
            "ota": {"root": str(self.workdir / "ota")},
        }
        for section, values in light.items():
            config = {**config, section: {**values, **config.get(section, {})}}
        self.config_path.write_text(dump_toml(config))
        self.log_path = self.workdir / "agent.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> AgentProcess:
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.agent_proc", str(self.config_path)],
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        log.close()
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else None

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.proc.poll()  # type: ignore[return-value]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(_main(sys.argv[1])))
