"""Ed25519 keys for bundles: generation, loading, several trusted keys (rotation)."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ota.errors import OtaError


def key_id(public: Ed25519PublicKey) -> str:
    """A short stable name for a public key: the first 16 hex digits of sha256(raw key)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate(private_path: Path, public_path: Path) -> str:
    """Write a new key pair (private file 0600, PKCS8 PEM; public SPKI PEM); returns its id."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(private_path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_id(key.public_key())


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise OtaError("bad_key", f"{path}: cannot load private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise OtaError("bad_key", f"{path}: not an Ed25519 private key")
    return key


def load_trusted(keys_dir: Path) -> dict[str, Ed25519PublicKey]:
    """Every ``*.pub``/``*.pem`` public key in ``keys_dir`` by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    d = Path(keys_dir)
    if not d.is_dir():
        raise OtaError("no_trusted_keys", f"trusted keys directory {d} does not exist")
    for path in sorted(d.iterdir()):
        if path.suffix not in {".pub", ".pem"}:
            continue
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except ValueError as exc:
            raise OtaError("bad_key", f"{path}: not a PEM public key: {exc}") from None
        if isinstance(key, Ed25519PublicKey):
            keys[key_id(key)] = key
    if not keys:
        raise OtaError("no_trusted_keys", f"no Ed25519 public keys (*.pub) in {d}")
    return keys


def sign(manifest: bytes, keys: list[Ed25519PrivateKey]) -> bytes:
    """The ``manifest.sig`` text: one ``<key id> <base64 signature>`` line per key."""
    lines = [f"{key_id(k.public_key())} {base64.b64encode(k.sign(manifest)).decode()}" for k in keys]
    return ("\n".join(lines) + "\n").encode()


def check(manifest: bytes, sig_text: bytes, trusted: dict[str, Ed25519PublicKey]) -> str:
    """Return the id of a trusted key whose signature over ``manifest`` verifies, else raise."""
    try:
        lines = sig_text.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise OtaError("bad_signature", "manifest.sig is not ASCII") from None
    seen: list[str] = []
    for line in filter(None, (ln.strip() for ln in lines)):
        parts = line.split()
        if len(parts) != 2:
            raise OtaError("bad_signature", "manifest.sig: malformed line")
        kid, b64 = parts
        seen.append(kid)
        key = trusted.get(kid)
        if key is None:
            continue
        try:
            key.verify(base64.b64decode(b64, validate=True), manifest)
        except (InvalidSignature, ValueError):
            raise OtaError(
                "bad_signature", f"signature by key {kid} does not verify over the manifest"
            ) from None
        return kid
    if not seen:
        raise OtaError("bad_signature", "manifest.sig holds no signature")
    raise OtaError("untrusted_key", f"signed by {', '.join(seen)}; trusted: {', '.join(sorted(trusted))}")
