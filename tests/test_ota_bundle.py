"""Bundles: build, sign, rotate keys, verify; every bad bundle refused with nothing written."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from device_agent.config import load_config
from ota import bundle as bundle_mod
from ota import signing
from ota.errors import OtaError
from ota.installer import Installer, InstallOptions
from ota.layout import Layout
from tests.support.ota_harness import PY, REPO, Device, make_bundle, provision


@pytest.fixture
def dev(tmp_path: Path) -> Device:
    d = Device(tmp_path / "dev", layer=False)
    provision(d)
    return d


def _cli(prog: str, *args: str) -> subprocess.CompletedProcess:
    module = "fleet.cli" if prog == "fleetctl" else "device_agent.cli"
    return subprocess.run([PY, "-m", module, *args], capture_output=True, text=True, cwd=REPO, timeout=60)


def _install(dev: Device, bundle: Path) -> None:
    cfg = load_config(dev.config_path)
    Installer(Layout(dev.root, dev.state_dir), InstallOptions.from_config(cfg)).install(bundle)


def test_cli_keygen_build_sign_verify_with_rotation(tmp_path: Path, dev: Device) -> None:
    from tests.support.ota_harness import probe_wheel

    wh = tmp_path / "wh"
    wh.mkdir()
    wheel = probe_wheel("2.0.0")
    (wh / wheel.name).write_bytes(wheel.read_bytes())
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "noop").write_text("#!/bin/sh\nexit 0\n")
    r = _cli("fleetctl", "ota", "keygen", str(tmp_path / "k" / "old"))
    assert r.returncode == 0, r.stderr
    assert _cli("fleetctl", "ota", "keygen", str(tmp_path / "k" / "new")).returncode == 0
    assert _cli("fleetctl", "ota", "keygen", str(tmp_path / "k" / "new")).returncode == 1  # never overwrites
    assert (tmp_path / "k" / "old.key").stat().st_mode & 0o777 == 0o600
    out = tmp_path / "b.tar"
    r = _cli(
        "fleetctl",
        "ota",
        "build",
        "--version",
        "2.0.0",
        "--wheelhouse",
        str(wh),
        "--hooks",
        str(hooks),
        "--hardware",
        dev.hardware,
        "-o",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["signed"] is False
    only_new = tmp_path / "trust-new"
    only_new.mkdir()
    (only_new / "new.pub").write_bytes((tmp_path / "k" / "new.pub").read_bytes())
    r = _cli("device-agent", "ota", "verify", str(out), "--keys", str(only_new))
    assert r.returncode == 1 and "bad_signature" in r.stderr  # unsigned
    r = _cli("fleetctl", "ota", "sign", str(out), "--key", str(tmp_path / "k" / "old.key"))
    assert r.returncode == 0, r.stderr
    r = _cli("device-agent", "ota", "verify", str(out), "--keys", str(only_new))
    assert r.returncode == 1 and "untrusted_key" in r.stderr
    # rotation: sign with the old and the new key; a device trusting either accepts it
    r = _cli(
        "fleetctl",
        "ota",
        "sign",
        str(out),
        "--key",
        str(tmp_path / "k" / "old.key"),
        "--key",
        str(tmp_path / "k" / "new.key"),
    )
    assert r.returncode == 0, r.stderr
    r = _cli("device-agent", "ota", "verify", str(out), "--keys", str(only_new))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"] == "2.0.0"
    # and the device (trusting its own release key plus the new one) installs it
    (dev.keys_dir / "new.pub").write_bytes((tmp_path / "k" / "new.pub").read_bytes())
    r = _cli("device-agent", "ota", "verify", str(out), "--config", str(dev.config_path))
    assert r.returncode == 0, r.stderr
    _install(dev, out)
    assert dev.running_version() == "2.0.0"
    assert (dev.root / "current" / "ota-bundle" / "hooks" / "noop").exists()


# --- hand-made bad bundles ---------------------------------------------------------------------


def _member(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, size: int | None = None, linkname: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if size is None else size
    info.linkname = linkname
    info.mode = 0o644
    return info, data


def _write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _signed_members(
    dev: Device, payloads: dict[str, bytes], manifest_extra: dict | None = None, version: str = "2.0.0"
) -> list[tuple[tarfile.TarInfo, bytes]]:
    import hashlib

    m = bundle_mod.Manifest(
        version=version,
        compatible=[dev.hardware],
        payloads=[bundle_mod.Payload(n, hashlib.sha256(d).hexdigest(), len(d)) for n, d in payloads.items()],
    )
    raw = m.to_json()
    if manifest_extra:
        data = json.loads(raw)
        data.update(manifest_extra)
        raw = json.dumps(data).encode()
    return [_member("manifest.json", raw), _member("manifest.sig", signing.sign(raw, [dev.signing_key]))]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _offset_of(path: Path, name: str) -> int:
    with tarfile.open(path) as tar:
        return tar.getmember(name).offset_data


WHEEL = "wheels/otaprobe-2.0.0-py3-none-any.whl"


def _bad_bundle(kind: str, dev: Device, tmp: Path) -> Path:
    good = make_bundle(dev, tmp / "good.tar", "2.0.0")
    wheel_bytes = tarfile.open(good).extractfile(WHEEL).read()  # type: ignore[union-attr]
    out = tmp / f"{kind}.tar"
    if kind == "wrong_key":
        other = tmp / "other"
        signing.generate(other.with_suffix(".key"), other.with_suffix(".pub"))
        return make_bundle(dev, out, "2.0.0", keys=[signing.load_private(other.with_suffix(".key"))])
    out.write_bytes(good.read_bytes())
    if kind == "flipped_manifest":
        _flip(out, _offset_of(out, "manifest.json") + 30)
    elif kind == "flipped_signature":
        _flip(out, _offset_of(out, "manifest.sig") + 20)
    elif kind == "flipped_payload":
        _flip(out, _offset_of(out, WHEEL) + 100)
    elif kind == "truncated":
        out.write_bytes(good.read_bytes()[: _offset_of(good, WHEEL) + 200])
    elif kind == "path_traversal":
        evil = "wheels/../../../etc/evil"
        _write_tar(
            out,
            _signed_members(dev, {WHEEL: wheel_bytes}) + [_member(WHEEL, wheel_bytes), _member(evil, b"x")],
        )
    elif kind == "absolute_path":
        _write_tar(
            out,
            _signed_members(dev, {WHEEL: wheel_bytes})
            + [_member(WHEEL, wheel_bytes), _member("/etc/evil", b"x")],
        )
    elif kind == "symlink_member":
        _write_tar(
            out,
            _signed_members(dev, {WHEEL: wheel_bytes})
            + [_member(WHEEL, kind=tarfile.SYMTYPE, linkname="/etc/passwd")],
        )
    elif kind == "hardlink_member":
        _write_tar(
            out,
            _signed_members(dev, {WHEEL: wheel_bytes})
            + [_member(WHEEL, kind=tarfile.LNKTYPE, linkname="manifest.json")],
        )
    elif kind == "device_member":
        _write_tar(out, _signed_members(dev, {WHEEL: wheel_bytes}) + [_member(WHEEL, kind=tarfile.CHRTYPE)])
    elif kind == "oversized_member":
        _write_tar(
            out, _signed_members(dev, {WHEEL: wheel_bytes}) + [_member(WHEEL, wheel_bytes + b"\0" * 4096)]
        )
    elif kind == "duplicate_member":
        _write_tar(
            out,
            _signed_members(dev, {WHEEL: wheel_bytes})
            + [_member(WHEEL, wheel_bytes), _member(WHEEL, wheel_bytes)],
        )
    elif kind == "unlisted_member":
        _write_tar(
            out,
            _signed_members(dev, {WHEEL: wheel_bytes})
            + [_member(WHEEL, wheel_bytes), _member("hooks/sneaky", b"#!/bin/sh\n")],
        )
    elif kind == "wrong_hardware":
        make_bundle(dev, out, "2.0.0", hardware=["other-board"])
    elif kind == "older_version":
        make_bundle(dev, out, "0.9.0")
    elif kind == "same_version":
        make_bundle(dev, out, "1.0.0")
    elif kind == "min_version":
        make_bundle(dev, out, "3.0.0", min_version="2.0.0")
    elif kind == "not_a_tar":
        out.write_bytes(b"hello, this is not a bundle" * 100)
    else:
        raise AssertionError(kind)
    return out


BAD = {
    "wrong_key": "untrusted_key",
    "flipped_manifest": "bad_signature",
    "flipped_signature": "bad_signature",
    "flipped_payload": "bad_digest",
    "truncated": "bad_bundle",
    "path_traversal": "unsafe_member",
    "absolute_path": "unsafe_member",
    "symlink_member": "unsafe_member",
    "hardlink_member": "unsafe_member",
    "device_member": "unsafe_member",
    "oversized_member": "oversized",
    "duplicate_member": "duplicate_member",
    "unlisted_member": "unlisted_member",
    "wrong_hardware": "incompatible",
    "older_version": "downgrade",
    "same_version": "downgrade",
    "min_version": "incompatible",
    "not_a_tar": "bad_bundle",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_bundle_refused_nothing_written(kind: str, dev: Device, tmp_path: Path) -> None:
    bad = _bad_bundle(kind, dev, tmp_path)
    before_slots, before_state = dev.slot_listing(), dev.state()
    with pytest.raises(OtaError) as err:
        _install(dev, bad)
    assert err.value.code == BAD[kind], err.value
    assert err.value.message  # a reason for people
    assert dev.slot_listing() == before_slots
    assert dev.state() == before_state
    assert not (dev.state_dir / "ota-work" / "unpacked").exists()
    assert dev.running_version() == "1.0.0"
    # the CLI says why, too
    r = _cli("device-agent", "ota", "verify", str(bad), "--config", str(dev.config_path))
    assert r.returncode == 1 and BAD[kind] in r.stderr


def test_signed_downgrade_is_allowed(dev: Device, tmp_path: Path) -> None:
    bundle = make_bundle(dev, tmp_path / "down.tar", "0.9.0", allow_downgrade=True)
    _install(dev, bundle)
    assert dev.running_version() == "0.9.0"


def test_manifest_checked_before_payload_read(dev: Device, tmp_path: Path) -> None:
    """A bad signature is refused from the first two members alone (the payload is garbage)."""
    bad = _bad_bundle("flipped_manifest", dev, tmp_path)
    data = bad.read_bytes()
    cut = _offset_of(bad, WHEEL)
    (tmp_path / "head.tar").write_bytes(data[:cut] + b"\xff" * 512)
    trusted = signing.load_trusted(dev.keys_dir)
    with pytest.raises(OtaError) as err:
        bundle_mod.read_manifest(tmp_path / "head.tar", trusted)
    assert err.value.code == "bad_signature"


def test_install_from_a_slot_without_pip(dev: Device, tmp_path: Path) -> None:
    """On a device the installer runs from a slot, which has no pip: the new slot brings its own."""
    import dataclasses

    cfg = load_config(dev.config_path)
    slot_python = str(dev.root / "slots" / "a" / "bin" / "python")
    assert subprocess.run([slot_python, "-c", "import pip"], capture_output=True).returncode != 0
    opts = dataclasses.replace(InstallOptions.from_config(cfg), python=slot_python)
    Installer(Layout(dev.root, dev.state_dir), opts).install(make_bundle(dev, tmp_path / "v2.tar", "2.0.0"))
    assert dev.running_version() == "2.0.0"
    new_python = str(dev.root / "current" / "bin" / "python")
    assert subprocess.run([new_python, "-c", "import pip"], capture_output=True).returncode == 0
