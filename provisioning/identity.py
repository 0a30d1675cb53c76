"""The device identity on disk: private key (0600, never leaves the device), certificate, fleet CA.

Layout of ``identity_dir``: ``device.key``, ``device.crt``, ``ca.crt``, ``identity.json``
(device id, group, fleet endpoint). A renewal writes ``device.key.new`` then ``device.crt.new``
and renames both; ``recover()`` finishes or discards a renewal cut short by power loss.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ota.atomic import fsync_dir, write_atomic

SERVICE_USER = "device-agent"


def certificate_cn(cert_file: str | Path) -> str:
    """The first common name of a PEM certificate; "" when it has none or cannot be read."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError):
        return ""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""


def fleet_client_id(device_id: str, cert_file: str = "") -> str:
    """The fleet link's MQTT client id.

    With a client certificate it is the certificate's CN, exactly the id the fleet's device listener
    assigns (``use_username_as_clientid``), so the persistent session is the one the broker keeps;
    otherwise ``dev-<device id>``.
    """
    return (certificate_cn(cert_file) if cert_file else "") or f"dev-{device_id}"


class IdentityError(Exception):
    """The identity is missing, incomplete or invalid; the message says what to do."""


def service_owner(user: str | None = SERVICE_USER) -> tuple[int, int] | None:
    """(uid, gid) of the service user when we run as root and it exists, else None (keep ours)."""
    if not user or os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def public_key_der(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class LoadedIdentity:
    device_id: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    ca: x509.Certificate
    info: dict[str, Any]

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    def days_left(self, now: dt.datetime | None = None) -> float:
        now = now or dt.datetime.now(dt.UTC)
        return (self.not_after - now).total_seconds() / 86400


class IdentityStore:
    def __init__(self, directory: str | Path, owner: tuple[int, int] | None = None) -> None:
        self.dir = Path(directory)
        self.owner = owner
        self.key_path = self.dir / "device.key"
        self.cert_path = self.dir / "device.crt"
        self.ca_path = self.dir / "ca.crt"
        self.info_path = self.dir / "identity.json"

    def exists(self) -> bool:
        return self.cert_path.exists() or self.key_path.exists() or self.info_path.exists()

    def files(self) -> list[Path]:
        """Every file the identity may consist of (for factory reset)."""
        names = [
            "device.key",
            "device.crt",
            "ca.crt",
            "identity.json",
            "device.key.new",
            "device.crt.new",
            "device.key.pending",
        ]
        return [self.dir / n for n in names]

    def _mkdir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        if self.owner:
            os.chown(self.dir, *self.owner)

    # -- key and CSR -----------------------------------------------------------------------
    def new_key(self, path: Path | None = None) -> ec.EllipticCurvePrivateKey:
        """Generate an EC P-256 key and write it 0600 (owned by the service user)."""
        self._mkdir()
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_atomic(path or self.key_path, pem, mode=0o600, owner=self.owner)
        return key

    @staticmethod
    def csr(key: ec.EllipticCurvePrivateKey, hint: str = "unclaimed-device") -> bytes:
        """A CSR proving possession of ``key``; the fleet sets the real CN (the device id)."""
        req = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hint)]))
            .sign(key, hashes.SHA256())
        )
        return req.public_bytes(serialization.Encoding.PEM)

    def load_key(self, path: Path | None = None) -> ec.EllipticCurvePrivateKey:
        p = path or self.key_path
        try:
            key = serialization.load_pem_private_key(p.read_bytes(), password=None)
        except FileNotFoundError:
            raise IdentityError(f"no device key at {p}: provision the device first") from None
        except ValueError as exc:
            raise IdentityError(
                f"{p} is not a valid private key ({exc}): factory-reset and provision again"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{p}: not an EC key")
        return key

    # -- certificate -----------------------------------------------------------------------
    def save(self, cert_pem: bytes, ca_pem: bytes, info: dict[str, Any]) -> None:
        self._mkdir()
        write_atomic(self.ca_path, ca_pem, mode=0o644, owner=self.owner)
        write_atomic(self.cert_path, cert_pem, mode=0o644, owner=self.owner)
        write_atomic(self.info_path, json.dumps(info, indent=2, sort_keys=True), mode=0o644, owner=self.owner)

    def install_renewed(self, cert_pem: bytes, ca_pem: bytes) -> None:
        """Swap in a renewed certificate and the key written at ``device.key.pending``."""
        write_atomic(self.ca_path, ca_pem, mode=0o644, owner=self.owner)
        write_atomic(self.dir / "device.crt.new", cert_pem, mode=0o644, owner=self.owner)
        self.recover()

    def recover(self) -> None:
        """Finish a renewal cut short by power loss, or drop a pending key whose certificate never
        came. Order on disk: key.pending, crt.new, key.pending -> key.new, key.new -> key,
        crt.new -> crt; each state before the last rename is recognisable from the files left."""
        pending = self.dir / "device.key.pending"
        key_new, crt_new = self.dir / "device.key.new", self.dir / "device.crt.new"
        if pending.exists() and crt_new.exists():
            os.replace(pending, key_new)
            fsync_dir(self.dir)
        if key_new.exists() and crt_new.exists():
            os.replace(key_new, self.key_path)
            fsync_dir(self.dir)
        if crt_new.exists() and not key_new.exists():
            os.replace(crt_new, self.cert_path)
            fsync_dir(self.dir)
        pending.unlink(missing_ok=True)

    def load(self) -> LoadedIdentity:
        """Load and cross-check key, certificate and CA; raises IdentityError with the fix."""
        if self.dir.exists():
            self.recover()
        if not self.cert_path.exists():
            raise IdentityError(f"no device certificate in {self.dir}: run `device-agent provision`")
        key = self.load_key()
        try:
            cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            ca = x509.load_pem_x509_certificate(self.ca_path.read_bytes())
        except (ValueError, FileNotFoundError) as exc:
            raise IdentityError(
                f"certificate or CA in {self.dir} unreadable ({exc}): factory-reset and provision again"
            ) from None
        if public_key_der(cert.public_key()) != public_key_der(key.public_key()):
            raise IdentityError(
                "the device certificate does not match the device key: factory-reset and provision again"
            )
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, Exception) as exc:
            raise IdentityError(
                f"the device certificate was not issued by the stored fleet CA ({exc})"
            ) from None
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        device_id = str(cns[0].value) if cns else ""
        try:
            info = json.loads(self.info_path.read_text())
        except (FileNotFoundError, ValueError):
            info = {}
        return LoadedIdentity(device_id, key, cert, ca, info)
