"""The fleet certificate authority: EC P-256, signs device CSRs, broker and service certs, CRLs.

Layout under ``<state>/ca/``: ``ca.key`` (0600), ``ca.crt``. The device id is the CN of the
device certificate; the broker maps it to the MQTT username (``use_identity_as_username``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ota.atomic import write_atomic

FLEET_SERVICE_CN = "fleet-service"


class CAError(Exception):
    """The CA is missing, already exists, or a request is not acceptable."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class FleetCA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    directory: Path

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @staticmethod
    def paths(state_dir: str | Path) -> tuple[Path, Path]:
        d = Path(state_dir) / "ca"
        return d / "ca.key", d / "ca.crt"

    @classmethod
    def init(
        cls, state_dir: str | Path, name: str = "device-agent fleet CA", days: int = 3650, force: bool = False
    ) -> FleetCA:
        """Create the CA; refuses to overwrite an existing one unless ``force``."""
        key_path, crt_path = cls.paths(state_dir)
        if key_path.exists() and not force:
            raise CAError(
                f"a fleet CA already exists at {key_path.parent}; every device trusts it. "
                f"Use --force only to start a new fleet"
            )
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
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
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(key_path, key_pem(key), mode=0o600)
        write_atomic(crt_path, cert_pem(cert), mode=0o644)
        return cls(key, cert, key_path.parent)

    @classmethod
    def load(cls, state_dir: str | Path) -> FleetCA:
        key_path, crt_path = cls.paths(state_dir)
        if not key_path.exists() or not crt_path.exists():
            raise CAError(f"no fleet CA in {key_path.parent}: run `fleetctl ca init` first")
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(f"{key_path}: not an EC private key")
        return cls(key, x509.load_pem_x509_certificate(crt_path.read_bytes()), key_path.parent)

    # -- issuing ---------------------------------------------------------------------------
    def _builder(self, cn: str, public_key: ec.EllipticCurvePublicKey, days: int) -> x509.CertificateBuilder:
        not_after = min(_now() + dt.timedelta(days=days), self.cert.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )

    def sign_csr(self, csr_pem: bytes, device_id: str, days: int = 365) -> x509.Certificate:
        """Sign a device CSR: its signature must verify and its key must be EC P-256.
        The subject is replaced: the fleet decides the device id (the CN)."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CAError(f"not a PEM certificate request: {exc}") from None
        if not csr.is_signature_valid:
            raise CAError("the CSR's signature does not verify")
        pub = csr.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP256R1):
            raise CAError("the CSR's key must be EC P-256")
        return (
            self._builder(device_id, pub, days)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue_client(self, cn: str, days: int = 825) -> tuple[bytes, x509.Certificate]:
        """A key and client certificate (e.g. the fleet service identity)."""
        key = new_key()
        cert = (
            self._builder(cn, key.public_key(), days)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return key_pem(key), cert

    def issue_server(self, hosts: list[str], days: int = 825) -> tuple[bytes, x509.Certificate]:
        """A key and TLS server certificate for the broker, valid for ``hosts`` (DNS names or IPs)."""
        if not hosts:
            raise CAError("the broker certificate needs at least one host name or address")
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        key = new_key()
        cert = (
            self._builder(hosts[0], key.public_key(), days)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return key_pem(key), cert

    def crl(self, revoked: list[tuple[int, dt.datetime]], days: int = 365) -> bytes:
        """A CRL listing ``(serial, revoked_at)``; the broker refuses all clients once it is past
        its next update, so it is re-issued on every revocation and by ``broker-config``."""
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(_now() - dt.timedelta(minutes=5))
            .next_update(_now() + dt.timedelta(days=days))
        )
        for serial, when in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return b.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
