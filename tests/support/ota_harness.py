"""OTA test harness: throwaway release wheels, a device tree in a temp dir, a systemd stand-in.

Nothing here fakes the OTA path: bundles are built from real wheels (``pip wheel``), installed by
the real installer with pip into real virtualenv slots, and the "service" is the release's own
console script run from ``<root>/current`` after the real boot check, supervised the way
systemd's ``Restart=on-failure`` and ``WatchdogSec=`` would (restart on failure, SIGABRT when
``WATCHDOG=1`` stops arriving on ``$NOTIFY_SOCKET``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_SITE = next((REPO / ".venv" / "lib").glob("python3*/site-packages"), None)
PY = sys.executable
BOOT_CHECK = REPO / "ota" / "layout.py"

PROBE_MAIN = '''
"""A throwaway release used by the OTA tests."""
import asyncio, json, os, signal, sys, time

VERSION = {version!r}
MODE = {mode!r}


def main() -> int:
    if sys.argv[1:] == ["--version"]:
        print(VERSION)
        return 0
    events = os.environ.get("PROBE_EVENTS")

    def record(event):
        if events:
            with open(events, "a") as f:
                f.write(json.dumps(dict(event, probe_version=VERSION)) + "\\n")

    record({{"type": "probe", "phase": "started", "pid": os.getpid(), "mode": MODE}})
    if MODE == "crash":
        print("probe: crashing on start", file=sys.stderr)
        return 3
    if MODE == "freeze":
        time.sleep(3600)  # a hang before READY: only the watchdog can end it
    from device_agent.agent import Agent
    from device_agent.config import load_config
    from device_agent.watchdog import WatchdogComponent
    from device_agent.ota_component import OtaComponent, exit_code

    cfg = load_config(sys.argv[sys.argv.index("--config") + 1])
    agent = Agent(cfg)
    agent.events.subscribe(record)

    class Probe:
        name = "probe"

        async def start(self):
            pass

        async def stop(self):
            pass

        def healthy(self):
            return MODE != "hang"

    agent.add(Probe())
    agent.add(OtaComponent(agent))
    agent.add(WatchdogComponent(agent.healthy))

    async def run():
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, agent.request_stop)
        await agent.run()

    asyncio.run(run())
    return exit_code(agent)
'''


def build_probe_wheel(out_dir: Path, version: str, mode: str = "ok") -> Path:
    """A real wheel of the ``otaprobe`` package (console script ``otaprobe``)."""
    src = out_dir / f"src-{version}-{mode}"
    (src / "otaprobe").mkdir(parents=True, exist_ok=True)
    (src / "otaprobe" / "__init__.py").write_text(PROBE_MAIN.format(version=version, mode=mode))
    (src / "pyproject.toml").write_text(
        textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "otaprobe"
        version = "{version}"
        [project.scripts]
        otaprobe = "otaprobe:main"
    """)
    )
    wheels = out_dir / f"wheels-{version}-{mode}"
    subprocess.run(
        [
            PY,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--disable-pip-version-check",
            "-w",
            str(wheels),
            str(src),
        ],
        check=True,
    )
    return next(wheels.glob("*.whl"))


@dataclass
class Device:
    """One simulated device: slots root, state dir, trusted keys, agent.toml."""

    base: Path
    hardware: str = "probe-hw"
    trial_deadline_s: float = 8.0
    trial_healthy_s: float = 0.5
    max_failed_starts: int = 2
    hooks_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    device_id: str = "probe"
    mqtt_url: str = ""
    layer: bool = True  # slots see the dev tree and this venv (needed to run the agent's code)

    def __post_init__(self) -> None:
        self.root = self.base / "opt"
        self.state_dir = self.base / "state"
        self.keys_dir = self.base / "trusted"
        self.events_path = self.base / "events.jsonl"
        for d in (self.root, self.state_dir, self.keys_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.config_path = self.base / "agent.toml"
        self.write_config()

    def write_config(self) -> None:
        extra_paths = ([str(REPO)] + ([str(VENV_SITE)] if VENV_SITE else [])) if self.layer else []
        lines = [
            "[device]",
            f'id = "{self.device_id}"',
            f'hardware = "{self.hardware}"',
            f'state_dir = "{self.state_dir}"',
            "[ota]",
            f'root = "{self.root}"',
            f'trusted_keys_dir = "{self.keys_dir}"',
            f'hooks_dir = "{self.hooks_dir}"',
            f"trial_deadline_s = {self.trial_deadline_s}",
            f"trial_healthy_s = {self.trial_healthy_s}",
            f"max_failed_starts = {self.max_failed_starts}",
            "hook_timeout_s = 20.0",
            "free_space_reserve_bytes = 0",
            "slot_extra_paths = [" + ", ".join(json.dumps(p) for p in extra_paths) + "]",
        ]
        lines += [f"{k} = {json.dumps(v)}" for k, v in self.extra.items()]
        if self.mqtt_url:
            lines += ["[mqtt]", f'url = "{self.mqtt_url}"', "telemetry_interval_s = 1.0"]
        self.config_path.write_text("\n".join(lines) + "\n")

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PY, "-m", "device_agent.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
        )

    def boot_check(self) -> subprocess.CompletedProcess:
        """The boot path exactly as the unit runs it: the system Python on the copied script."""
        python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else PY
        return subprocess.run(
            [python, str(BOOT_CHECK), "--root", str(self.root), "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def running_version(self) -> str | None:
        """Run the release from ``current`` the way the service would; None if it does not work."""
        exe = self.root / "current" / "bin" / "otaprobe"
        try:
            proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
        except OSError:
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    def state(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / "ota.json").read_text())
        except FileNotFoundError:
            return {}

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines() if line.strip()]

    def slot_listing(self) -> dict[str, Any]:
        """A fingerprint of both slots (names, sizes, mtimes) to prove nothing was written."""
        out = {}
        for path in sorted((self.root / "slots").rglob("*")) if (self.root / "slots").exists() else []:
            st = path.lstat()
            out[str(path.relative_to(self.root))] = (st.st_size, st.st_mtime_ns)
        out["current"] = os.readlink(self.root / "current") if (self.root / "current").is_symlink() else None
        return out


@dataclass
class Run:
    version: str | None
    returncode: int | None
    killed_by_watchdog: bool


def supervise(
    dev: Device, until, watchdog_s: float = 3.0, max_runs: int = 10, timeout_s: float = 90.0
) -> list[Run]:
    """Run the service like systemd: boot check, start from ``current``, restart on failure.

    Stops when ``until(dev)`` is true (the running process is then sent SIGTERM) or the process
    exits 0. A process that stops sending ``WATCHDOG=1`` for ``watchdog_s`` gets SIGABRT.
    """
    runs: list[Run] = []
    sock_path = dev.base / "notify.sock"
    deadline = time.monotonic() + timeout_s
    while len(runs) < max_runs and time.monotonic() < deadline:
        check = dev.boot_check()
        assert check.returncode == 0, f"boot check failed: {check.stdout}{check.stderr}"
        version = dev.running_version()
        if sock_path.exists():
            sock_path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(sock_path),
            "WATCHDOG_USEC": str(int(watchdog_s * 1e6)),
            "PROBE_EVENTS": str(dev.events_path),
        }
        proc = subprocess.Popen(
            [str(dev.root / "current" / "bin" / "otaprobe"), "run", "--config", str(dev.config_path)],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        last_ping = time.monotonic()
        killed = False
        try:
            while proc.poll() is None:
                ready, _, _ = select.select([sock], [], [], 0.05)
                if ready:
                    msg = sock.recv(4096).decode()
                    if "WATCHDOG=1" in msg or "READY=1" in msg:
                        last_ping = time.monotonic()
                if until(dev):
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
                    runs.append(Run(version, proc.returncode, False))
                    return runs
                if time.monotonic() - last_ping > watchdog_s:
                    os.killpg(proc.pid, signal.SIGABRT)
                    proc.wait(10)
                    killed = True
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                    raise TimeoutError(f"supervise timed out; runs so far {runs}")
        finally:
            sock.close()
            if proc.stderr:
                proc.stderr.close()
        runs.append(Run(version, proc.returncode, killed))
        if proc.returncode == 0:
            return runs
        if until(dev):
            return runs
    return runs


_WHEEL_DIR: Path | None = None
_WHEELS: dict[tuple[str, str], Path] = {}


def probe_wheel(version: str, mode: str = "ok") -> Path:
    """Build (once per test session) the probe wheel for ``version``/``mode``."""
    global _WHEEL_DIR
    import tempfile

    if _WHEEL_DIR is None:
        import atexit
        import shutil

        _WHEEL_DIR = Path(tempfile.mkdtemp(prefix="ota-wheels-"))
        atexit.register(shutil.rmtree, _WHEEL_DIR, True)
    key = (version, mode)
    if key not in _WHEELS:
        _WHEELS[key] = build_probe_wheel(_WHEEL_DIR, version, mode)
    return _WHEELS[key]


def make_bundle(
    dev: Device,
    out: Path,
    version: str,
    mode: str = "ok",
    hooks: Path | None = None,
    firmware: Path | None = None,
    keys: list | None = None,
    **kwargs: Any,
) -> Path:
    """A signed bundle of the probe release, built with the real ``ota.bundle.build``."""
    from ota import bundle as bundle_mod

    wheelhouse = out.parent / f"wh-{out.stem}"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    wheel = probe_wheel(version, mode)
    (wheelhouse / wheel.name).write_bytes(wheel.read_bytes())
    bundle_mod.build(
        out,
        version,
        wheelhouse,
        kwargs.pop("hardware", [dev.hardware]),
        hooks=hooks,
        firmware=firmware,
        keys=keys if keys is not None else [dev.signing_key],
        **kwargs,
    )
    return out


def provision(dev: Device) -> None:
    """A signing key trusted by the device, and version 1.0.0 installed and committed in slot a."""
    from device_agent.config import load_config
    from ota import signing
    from ota.installer import Installer, InstallOptions
    from ota.layout import Layout
    from ota.trial import commit

    signing.generate(dev.base / "release.key", dev.keys_dir / "release.pub")
    dev.signing_key = signing.load_private(dev.base / "release.key")
    bundle = make_bundle(dev, dev.base / "bundles" / "v1.tar", "1.0.0")
    cfg = load_config(dev.config_path)
    layout = Layout(dev.root, dev.state_dir)
    Installer(layout, InstallOptions.from_config(cfg)).install(bundle)
    commit(layout, InstallOptions.from_config(cfg))
    state = layout.load_state()
    state["last_result"]["reported"] = True  # the factory install is not news for the fleet
    layout.save_state(state)


def has_event(dev: Device, phase: str, version: str | None = None) -> bool:
    return any(
        e.get("type") == "ota"
        and e.get("phase") == phase
        and (version is None or e.get("version") == version)
        for e in dev.events()
    )
