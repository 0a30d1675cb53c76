"""Bundle download: Range resume after a cut, bandwidth cap, disk check, bounded retries."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest
from aiohttp import web

from fleet.ota.serve import make_app
from ota.download import CHUNK, download, part_path
from ota.errors import OtaError
from tests.support.mosquitto import free_port


class CuttingProxy:
    """A TCP proxy that drops the first connection after ``cut_after`` bytes from the server."""

    def __init__(self, upstream_port: int, cut_after: int | None) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.sent_per_connection: list[int] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.sent_per_connection)
        self.sent_per_connection.append(0)
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        limit = self.cut_after if index == 0 else None

        async def client_to_server() -> None:
            try:
                while data := await reader.read(65536):
                    up_w.write(data)
                    await up_w.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass

        task = asyncio.create_task(client_to_server())
        try:
            while data := await up_r.read(16384):
                if limit is not None and self.sent_per_connection[index] + len(data) > limit:
                    data = data[: limit - self.sent_per_connection[index]]
                    writer.write(data)
                    self.sent_per_connection[index] += len(data)
                    await writer.drain()
                    break  # the cut
                writer.write(data)
                self.sent_per_connection[index] += len(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            task.cancel()
            writer.close()
            up_w.close()


@pytest.fixture
async def served(tmp_path: Path):
    d = tmp_path / "srv"
    d.mkdir()
    data = os.urandom(2 * 1024 * 1024 + 12345)
    (d / "b.tar").write_bytes(data)
    runner = web.AppRunner(make_app(d))
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield port, data
    await runner.cleanup()


async def test_resume_after_cut_at_half_fetches_only_the_rest(served, tmp_path: Path) -> None:
    port, data = served
    size, sha = len(data), hashlib.sha256(data).hexdigest()
    proxy = CuttingProxy(port, cut_after=size // 2)
    await proxy.start()
    url = f"http://127.0.0.1:{proxy.port}/b.tar"
    dest = tmp_path / "dl" / "bundle.tar"
    with pytest.raises(OtaError) as err:  # no retries: the process "dies" with half a file
        await download(url, dest, size, sha, retries=0, reserve_bytes=0)
    assert err.value.code == "download_failed"
    part = part_path(dest, sha)
    assert part.name == f"bundle-{sha[:16]}.tar.part"
    have = part.stat().st_size
    assert size // 2 - CHUNK <= have <= size // 2
    res = await download(url, dest, size, sha, retries=2, reserve_bytes=0)  # a later attempt resumes
    await proxy.stop()
    assert dest.read_bytes() == data and not part.exists()
    missing = size - size // 2
    assert res.bytes_fetched == size - have <= missing + CHUNK
    wire = proxy.sent_per_connection[1]  # body plus HTTP headers on the wire
    assert wire <= missing + CHUNK + 1024
    print(
        f"RESUME size={size} first={have} second_body={res.bytes_fetched} second_wire={wire} "
        f"ratio={res.bytes_fetched / missing:.4f}"
    )


async def test_cut_mid_download_is_retried_within_one_call(served, tmp_path: Path) -> None:
    port, data = served
    proxy = CuttingProxy(port, cut_after=len(data) // 3)
    await proxy.start()
    events: list[tuple[int, int, float | None]] = []
    res = await download(
        f"http://127.0.0.1:{proxy.port}/b.tar",
        tmp_path / "b.tar",
        len(data),
        hashlib.sha256(data).hexdigest(),
        retries=3,
        reserve_bytes=0,
        retry_delay_s=0.01,
        progress=lambda d, t, eta: events.append((d, t, eta)),
    )
    await proxy.stop()
    assert res.attempts == 2 and (tmp_path / "b.tar").read_bytes() == data
    assert res.bytes_fetched <= len(data) + CHUNK
    assert events[-1][0] == len(data) and any(e[2] is not None for e in events)


async def test_bandwidth_cap(served, tmp_path: Path) -> None:
    port, data = served
    url = f"http://127.0.0.1:{port}/b.tar"
    sha = hashlib.sha256(data).hexdigest()
    t0 = time.monotonic()
    await download(url, tmp_path / "fast.tar", len(data), sha, reserve_bytes=0)
    fast = time.monotonic() - t0
    rate = 2 * 1024 * 1024  # 2 MiB/s for ~2 MiB: about 1 s
    t0 = time.monotonic()
    await download(url, tmp_path / "slow.tar", len(data), sha, rate_bps=rate, reserve_bytes=0)
    slow = time.monotonic() - t0
    assert slow >= len(data) / rate * 0.9 > fast
    assert len(data) / slow <= rate * 1.1


async def test_disk_space_checked_before_writing(served, tmp_path: Path) -> None:
    import shutil

    port, data = served
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(OtaError) as err:
        await download(
            f"http://127.0.0.1:{port}/b.tar",
            tmp_path / "b.tar",
            len(data),
            hashlib.sha256(data).hexdigest(),
            reserve_bytes=free,
        )
    assert err.value.code == "no_space" and "free" in err.value.message
    assert not list(tmp_path.glob("*.part"))


async def test_stale_partial_of_another_bundle_is_not_resumed(served, tmp_path: Path) -> None:
    port, data = served
    size, sha = len(data), hashlib.sha256(data).hexdigest()
    dest = tmp_path / "dl" / "bundle.tar"
    dest.parent.mkdir()
    other = os.urandom(size // 2)  # what an interrupted rollout of another version left behind
    stale = [part_path(dest, hashlib.sha256(b"other").hexdigest()), dest.with_name("bundle.tar.part")]
    for p in stale:
        p.write_bytes(other)
    res = await download(f"http://127.0.0.1:{port}/b.tar", dest, size, sha, retries=0, reserve_bytes=0)
    assert dest.read_bytes() == data and res.attempts == 1 and res.bytes_fetched == size
    assert not any(p.exists() for p in stale) and not list(dest.parent.glob("*.part"))


async def _range_liar(tmp_path: Path, data: bytes, start: int):
    """A server that answers every Range request with a 206 starting at ``start``, whatever was asked."""
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Range"))
        if request.headers.get("Range"):
            return web.Response(
                status=206,
                body=data[start:],
                headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
            )
        return web.Response(body=data)

    app = web.Application()
    app.router.add_get("/b.tar", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port, seen


@pytest.mark.parametrize("start", [0, 7])
async def test_206_not_starting_at_the_offset_is_not_appended(tmp_path: Path, start: int) -> None:
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    dest = tmp_path / "bundle.tar"
    part_path(dest, sha).write_bytes(data[:100_000])  # a genuine partial of this bundle
    runner, port, seen = await _range_liar(tmp_path, data, start)
    try:
        res = await download(
            f"http://127.0.0.1:{port}/b.tar",
            dest,
            len(data),
            sha,
            retries=2,
            reserve_bytes=0,
            retry_delay_s=0.01,
        )
    finally:
        await runner.cleanup()
    assert dest.read_bytes() == data
    assert seen[0] == "bytes=100000-"
    if start == 0:  # the body is the whole file: used from byte 0
        assert res.attempts == 1 and len(seen) == 1
    else:  # neither the offset asked for nor 0: dropped, asked again without Range
        assert res.attempts == 2 and seen[1] is None


async def test_short_response_without_error_is_a_failure_with_backoff(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    sha = hashlib.sha256(data).hexdigest()
    calls: list[float] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(time.monotonic())
        resp = web.StreamResponse()  # chunked, no Content-Length: a clean end after half the body
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/b.tar", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with pytest.raises(OtaError) as err:
            await download(
                f"http://127.0.0.1:{port}/b.tar",
                tmp_path / "b.tar",
                len(data),
                sha,
                retries=2,
                reserve_bytes=0,
                retry_delay_s=0.2,
            )
    finally:
        await runner.cleanup()
    assert err.value.code == "download_failed" and "3 attempts" in err.value.message
    assert "short response" in err.value.message
    assert calls[1] - calls[0] >= 0.18 and calls[2] - calls[1] >= 0.38  # exponential backoff


async def test_retries_are_bounded(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(OtaError) as err:
        await download(
            f"http://127.0.0.1:{free_port()}/b.tar",
            tmp_path / "b.tar",
            100,
            "0" * 64,
            retries=3,
            reserve_bytes=0,
            retry_delay_s=0.01,
        )
    assert err.value.code == "download_failed" and "4 attempts" in err.value.message
    assert time.monotonic() - t0 < 10


async def test_wrong_digest_deleted_404_not_retried(served, tmp_path: Path) -> None:
    port, data = served
    with pytest.raises(OtaError) as err:
        await download(
            f"http://127.0.0.1:{port}/b.tar", tmp_path / "b.tar", len(data), "0" * 64, reserve_bytes=0
        )
    assert err.value.code == "bad_digest"
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "b.tar").exists()
    t0 = time.monotonic()
    with pytest.raises(OtaError) as err:
        await download(
            f"http://127.0.0.1:{port}/nope.tar",
            tmp_path / "n.tar",
            10,
            "0" * 64,
            reserve_bytes=0,
            retries=5,
            retry_delay_s=1.0,
        )
    assert "404" in err.value.message and time.monotonic() - t0 < 1.0
    with pytest.raises(OtaError) as err:  # larger than announced: refused, not written past the size
        await download(f"http://127.0.0.1:{port}/b.tar", tmp_path / "s.tar", 1000, "0" * 64, reserve_bytes=0)
    assert "larger" in err.value.message


async def test_component_install_from_url_reports_progress(tmp_path: Path) -> None:
    from device_agent.agent import Agent
    from device_agent.config import load_config
    from device_agent.ota_component import OtaComponent
    from tests.support.ota_harness import Device, make_bundle, provision

    dev = Device(tmp_path / "dev", layer=False, extra={"download_rate_bps": 400_000})
    provision(dev)
    srv = tmp_path / "srv"
    srv.mkdir()
    fw = tmp_path / "fw"
    fw.mkdir()
    (fw / "blob.bin").write_bytes(os.urandom(600_000))  # so the capped download takes ~1.5 s
    bundle = make_bundle(dev, srv / "v2.tar", "2.0.0", firmware=fw)
    data = bundle.read_bytes()
    runner = web.AppRunner(make_app(srv))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    agent = Agent(load_config(dev.config_path))
    events: list[dict] = []
    agent.events.subscribe(events.append)
    comp = OtaComponent(agent)
    agent.add(comp)
    await agent.start()
    try:
        res = await agent.commands.dispatch(
            "ota.install",
            {
                "url": f"http://127.0.0.1:{port}/v2.tar",
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
            },
        )
        assert res == {"accepted": True}
        for _ in range(400):
            if comp.restart_requested or any(e.get("phase") == "failed" for e in events):
                break
            await asyncio.sleep(0.05)
    finally:
        await agent.stop()
        await runner.cleanup()
    ota = [e for e in events if e["type"] == "ota"]
    downloads = [e for e in ota if e["phase"] == "download"]
    assert downloads[0]["percent"] == 0.0 and downloads[-1]["percent"] == 100.0, ota
    assert any(e.get("eta_s") is not None and 0 < e["percent"] < 100 for e in downloads)  # capped: ~1 s
    done = next(e for e in ota if e["phase"] == "downloaded")
    assert done["bytes"] == len(data)
    assert [e["phase"] for e in ota][-1] == "restarting" and comp.restart_requested
    assert not (dev.state_dir / "ota-work" / "bundle.tar").exists()  # no bundle left filling the disk
    assert dev.running_version() == "2.0.0"


def test_cli_serve_install_from_url_and_status(tmp_path: Path) -> None:
    import json
    import socket
    import subprocess
    import sys

    from tests.support.ota_harness import Device, make_bundle, provision

    dev = Device(tmp_path / "dev", layer=False)
    provision(dev)
    srv = tmp_path / "srv"
    srv.mkdir()
    bundle = make_bundle(dev, srv / "v2.tar", "2.0.0")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli", "ota", "serve", str(srv), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        data = bundle.read_bytes()
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "device_agent.cli",
                "ota",
                "install",
                f"http://127.0.0.1:{port}/v2.tar",
                "--sha256",
                hashlib.sha256(data).hexdigest(),
                "--size",
                str(len(data)),
                "--config",
                str(dev.config_path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "100.0%" in r.stdout and f"downloaded {len(data)} bytes" in r.stdout
        assert "switched to slot b (2.0.0)" in r.stdout
        st = subprocess.run(
            [sys.executable, "-m", "device_agent.cli", "ota", "status", "--config", str(dev.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        status = json.loads(st.stdout)
        assert status["current_slot"] == "b" and status["update"]["phase"] == "trial"
        assert status["slots"]["a"]["version"] == "1.0.0" and status["slots"]["b"]["version"] == "2.0.0"
        bad = subprocess.run(
            [
                sys.executable,
                "-m",
                "device_agent.cli",
                "ota",
                "install",
                f"http://127.0.0.1:{port}/v2.tar",
                "--config",
                str(dev.config_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 2 and "--sha256" in bad.stderr
    finally:
        server.terminate()
        server.wait(10)


def _tls_files(d: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (real X.509, made with cryptography)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bundle test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = d / "ca.pem", d / "server.pem", d / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


async def test_https_download_trusts_only_the_configured_ca(tmp_path: Path) -> None:
    import subprocess
    import sys

    ca, cert, key = _tls_files(tmp_path)
    srv = tmp_path / "srv"
    srv.mkdir()
    data = os.urandom(300_000)
    (srv / "b.tar").write_bytes(data)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet.cli",
            "ota",
            "serve",
            str(srv),
            "--listen",
            f"127.0.0.1:{port}",
            "--cert",
            str(cert),
            "--key",
            str(key),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        url, sha = f"https://127.0.0.1:{port}/b.tar", hashlib.sha256(data).hexdigest()
        res = await download(url, tmp_path / "ok.tar", len(data), sha, reserve_bytes=0, ca_file=str(ca))
        assert res.bytes_fetched == len(data) and (tmp_path / "ok.tar").read_bytes() == data
        t0 = time.monotonic()
        with pytest.raises(OtaError) as err:  # system CAs do not know this server: refused, not retried
            await download(
                url, tmp_path / "no.tar", len(data), sha, reserve_bytes=0, retries=5, retry_delay_s=1.0
            )
        assert err.value.code == "tls" and time.monotonic() - t0 < 1.0
    finally:
        server.terminate()
        server.wait(10)
