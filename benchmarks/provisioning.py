"""Claim latency and throughput through a real mosquitto running the generated configuration.

    .venv/bin/python -m benchmarks.provisioning [N_SEQUENTIAL] [N_CONCURRENT]

Measures, per device: key generation + CSR (on the device), the claim exchange (TLS to the
claim listener, CA pin and broker-certificate checks, request, fleet validation + signing +
SQLite transaction, answer), and the first mutual-TLS connection as the device. Then N claims
at once against one responder (a factory line provisioning many devices).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from device_agent.fleetlink.mqtt import MqttClient, tls_context
from fleet.provisioning.broker import write_broker_config, write_claim_passwords
from fleet.provisioning.ca import FleetCA
from fleet.provisioning.responder import ClaimResponder
from fleet.provisioning.store import ProvisioningStore
from provisioning.claim import claim
from provisioning.identity import IdentityStore
from tests.support.mosquitto import Mosquitto, free_port


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def one(base: Path, i: int, token, claim_port: int, port: int) -> tuple[float, float, float]:
    store = IdentityStore(base / f"dev{i}")
    t0 = time.perf_counter()
    key = store.new_key()
    csr = store.csr(key)
    t1 = time.perf_counter()
    res = await claim("127.0.0.1", claim_port, token, csr, {"name": f"bench{i}"}, timeout=60)
    t2 = time.perf_counter()
    store.save(res.cert_pem, res.ca_pem, {"device_id": res.device_id})
    m = MqttClient(
        res.device_id, tls=tls_context(str(store.ca_path), str(store.cert_path), str(store.key_path))
    )
    await m.connect("127.0.0.1", port)
    await m.close()
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


async def main(n_seq: int, n_conc: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-prov-"))
    state = base / "state"
    ca = FleetCA.init(state)
    port, claim_port, service_port = free_port(), free_port(), free_port()
    files = write_broker_config(
        state,
        base / "broker",
        ["127.0.0.1"],
        port,
        claim_port,
        "127.0.0.1",
        user="root",
        service_port=service_port,
    )
    broker = Mosquitto(base / "work", plain=False)
    broker.config_path, broker.ports = files.config, {"d": port, "c": claim_port, "s": service_port}
    broker.start()
    responder = ClaimResponder(state, "127.0.0.1", service_port)
    task = asyncio.create_task(responder.run())
    await responder.ready.wait()
    try:
        store = ProvisioningStore(state)
        tokens = store.create_claims("bench", 3600, n_seq + n_conc, ca.cert_der)
        write_claim_passwords(store, state)  # the claim listener's logins, then reload it (SIGHUP)
        assert broker.proc is not None
        os.kill(broker.proc.pid, signal.SIGHUP)
        await asyncio.sleep(0.5)
        seq = [await one(base, i, tokens[i], claim_port, port) for i in range(n_seq)]
        t0 = time.perf_counter()
        conc = await asyncio.gather(
            *(one(base, n_seq + i, tokens[n_seq + i], claim_port, port) for i in range(n_conc))
        )
        wall = time.perf_counter() - t0
    finally:
        await responder.stop()
        await task
        broker.stop()
    keygen, exch, mtls = (list(x) for x in zip(*seq, strict=True))
    print(f"sequential claims: n={n_seq}")
    for name, xs in (("key + CSR on device", keygen), ("claim exchange", exch), ("first mTLS connect", mtls)):
        print(f"  {name:22s} p50 {1000 * statistics.median(xs):7.1f} ms   p95 {1000 * pct(xs, 95):7.1f} ms")
    total = [a + b + c for a, b, c in seq]
    print(
        f"  {'total':22s} p50 {1000 * statistics.median(total):7.1f} ms   p95 {1000 * pct(total, 95):7.1f} ms"
    )
    cx = [c[1] for c in conc]
    if not cx:
        return
    print(
        f"concurrent claims: n={n_conc} in {wall:.2f} s = {n_conc / wall:.1f} devices/s; claim exchange "
        f"p50 {1000 * statistics.median(cx):.0f} ms, max {1000 * max(cx):.0f} ms"
    )


if __name__ == "__main__":
    n_seq = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    n_conc = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    asyncio.run(main(n_seq, n_conc))
