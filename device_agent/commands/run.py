"""`device-agent run --config PATH` (the service) and `device-agent demo` (no hardware, no setup)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
import socket
import sys
import tempfile
from pathlib import Path

from device_agent.agent import RESTART_EXIT_CODE, Agent
from device_agent.assemble import build_agent
from device_agent.config import (
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    ConfigError,
    config_from_dict,
    is_loopback,
    load_config,
)
from device_agent.logging_setup import LogContext, setup_logging

log = logging.getLogger(__name__)

WILDCARDS = ("", "0.0.0.0", "::", "[::]")
SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the agent (the systemd service's command)")
    run.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="agent.toml (default: %(default)s)")
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="run with a simulated camera and microphone and the viewer page")
    demo.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT for the viewer page and WHEP")
    demo.add_argument("--config", default=None, help="optional agent.toml to start from")
    demo.add_argument(
        "--mqtt",
        default="",
        metavar="URL",
        help="connect the fleet link to this broker (default: none, the demo needs no broker)",
    )
    demo.add_argument(
        "--no-broker", action="store_true", help="no fleet link, even when --config sets mqtt.url"
    )
    demo.set_defaults(func=cmd_demo)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG; under systemd this crash-loops a bad release into the OTA rollback
    return run_agent(config)


def demo_config(
    listen: str, base: AgentConfig | None, use_broker: bool = True, mqtt_url: str = ""
) -> AgentConfig:
    """The embedded default: test pattern, synthetic microphone, viewer page, and no broker.

    The fleet link runs only when a broker is named explicitly: ``mqtt_url`` (``--mqtt``) or
    ``mqtt.url`` in the ``--config`` file; ``use_broker=False`` (``--no-broker``) turns it off
    even then. A broker that happens to run on this machine is never picked up."""
    data = base.to_dict() if base is not None else {}
    data.setdefault("camera", {}).update(backend="test-pattern")
    data.setdefault("audio", {}).update(backend="synthetic")
    web = data.setdefault("web", {})
    web.update(enabled=True, listen=listen)
    if not web.get("token") and not is_loopback(listen.rpartition(":")[0]):
        web["token"] = secrets.token_urlsafe(12)  # on the LAN: never an open camera, even in a demo
    device = data.setdefault("device", {})
    if base is None:
        device["state_dir"] = str(Path(tempfile.gettempdir()) / "device-agent-demo")
    mqtt = data.setdefault("mqtt", {})
    if not use_broker:
        mqtt["url"] = ""
    elif mqtt_url:
        mqtt["url"] = mqtt_url
    _drop_none(data)
    return config_from_dict(data, source_path=base.source_path if base is not None else "")


def host_addresses() -> list[str]:
    """This machine's IPv4 addresses, loopback first (each interface's, via SIOCGIFADDR)."""
    import fcntl
    import struct

    found: list[str] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            try:
                raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on it
                continue
            found.append(socket.inet_ntoa(raw[20:24]))
    ordered = sorted(set(found), key=lambda a: (not a.startswith("127."), a))
    return ordered or ["127.0.0.1"]


def viewer_urls(listen: str, token: str) -> list[str]:
    """The URLs a browser can open: for a wildcard address (0.0.0.0, ::) one per address of this
    machine (like Jupyter and vite print them), else the address itself."""
    host, _, port = listen.rpartition(":")
    hosts = host_addresses() if host in WILDCARDS else [host]
    query = f"?token={token}" if token else ""
    return [f"http://{f'[{h}]' if ':' in h and not h.startswith('[') else h}:{port}/{query}" for h in hosts]


def _drop_none(data: dict) -> None:
    for key, value in list(data.items()):
        if value is None:
            del data[key]
        elif isinstance(value, dict):
            _drop_none(value)


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        base = load_config(args.config) if args.config else None
        config = demo_config(args.listen, base, use_broker=not args.no_broker, mqtt_url=args.mqtt)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 78
    urls = viewer_urls(config.web.listen, config.web.token)
    print(f"device-agent demo: viewer page (WHEP endpoint /whep) at {urls[0]}", flush=True)
    for url in urls[1:]:
        print(f"                   or {url}", flush=True)
    print(
        f"fleet link: {config.mqtt.url or 'off (no broker; --mqtt URL or mqtt.url in --config for one)'}",
        flush=True,
    )
    return run_agent(config)


def run_agent(config: AgentConfig) -> int:
    """Build the agent, run it until SIGTERM/SIGINT, return the exit code."""
    Path(config.device.state_dir).mkdir(parents=True, exist_ok=True)
    agent = build_agent(config)
    setup_logging(config.logging, LogContext(config.device.id, agent.boot_id), stream=sys.stdout)
    try:
        return asyncio.run(_main(agent))
    except KeyboardInterrupt:
        return 0


async def _main(agent: Agent) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)
    try:
        await agent.run()
    except Exception:
        log.exception("the agent failed")
        return 1
    return RESTART_EXIT_CODE if agent.restart_requested else 0
