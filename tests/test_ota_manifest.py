"""Manifests signed by a trusted key but malformed: every field typed, refused as ``bad_manifest``.

The bundles are real tars with the real probe wheel, signed with the device's trusted key by
``ota.signing``, so the signature passes and the manifest parser itself is what refuses them.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Device, dict[str, Any], list[tuple[str, bytes]]]:
    """One provisioned device (1.0.0) and a good 2.0.0 manifest for tests that must leave it untouched."""
    base = tmp_path_factory.mktemp("manifest")
    d = Device(base / "dev", layer=False)
    provision(d)
    data, members = good_manifest(d, base)
    return d, data, members


def good_manifest(
    dev: Device, tmp: Path, version: str = "2.0.0"
) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """A manifest built by the real ``ota.bundle.build`` (as a dict) and the members it lists."""
    good = make_bundle(dev, tmp / f"good-{version}.tar", version)
    with tarfile.open(good) as tar:
        data = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        members = [
            (m.name, tar.extractfile(m).read())
            for m in tar.getmembers()  # type: ignore[union-attr]
            if m.name not in ("manifest.json", "manifest.sig")
        ]
    return data, members


def signed_bundle(
    dev: Device, out: Path, manifest: dict[str, Any] | bytes, members: list[tuple[str, bytes]]
) -> Path:
    """A bundle whose (possibly malformed) manifest is signed with the device's trusted key."""
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [
            ("manifest.json", raw),
            ("manifest.sig", signing.sign(raw, [dev.signing_key])),
            *members,
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out


def install(dev: Device, bundle: Path) -> None:
    cfg = load_config(dev.config_path)
    Installer(Layout(dev.root, dev.state_dir), InstallOptions.from_config(cfg)).install(bundle)


def refused_intact(dev: Device, bundle: Path) -> OtaError:
    """Install ``bundle``: it must be refused with a named error and leave slots and state as they were."""
    before_slots, before_state = dev.slot_listing(), dev.state()
    with pytest.raises(OtaError) as err:
        install(dev, bundle)
    assert dev.slot_listing() == before_slots
    assert dev.state() == before_state
    assert not (dev.state_dir / "ota-work" / "unpacked").exists()
    return err.value


def test_string_false_is_not_a_downgrade_permission(dev: Device, tmp_path: Path) -> None:
    data, members = good_manifest(dev, tmp_path, "0.5.0")
    data["allow_downgrade"] = "false"
    err = refused_intact(dev, signed_bundle(dev, tmp_path / "down.tar", data, members))
    assert err.code == "bad_manifest" and "allow_downgrade" in err.message
    assert dev.running_version() == "1.0.0"
    r = subprocess.run(
        [
            PY,
            "-m",
            "device_agent.cli",
            "ota",
            "verify",
            str(tmp_path / "down.tar"),
            "--config",
            str(dev.config_path),
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode == 1 and "bad_manifest" in r.stderr and "allow_downgrade" in r.stderr
    assert "Traceback" not in r.stderr


def _set(path: str, value: Any):
    def apply(data: dict[str, Any]) -> None:
        keys = path.replace("[0]", ".0").split(".")
        target: Any = data
        for k in keys[:-1]:
            target = target[int(k)] if k.isdigit() else target[k]
        last = keys[-1]
        if value is _DELETE:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return apply


_DELETE = object()

MALFORMED = {
    "allow_downgrade=1": (_set("allow_downgrade", 1), "allow_downgrade"),
    "allow_downgrade='true'": (_set("allow_downgrade", "true"), "allow_downgrade"),
    "allow_downgrade=null": (_set("allow_downgrade", None), "allow_downgrade"),
    "created='abc'": (_set("created", "abc"), "created"),
    "created=[1]": (_set("created", [1]), "created"),
    "created=true": (_set("created", True), "created"),
    "created=-1": (_set("created", -1), "created"),
    "created=1e400": (_set("created", 10**400), "created"),
    "payloads=5": (_set("payloads", 5), "payloads"),
    "payloads=[5]": (_set("payloads", [5]), "payloads[0]"),
    "payloads={}": (_set("payloads", {}), "payloads"),
    "size=true": (_set("payloads[0].size", True), "payloads[0].size"),
    "size='123'": (_set("payloads[0].size", "123"), "payloads[0].size"),
    "size=1.0": (_set("payloads[0].size", 1.0), "payloads[0].size"),
    "sha256=5": (_set("payloads[0].sha256", 5), "payloads[0].sha256"),
    "path=['x']": (_set("payloads[0].path", ["x"]), "payloads[0].path"),
    "payload extra field": (_set("payloads[0].mode", 420), "payloads[0].mode"),
    "payload without size": (_set("payloads[0].size", _DELETE), "payloads[0].size"),
    "format=true": (_set("format", True), "format"),
    "format='1'": (_set("format", "1"), "format"),
    "version=2": (_set("version", 2), "version"),
    "version arabic digits": (_set("version", "\u0662.\u0660"), "version"),
    "min_version=1": (_set("min_version", 1), "min_version"),
    "compatible=[1]": (_set("compatible", [1]), "compatible[0]"),
    "compatible='probe-hw'": (_set("compatible", "probe-hw"), "compatible"),
    "notes=5": (_set("notes", 5), "notes"),
    "unknown field": (_set("rollback_ok", True), "rollback_ok"),
    "no version": (_set("version", _DELETE), "version"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_field_is_bad_manifest_naming_it(case: str, shared, tmp_path: Path) -> None:
    import copy

    dev, good, members = shared
    mutate, field_name = MALFORMED[case]
    data = copy.deepcopy(good)
    mutate(data)
    err = refused_intact(dev, signed_bundle(dev, tmp_path / "bad.tar", data, members))
    assert err.code == "bad_manifest", err
    assert repr(field_name) in err.message, err.message
    assert dev.running_version() == "1.0.0"


@pytest.mark.parametrize(
    "raw, word",
    [
        (b'{"format": 1, "format": 1}', "format"),  # one key twice: two parsers could disagree
        (b'{"format": 1, "created": NaN}', "NaN"),  # not JSON, although Python's json reads it
        (b'{"format": 1, "created": Infinity}', "Infinity"),
        (b"[" * 100_000, "not JSON"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_not_quite_json_is_bad_manifest(raw: bytes, word: str, shared, tmp_path: Path) -> None:
    dev, _data, members = shared
    err = refused_intact(dev, signed_bundle(dev, tmp_path / "bad.tar", raw, members))
    assert err.code == "bad_manifest" and word in err.message, err.message


def test_a_well_typed_manifest_still_installs(dev: Device, tmp_path: Path) -> None:
    data, members = good_manifest(dev, tmp_path)
    data["created"] = 1_800_000_000  # an integer number of seconds is a number too
    data["notes"] = "typed"
    install(dev, signed_bundle(dev, tmp_path / "ok.tar", data, members))
    assert dev.running_version() == "2.0.0"
    assert bundle_mod.parse_manifest(json.dumps(data).encode()).created == 1_800_000_000.0
