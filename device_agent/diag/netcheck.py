"""``diag.netcheck``: DNS resolution, TCP and TLS connect time to the broker, MQTT loss over a burst."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

from device_agent.config import AgentConfig
from device_agent.diag.ping import Pinger
from device_agent.diag.results import FAIL, PASS, SKIP, WARN, Check, report
from device_agent.fleetlink.mqtt import parse_broker_url, tls_context


def _tls_context(cfg: AgentConfig) -> ssl.SSLContext:
    return tls_context(cfg.mqtt.ca_file, cfg.mqtt.cert_file, cfg.mqtt.key_file)


async def run_netcheck(cfg: AgentConfig, pinger: Pinger | None, timeout_s: float = 5.0) -> dict[str, Any]:
    checks: list[Check] = []
    if not cfg.mqtt.url:
        return report("netcheck", [Check("broker", SKIP, "no broker configured (mqtt.url)")])
    try:
        addr = parse_broker_url(cfg.mqtt.url)
    except ValueError as exc:
        return report("netcheck", [Check("dns", FAIL, str(exc))])
    host, port, tls = addr.host, addr.port, addr.tls
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=1), timeout_s)
    except (TimeoutError, OSError) as exc:
        checks.append(Check("dns", FAIL, f"cannot resolve {host}: {exc or 'timeout'}"))
        return report("netcheck", checks)
    dns_ms = (time.perf_counter() - start) * 1000
    addrs = sorted({str(info[4][0]) for info in infos})
    checks.append(
        Check(
            "dns",
            WARN if dns_ms > 1000 else PASS,
            f"{host} -> {', '.join(addrs)} in {dns_ms:.1f} ms",
            {"host": host, "addresses": addrs, "ms": round(dns_ms, 2)},
        )
    )
    start = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (TimeoutError, OSError) as exc:
        checks.append(Check("tcp", FAIL, f"cannot connect to {host}:{port}: {exc or 'timeout'}"))
    else:
        tcp_ms = (time.perf_counter() - start) * 1000
        writer.close()
        await _closed(writer)
        checks.append(
            Check(
                "tcp",
                WARN if tcp_ms > 1000 else PASS,
                f"{host}:{port} connect {tcp_ms:.1f} ms",
                {"ms": round(tcp_ms, 2), "port": port},
            )
        )
    if tls:
        start = time.perf_counter()
        try:
            ctx = _tls_context(cfg)
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx), timeout_s)
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            checks.append(Check("tls", FAIL, f"TLS to {host}:{port} failed: {exc or 'timeout'}"))
        else:
            tls_ms = (time.perf_counter() - start) * 1000
            ssl_obj = writer.get_extra_info("ssl_object")
            value = {"ms": round(tls_ms, 2), "version": ssl_obj.version() if ssl_obj else None}
            writer.close()
            await _closed(writer)
            checks.append(
                Check("tls", WARN if tls_ms > 2000 else PASS, f"TLS handshake {tls_ms:.1f} ms", value)
            )
    else:
        checks.append(Check("tls", SKIP, "plain mqtt:// link (no TLS)"))
    if pinger is None:
        checks.append(Check("mqtt_loss", SKIP, "no fleet link"))
    else:
        stats = await pinger.burst(cfg.diagnostics.ping_count, timeout=3.0)
        loss = stats["loss_pct"]
        status = PASS if loss == 0 else WARN if loss <= 10 else FAIL
        checks.append(
            Check(
                "mqtt_loss",
                status,
                f"{loss}% of {stats['sent']} MQTT pings lost, median RTT {stats['rtt_ms_median']} ms",
                stats,
            )
        )
    return report("netcheck", checks)


async def _closed(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.wait_closed()
    except (OSError, ssl.SSLError):
        pass
