"""The README's "Running a fleet" commands, run as written (docs/fleetctl.md, "The README cannot drift").

The test takes the section's TOML profile example and its ``sh`` blocks from README.md, writes a
profile with the example's keys (local paths and free ports as values), points ``FLEETCTL_PROFILE``
at it and runs every command line unchanged with bash; between the blocks it starts a real
mosquitto on the configuration ``fleetctl broker-config`` wrote, as the README's prose says. A line
ending in ``&`` runs in the background until the end. Then the same broker answers the error cases
one line each: the wrong CA, a plain URL on the TLS listener, a wrong port, a missing store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

from fleet.profile import KEYS
from fleet.store import Store
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.ota_harness import probe_wheel

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's fleetctl
READY = {"serve": "fleetctl serve: worker", "simulate": "devices connected"}  # background: started when


def readme_section(title: str = "Running a fleet") -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", section, re.S | re.M)


def command_lines(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def background(line: str) -> str | None:
    """The command of a line that ends in ``&`` (before an optional comment), else None."""
    m = re.match(r"^(.*?)\s+&\s*(#.*)?$", line)
    return m.group(1) if m else None


def test_readme_fleet_commands_run_as_written(tmp_path: Path) -> None:
    section = readme_section()
    [example] = blocks(section, "toml")
    sh = blocks(section, "sh")
    assert len(sh) == 2, "the section has the broker block, then (mosquitto started) the fleet block"
    readme_profile = tomllib.loads(example)
    assert set(readme_profile) <= set(KEYS), set(readme_profile) - set(KEYS)  # the example is valid

    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    service_port, device_port, claim_port, http_port = free_port(), free_port(), free_port(), free_port()
    local = {  # the README example's keys, with this machine's paths and free ports
        "mqtt": f"mqtts://localhost:{service_port}",
        "state_dir": str(tmp_path / "state"),
        "db": str(tmp_path / "fleet.db"),
        "broker_dir": str(tmp_path / "broker"),
        "http": f"127.0.0.1:{http_port}",
    }
    assert set(readme_profile) <= set(local)
    profile = {k: local[k] for k in readme_profile} | {"device_port": device_port, "claim_port": claim_port}
    profile_path = tmp_path / "profile.toml"
    profile_path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in profile.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "FLEETCTL_", "XDG_CONFIG"))}
    env |= {
        "PATH": f"{BIN}:{env.get('PATH', '')}",
        "HOME": str(home),
        "FLEETCTL_PROFILE": str(profile_path),
        "PYTHONUNBUFFERED": "1",
    }
    wheels = work / "wheels"  # what `pip wheel --wheel-dir wheels/ ...` leaves: a wheelhouse
    wheels.mkdir()
    shutil.copy(probe_wheel("1.2.0"), wheels)

    outputs: dict[str, str] = {}
    procs: dict[str, subprocess.Popen[str]] = {}
    logs: dict[str, list[str]] = {}
    broker: Mosquitto | None = None

    def run(line: str) -> None:
        cmd = background(line)
        if cmd is not None:
            name = cmd.split()[1]
            proc = subprocess.Popen(
                ["bash", "-c", f"exec {cmd}"],
                cwd=work,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            procs[name] = proc
            assert proc.stdout is not None
            seen = logs.setdefault(name, [])
            for out in proc.stdout:  # until it says it is up
                seen.append(out)
                if READY[name] in out:
                    break
            assert proc.poll() is None, f"{line}\n{''.join(seen)}"
            threading.Thread(target=lambda: seen.extend(proc.stdout or ()), daemon=True).start()  # drain
            if name == "simulate":  # and until the service has stored every device's status
                n = int(re.search(r"--devices (\d+)", cmd).group(1))  # type: ignore[union-attr]
                deadline = time.monotonic() + 20
                store = Store(local["db"])
                while len(store.list_devices()) < n and time.monotonic() < deadline:
                    time.sleep(0.2)
                store.close()
            return
        res = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", line],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, f"{line}\nexit {res.returncode}\n{res.stdout}\n{res.stderr}"
        assert "Traceback" not in res.stderr, res.stderr
        outputs[line] = res.stdout + res.stderr

    try:
        for line in command_lines(sh[0]):
            run(line)
        # "Start mosquitto with that configuration": the file broker-config wrote, unchanged
        config = Path(local["broker_dir"]) / "mosquitto.conf"
        assert config.exists() and f"listener {service_port}" in config.read_text()
        broker = Mosquitto(tmp_path / "mosq", plain=False)
        if os.geteuid() == 0:  # as root mosquitto would drop to its own user, which cannot read tmp
            broker.config_path = tmp_path / "mosq" / "root.conf"
            broker.config_path.write_text(f"user root\ninclude_dir {config.parent}\n")
        else:
            broker.config_path = config
        broker.ports = {"service": service_port, "devices": device_port, "claim": claim_port}
        broker.start()
        for line in command_lines(sh[1]):
            run(line)
        shown = subprocess.run(
            [BIN / "fleetctl", "profile", "show", "--json"], env=env, capture_output=True, text=True, cwd=work
        )
        rows = {r["key"]: r for r in json.loads(shown.stdout)["settings"]}
        assert rows["mqtt"]["source"] == f"profile {profile_path}"
        assert rows["cert"]["source"].startswith("state_dir")  # the service identity broker-config wrote

        everything = "\n".join(outputs.values())
        assert re.search(r"^cam-00007 +lobby +yes", everything, re.M), everything  # devices
        assert re.search(r"^pong +True$", everything, re.M)  # cmd cam-00007 ping
        assert (
            "camera_unavailable" in everything
            and "acknowledged device:cam-00006:camera_unavailable" in everything
        )
        assert re.search(r"^fleet_[0-9a-f]{8}_", everything, re.M)  # the token, printed once
        assert re.search(r"rollout \w+: 1\.2\.0 to 10 devices", everything)
        assert "1.2.0" in outputs[next(k for k in outputs if k.startswith("fleetctl ota rollouts"))]

        # serve stops on SIGTERM, quickly, with exit 0 and its final counters
        serve = procs.pop("serve")
        t0 = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        serve.wait(20)
        stop_s = time.monotonic() - t0
        time.sleep(0.1)  # the drain thread reads the last lines
        out = "".join(logs["serve"])
        assert serve.returncode == 0 and '"final": true' in out, out
        assert stop_s < 10, stop_s
        print(f"serve stopped {stop_s:.1f} s after SIGTERM")
        _error_lines(env, work, service_port, local)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        if broker is not None:
            broker.stop()


def _error_lines(env: dict[str, str], work: Path, service_port: int, local: dict[str, str]) -> None:
    """Against the same broker: each mistake is one line naming it, with its exit code, at once."""

    def fleetctl(*argv: str) -> tuple[int, str, float]:
        t0 = time.monotonic()
        res = subprocess.run(
            [BIN / "fleetctl", *argv], env=env, cwd=work, capture_output=True, text=True, timeout=60
        )
        assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1, res.stderr
        assert res.stderr.startswith("fleetctl: error: "), res.stderr
        return res.returncode, res.stderr, time.monotonic() - t0

    other_ca = Path(local["state_dir"]) / "service-ca" / "ca" / "ca.crt"  # a CA that did not sign the broker
    code, err, _ = fleetctl("cmd", "cam-00007", "ping", "--ca", str(other_ca))
    assert code == 3 and "certificate of localhost" in err and "not accepted" in err, err
    code, err, _ = fleetctl("cmd", "cam-00007", "ping", "--mqtt", f"mqtt://localhost:{service_port}")
    assert code == 3 and "closed the connection before CONNACK" in err and "mqtts://" in err, err
    code, err, took = fleetctl("cmd", "cam-00007", "ping", "--mqtt", f"mqtts://localhost:{free_port()}")
    assert code == 3 and "refused the connection" in err and took < 8, (err, took)  # no 10 s timeout
    code, err, _ = fleetctl("cmd", "ghost-1", "ping")
    assert code == 4 and "never connected" in err, err
    code, err, _ = fleetctl("show", "cam-0000")  # ten devices start so
    assert code == 2 and "matches 10 devices" in err, err
    code, err, _ = fleetctl("devices", "--db", str(work / "flet.db"))
    assert code == 4 and "no fleet store" in err and not (work / "flet.db").exists(), err
    code, err, _ = fleetctl("devices", "--db", "postgresql://nobody_here@127.0.0.1:5432/test")
    assert (
        code == 3
        and err.startswith("fleetctl: error: database postgresql://nobody_here@")
        and "nobody_here" in err
    )
