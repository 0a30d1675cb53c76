"""Fleet test helpers: brokers for the fleet tests (mutual TLS with ACLs; persistence that survives
SIGKILL) and a test PKI."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.mosquitto import Mosquitto


@contextmanager
def mtls_broker(workdir: Path, clients: list[str]) -> Iterator[tuple[Mosquitto, dict[str, str]]]:
    """A TLS-only broker requiring client certificates (identity = username) with per-device ACLs.

    ``operator`` may use all of ``dev/#``; every other certificate only ``dev/<its CN>/#``. Yields the
    started broker (``broker.ports["tls"]``) and the PKI paths from :func:`make_pki`.
    """
    pki_dir = tempfile.mkdtemp(prefix="fleet-pki-")
    os.chmod(pki_dir, 0o755)  # the broker reads the server key and the ACL
    pki = make_pki(pki_dir, [*clients, "operator"])
    acl = Path(pki_dir) / "acl"
    acl.write_text("user operator\ntopic readwrite dev/#\n\npattern readwrite dev/%u/#\n")
    os.chmod(acl, 0o644)
    block = (
        f"cafile {pki['ca']}\ncertfile {pki['server_cert']}\nkeyfile {pki['server_key']}\n"
        f"require_certificate true\nuse_identity_as_username true\nacl_file {acl}\nallow_anonymous false"
    )
    broker = Mosquitto(workdir, listeners={"tls": block}, plain=False, persistence=False).start()
    try:
        yield broker, pki
    finally:
        broker.stop()
        shutil.rmtree(pki_dir, ignore_errors=True)


@contextmanager
def persistent_broker(extra_config: str = "") -> Iterator[Mosquitto]:
    """A started broker that saves sessions every second (so a SIGKILL loses at most a second)."""
    workdir = tempfile.mkdtemp(prefix="fleet-broker-")
    broker = Mosquitto(workdir, extra_config="autosave_interval 1\n" + extra_config)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def make_pki(directory: str, clients: list[str]) -> dict[str, str]:
    """A test CA, a server certificate for 127.0.0.1 and one client certificate per name (CN).

    Returns paths: ``ca``, ``server_cert``, ``server_key``, ``{name}_cert``, ``{name}_key``.
    """
    import datetime
    import ipaddress
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    out: dict[str, str] = {}

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        os.chmod(d / f"{name}.key", 0o644)  # the broker runs as the mosquitto user

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test fleet CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    write("ca", ca, ca_key)
    out["ca"] = str(d / "ca.pem")

    def leaf(name: str, cn: str, server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        write(name, b.sign(ca_key, hashes.SHA256()), key)
        out[f"{name}_cert"] = str(d / f"{name}.pem")
        out[f"{name}_key"] = str(d / f"{name}.key")

    leaf("server", "127.0.0.1", True)
    for c in clients:
        leaf(c, c, False)
    return out
