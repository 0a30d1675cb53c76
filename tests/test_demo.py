"""`device-agent demo` (what `make demo` runs): the embedded default needs no broker and connects to
none, even with one listening on 127.0.0.1:1883; on 0.0.0.0 it prints a usable URL per address."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.mosquitto import free_port

ROOT = Path(__file__).resolve().parents[1]
MQTT_PORT = 1883

# The demo under an audit hook: every socket.connect() the process makes is written to CONNECTS
# (one JSON address a line), whichever library makes it. Instrumentation only; the demo is the real one.
WRAPPER = """
import json, os, runpy, sys
log = open(os.environ["CONNECTS"], "a", buffering=1)
def hook(event, args):
    if event == "socket.connect":
        log.write(json.dumps(repr(args[1])) + "\\n")
sys.addaudithook(hook)
sys.argv = ["device-agent", *sys.argv[1:]]
runpy.run_module("device_agent.cli", run_name="__main__")
"""


@contextmanager
def broker_port_listening() -> Iterator[str]:
    """Something accepting on 127.0.0.1:1883: the machine's mosquitto when it runs (as here and
    in CI), else a listening socket of our own, so an old demo's probe would find a broker."""
    try:
        socket.create_connection(("127.0.0.1", MQTT_PORT), timeout=1).close()
        running = True
    except OSError:
        running = False
    if running:
        yield "system broker"
        return
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", MQTT_PORT))
        srv.listen(16)
        yield "test listener"


def _lines_until(proc: subprocess.Popen, pattern: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no {pattern!r} within {timeout} s; output: {lines}")


def _get(url: str, token: str = "", timeout: float = 20.0) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError:
            raise
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_demo_uses_no_broker_and_prints_a_url_per_address(tmp_path: Path) -> None:
    connects = tmp_path / "connects.jsonl"
    port = free_port()
    env = {**os.environ, "CONNECTS": str(connects), "TMPDIR": str(tmp_path)}
    with broker_port_listening():
        proc = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, "demo", "--listen", f"0.0.0.0:{port}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            lines = _lines_until(proc, r"^fleet link:", 60)
            assert "fleet link: off" in lines[-1], lines
            urls = [u for ln in lines for u in re.findall(r"http://\S+", ln)]
            from device_agent.commands.run import host_addresses

            expected_hosts = host_addresses()
            assert [re.match(r"http://([^:/]+)", u).group(1) for u in urls] == expected_hosts, lines
            assert not any("0.0.0.0" in u for u in urls)
            for url in urls:  # each one is usable: the viewer page, with the made-up token
                assert re.search(r"\?token=[\w-]{16}", url), url
                status, page = _get(url)
                assert status == 200 and "<video" in page, (url, page[:200])
                base, _, token = url.partition("/?token=")
                status, body = _get(base + "/api/stats", token)
                assert status == 200 and "viewers" in json.loads(body)
            time.sleep(3.0)  # running, page served: a fleet link would have connected by now
            assert proc.poll() is None
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    made = [json.loads(x) for x in connects.read_text().splitlines()]
    assert not [a for a in made if re.search(rf"\b{MQTT_PORT}\)$", a)], made


def test_demo_connects_to_a_broker_only_when_named() -> None:
    """The choice itself: no broker unless --mqtt or the --config file names one; --no-broker wins."""
    from device_agent.commands.run import demo_config
    from device_agent.config import config_from_dict

    assert demo_config("127.0.0.1:0", None).mqtt.url == ""
    assert (
        demo_config("127.0.0.1:0", None, mqtt_url="mqtt://10.0.0.5:1883").mqtt.url == "mqtt://10.0.0.5:1883"
    )
    configured = config_from_dict({"mqtt": {"url": "mqtt://broker.lan:1883"}})
    assert demo_config("127.0.0.1:0", configured).mqtt.url == "mqtt://broker.lan:1883"
    assert demo_config("127.0.0.1:0", configured, use_broker=False).mqtt.url == ""
