"""OTA bundles: one uncompressed tar, verified while it streams.

Members, in this order: ``manifest.json``, ``manifest.sig`` (Ed25519 over the exact manifest
bytes), then the payloads (``wheels/``, ``hooks/``, ``firmware/``). The signature and the manifest
are checked before any payload byte is read; every payload must be a regular file listed in the
manifest with its size and sha256, inside the bundle root, named once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ota import signing
from ota.errors import OtaError

FORMAT = 1
MAX_MANIFEST_BYTES = 1 << 20
MAX_SIG_BYTES = 64 << 10
MAX_MEMBER_BYTES = 4 << 30
PAYLOAD_DIRS = ("wheels", "hooks", "firmware")
_VERSION_RE = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9}){0,3}")  # ASCII digits only, each part an int


def parse_version(text: str, name: str = "version") -> tuple[int, ...]:
    """``"1.10.2"`` -> ``(1, 10, 2)``; anything else is refused with a clear reason naming ``name``."""
    if not isinstance(text, str) or not _VERSION_RE.fullmatch(text):
        shown = repr(text) if len(repr(text)) <= 40 else repr(text)[:37] + "..."
        raise OtaError("bad_manifest", f"{name} {shown} is not N[.N[.N[.N]]]")
    parts = tuple(int(p) for p in text.split("."))
    return parts + (0,) * (4 - len(parts))


@dataclass
class Payload:
    path: str
    sha256: str
    size: int


@dataclass
class Manifest:
    version: str
    compatible: list[str]
    min_version: str | None = None
    allow_downgrade: bool = False
    payloads: list[Payload] = field(default_factory=list)
    created: float = 0.0
    notes: str = ""

    def to_json(self) -> bytes:
        data = {
            "format": FORMAT,
            "version": self.version,
            "compatible": self.compatible,
            "min_version": self.min_version,
            "allow_downgrade": self.allow_downgrade,
            "created": self.created,
            "notes": self.notes,
            "payloads": [{"path": p.path, "sha256": p.sha256, "size": p.size} for p in self.payloads],
        }
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """The manifest in ``raw`` (see :func:`parse_manifest`)."""
        return parse_manifest(raw)

    @property
    def total_size(self) -> int:
        return sum(p.size for p in self.payloads)

    def wheels(self) -> list[str]:
        return [p.path for p in self.payloads if p.path.startswith("wheels/") and p.path.endswith(".whl")]

    def hooks(self) -> list[str]:
        return [p.path for p in self.payloads if p.path.startswith("hooks/")]


# -- the one manifest parser ----------------------------------------------------------------------
# Every field has one JSON type; nothing is coerced (``"false"`` is not a boolean, ``1`` is not
# ``true``, ``true`` is not an integer). Unknown fields are refused: a newer format bumps ``format``.
_JSON_TYPE = {
    type(None): "null",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}
_TOP_FIELDS = {
    "format",
    "version",
    "compatible",
    "min_version",
    "allow_downgrade",
    "created",
    "notes",
    "payloads",
}
_PAYLOAD_FIELDS = {"path", "sha256", "size"}
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_CREATED = 1e11  # seconds since 1970: year 5138


def _bad(field_name: str, want: str, value: Any) -> OtaError:
    got = _JSON_TYPE.get(type(value), type(value).__name__)
    shown = repr(value) if isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 40 else ""
    return OtaError(
        "bad_manifest",
        f"manifest field {field_name!r} must be {want}, got {got}"
        + (f" {shown}" if shown and value is not None else ""),
    )


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _bad(name, "a string", value)
    return value


def _integer(value: Any, name: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise _bad(name, f"an integer from {lo} to {hi}", value)
    return value


def _object(value: Any, name: str, fields: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(name, "an object", value)
    unknown = sorted(set(value) - fields)
    if unknown:
        raise OtaError(
            "bad_manifest",
            f"manifest field {_member_of(name, unknown[0])!r} is unknown (manifest format {FORMAT})",
        )
    missing = sorted(required - set(value))
    if missing:
        raise OtaError("bad_manifest", f"manifest field {_member_of(name, missing[0])!r} is missing")
    return value


def _member_of(parent: str, key: str) -> str:
    key = key if len(key) <= 40 else key[:37] + "..."
    return key if parent == "manifest" else f"{parent}.{key}"


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise OtaError("bad_manifest", f"manifest field {key!r} appears twice")
        out[key] = value
    return out


def _no_constant(name: str) -> None:
    raise OtaError("bad_manifest", f"manifest holds {name}, which is not JSON")


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and validate every field of a manifest; anything else is ``bad_manifest`` naming the field.

    ``format`` (integer 1), ``version`` (string ``N[.N[.N[.N]]]``), ``compatible`` (non-empty list of
    non-empty strings), ``payloads`` (list of objects ``{path: string, sha256: 64 hex, size: integer}``)
    are required; ``min_version`` (version string or null), ``allow_downgrade`` (boolean),
    ``created`` (number of seconds >= 0) and ``notes`` (string) are optional.
    """
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise OtaError("bad_manifest", f"manifest.json is not JSON: {exc}") from None
    data = _object(data, "manifest", _TOP_FIELDS, {"format", "version", "compatible", "payloads"})
    if type(data["format"]) is not int or data["format"] != FORMAT:
        raise _bad("format", f"the integer {FORMAT}", data["format"])
    version = _string(data["version"], "version")
    parse_version(version, "manifest field 'version'")
    min_version = data.get("min_version")
    if min_version is not None:
        parse_version(_string(min_version, "min_version"), "manifest field 'min_version'")
    compatible = data["compatible"]
    if not isinstance(compatible, list) or not compatible:
        raise _bad("compatible", "a non-empty list of hardware models", compatible)
    for i, c in enumerate(compatible):
        if not isinstance(c, str) or not c:
            raise _bad(f"compatible[{i}]", "a non-empty string", c)
    allow_downgrade = data.get("allow_downgrade", False)
    if not isinstance(allow_downgrade, bool):
        raise _bad("allow_downgrade", "a boolean (true or false)", allow_downgrade)
    created = data.get("created", 0)
    if type(created) not in (int, float) or not 0 <= created <= MAX_CREATED:  # NaN fails the range too
        raise _bad("created", f"a number of seconds from 0 to {MAX_CREATED:.0e}", created)
    notes = _string(data.get("notes", ""), "notes")
    if not isinstance(data["payloads"], list):
        raise _bad("payloads", "a list of objects", data["payloads"])
    payloads: list[Payload] = []
    seen: set[str] = set()
    for i, p in enumerate(data["payloads"]):
        where = f"payloads[{i}]"
        p = _object(p, where, _PAYLOAD_FIELDS, _PAYLOAD_FIELDS)
        item = Payload(
            _string(p["path"], f"{where}.path"),
            _string(p["sha256"], f"{where}.sha256"),
            _integer(p["size"], f"{where}.size", 0, MAX_MEMBER_BYTES),
        )
        check_member_name(item.path)
        if item.path in seen:
            raise OtaError("bad_manifest", f"payload {item.path} listed twice")
        if not _SHA256_RE.fullmatch(item.sha256):
            raise _bad(f"{where}.sha256", "64 lowercase hex digits", item.sha256)
        seen.add(item.path)
        payloads.append(item)
    if not any(p.path.startswith("wheels/") and p.path.endswith(".whl") for p in payloads):
        raise OtaError("bad_manifest", "bundle holds no wheels")
    return Manifest(
        version=version,
        compatible=list(compatible),
        min_version=min_version,
        allow_downgrade=allow_downgrade,
        payloads=payloads,
        created=float(created),
        notes=notes,
    )


def check_member_name(name: str) -> str:
    """Refuse names outside the bundle root or outside the payload directories."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or "\\" in name or not name or str(p) != name:
        raise OtaError("unsafe_member", f"member {name!r} is outside the bundle root")
    if len(p.parts) < 2 or p.parts[0] not in PAYLOAD_DIRS:
        raise OtaError("unsafe_member", f"member {name!r} is not under {', '.join(PAYLOAD_DIRS)}/")
    return name


def check_compatible(manifest: Manifest, hardware: str, current_version: str | None) -> None:
    """Hardware model, minimum version and anti-rollback (unless the manifest allows a downgrade)."""
    if hardware not in manifest.compatible:
        raise OtaError(
            "incompatible", f"bundle is for {', '.join(manifest.compatible)}, this device is {hardware!r}"
        )
    if current_version is None:
        return
    cur = parse_version(current_version, "running version")
    if manifest.min_version and cur < parse_version(manifest.min_version):
        raise OtaError(
            "incompatible", f"bundle needs at least {manifest.min_version}, device runs {current_version}"
        )
    new = parse_version(manifest.version)
    if new <= cur and not manifest.allow_downgrade:
        word = "same as" if new == cur else "older than"
        raise OtaError(
            "downgrade",
            f"bundle version {manifest.version} is {word} the running {current_version}"
            " and the manifest does not allow a downgrade",
        )


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if not member.isreg():
        raise OtaError("unsafe_member", f"{member.name} is not a regular file")
    if member.size > limit:
        raise OtaError("oversized", f"{member.name} is {member.size} bytes (limit {limit})")
    f = tar.extractfile(member)
    assert f is not None
    return f.read()


def build(
    out: Path,
    version: str,
    wheelhouse: Path,
    hardware: list[str],
    hooks: Path | None = None,
    firmware: Path | None = None,
    min_version: str | None = None,
    allow_downgrade: bool = False,
    keys: list[Ed25519PrivateKey] | None = None,
    notes: str = "",
) -> Manifest:
    """Write a bundle from a directory of wheels (plus hooks and firmware); signed if keys are given."""
    parse_version(version)
    files: list[tuple[str, Path]] = []
    for prefix, d in (("wheels", wheelhouse), ("hooks", hooks), ("firmware", firmware)):
        if d is None:
            continue
        d = Path(d)
        if not d.is_dir():
            raise OtaError("bad_input", f"{d} is not a directory")
        for path in sorted(d.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            files.append((f"{prefix}/{path.relative_to(d).as_posix()}", path))
    payloads = [Payload(name, sha256_file(path), path.stat().st_size) for name, path in files]
    manifest = Manifest(
        version=version,
        compatible=list(hardware),
        min_version=min_version,
        allow_downgrade=allow_downgrade,
        payloads=payloads,
        created=round(time.time(), 3),
        notes=notes,
    )
    raw = manifest.to_json()
    Manifest.from_json(raw)  # the same checks a device runs
    modes = {
        name: (0o755 if name.startswith("hooks/") or os.access(path, os.X_OK) else 0o644)
        for name, path in files
    }
    _write(out, raw, signing.sign(raw, keys) if keys else b"", [(n, p, modes[n]) for n, p in files])
    return manifest


def sign_bundle(path: Path, keys: list[Ed25519PrivateKey], out: Path | None = None) -> str:
    """(Re)sign a bundle's exact manifest bytes; payload members are copied unchanged."""
    out = Path(out or path)
    tmp = out.with_name(out.name + ".signing")
    with tarfile.open(path, "r|") as src, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as dst:
        first = src.next()
        if first is None or first.name != "manifest.json":
            raise OtaError("bad_bundle", "first member must be manifest.json")
        raw = _read_member(src, first, MAX_MANIFEST_BYTES)
        Manifest.from_json(raw)
        _add_bytes(dst, "manifest.json", raw)
        _add_bytes(dst, "manifest.sig", signing.sign(raw, keys))
        while (member := src.next()) is not None:
            if member.name == "manifest.sig":
                continue
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
    os.replace(tmp, out)
    return ", ".join(signing.key_id(k.public_key()) for k in keys)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _write(out: Path, manifest: bytes, sig: bytes, files: list[tuple[str, Path, int]]) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "manifest.json", manifest)
        _add_bytes(tar, "manifest.sig", sig)
        for name, path, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = path.stat().st_size, mode, int(path.stat().st_mtime)
            with open(path, "rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, out)


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (never the whole file in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(path: Path, trusted: dict[str, Ed25519PublicKey]) -> tuple[Manifest, str]:
    """Check the signature and parse the manifest without reading any payload."""
    with open(path, "rb") as f:
        return _open_manifest(tarfile.open(fileobj=f, mode="r|"), trusted)


def _open_manifest(tar: tarfile.TarFile, trusted: dict[str, Ed25519PublicKey]) -> tuple[Manifest, str]:
    first = tar.next()
    if first is None or first.name != "manifest.json":
        raise OtaError("bad_bundle", "first member must be manifest.json")
    raw = _read_member(tar, first, MAX_MANIFEST_BYTES)
    second = tar.next()
    if second is None or second.name != "manifest.sig":
        raise OtaError("bad_bundle", "second member must be manifest.sig")
    sig = _read_member(tar, second, MAX_SIG_BYTES)
    kid = signing.check(raw, sig, trusted)  # before the manifest is even parsed
    return Manifest.from_json(raw), kid


def verify_and_extract(
    bundle: Path,
    trusted: dict[str, Ed25519PublicKey],
    dest: Path | None,
    hardware: str | None = None,
    current_version: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Stream ``bundle``: signature, manifest, compatibility, then every payload checked.

    With ``dest`` the payloads land under it (which must not exist; it is removed again on any
    refusal). Without ``dest`` it only verifies. ``progress(done, total)`` follows payload bytes.
    """
    if dest is not None:
        dest = Path(dest)
        if dest.exists():
            shutil.rmtree(dest)
    try:
        with open(bundle, "rb") as f:
            try:
                tar = tarfile.open(fileobj=f, mode="r|")
                manifest, _kid = _open_manifest(tar, trusted)
                if hardware is not None:
                    check_compatible(manifest, hardware, current_version)
                _stream_payloads(tar, manifest, dest, progress)
            except tarfile.TarError as exc:
                raise OtaError(
                    "bad_bundle", f"not a valid bundle (truncated or corrupt tar): {exc}"
                ) from None
            except EOFError:
                raise OtaError("bad_bundle", "bundle is truncated") from None
    except BaseException:
        if dest is not None and dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
        raise
    return manifest


def _stream_payloads(
    tar: tarfile.TarFile, manifest: Manifest, dest: Path | None, progress: Callable[[int, int], None] | None
) -> None:
    expected = {p.path: p for p in manifest.payloads}
    seen: set[str] = set()
    total, done = manifest.total_size, 0
    while (member := tar.next()) is not None:
        name = member.name
        if name in seen or name in {"manifest.json", "manifest.sig"}:
            raise OtaError("duplicate_member", f"member {name!r} appears twice")
        check_member_name(name)
        if not member.isreg():
            kind = "link" if member.issym() or member.islnk() else "device or special file"
            raise OtaError("unsafe_member", f"member {name!r} is a {kind}")
        want = expected.get(name)
        if want is None:
            raise OtaError("unlisted_member", f"member {name!r} is not in the signed manifest")
        if member.size != want.size:
            kind = "oversized" if member.size > want.size else "size_mismatch"
            raise OtaError(kind, f"member {name!r} is {member.size} bytes, manifest says {want.size}")
        seen.add(name)
        src = tar.extractfile(member)
        assert src is not None
        h = hashlib.sha256()
        out: BinaryIO | None = None
        target = None
        if dest is not None:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            out = open(target, "wb")
        try:
            remaining = member.size
            while remaining:
                chunk = src.read(min(1 << 20, remaining))
                if not chunk:
                    raise OtaError("bad_bundle", f"member {name!r} is truncated")
                remaining -= len(chunk)
                h.update(chunk)
                if out is not None:
                    out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        finally:
            if out is not None:
                out.close()
        if h.hexdigest() != want.sha256:
            raise OtaError("bad_digest", f"member {name!r} sha256 does not match the manifest")
        if target is not None:
            os.chmod(target, 0o755 if name.startswith("hooks/") else 0o644)
    missing = sorted(set(expected) - seen)
    if missing:
        raise OtaError("missing_member", f"bundle lacks {', '.join(missing[:3])}")


def describe(manifest: Manifest) -> dict[str, Any]:
    return {
        "version": manifest.version,
        "compatible": manifest.compatible,
        "min_version": manifest.min_version,
        "allow_downgrade": manifest.allow_downgrade,
        "payloads": len(manifest.payloads),
        "bytes": manifest.total_size,
    }
