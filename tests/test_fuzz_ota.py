"""Fuzz target "ota": manifests signed by a trusted key, every field given every JSON type.

Each example mutates a manifest built by the real ``ota.bundle.build`` (set a field to any JSON
value, drop a field, add one), signs the exact bytes with the device's trusted key and installs the
bundle with the real installer, so the manifest parser is what is reached. Property: every refusal
is a named ``OtaError``, never another exception, and slots and update state are untouched. The
wheel member is one byte off its listed digest, so a manifest the parser accepts ends as
``bad_digest`` (or ``incompatible``/``downgrade``) before anything reaches a slot, and an accepted
downgrade is only ever one the manifest allowed with a JSON ``true``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ota.bundle import parse_version
from ota.errors import OtaError
from tests.support.fuzzing import fuzz_example, fuzz_settings
from tests.support.ota_harness import Device, provision
from tests.test_ota_manifest import good_manifest, install, signed_bundle

NAMED = {
    "bad_manifest",
    "unsafe_member",
    "bad_digest",
    "incompatible",
    "downgrade",
    "missing_member",
    "unlisted_member",
    "size_mismatch",
    "oversized",
}
FIELDS = [
    "format",
    "version",
    "compatible",
    "min_version",
    "allow_downgrade",
    "created",
    "notes",
    "payloads",
    "payloads[0]",
    "payloads[0].path",
    "payloads[0].sha256",
    "payloads[0].size",
    "compatible[0]",
]
HUGE_DIGITS = "1" * 5000  # more digits than Python's int() takes: json.loads raises ValueError

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.sampled_from([10**30, -(10**30), 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            "false",
            "true",
            "0",
            "1",
            "",
            "2.0.0",
            "0.5.0",
            "1.0.0",
            "99.0",
            "probe-hw",
            "wheels/otaprobe-2.0.0-py3-none-any.whl",
            "wheels/../x.whl",
            "0" * 64,
            "\u0662.\u0660",
        ]
    ),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(FIELDS), json_values),
    st.tuples(st.just("del"), st.sampled_from(FIELDS), st.none()),
    st.tuples(
        st.just("add"), st.sampled_from(["extra", "payloads[0].mode", "signature", "format2"]), json_values
    ),
    st.tuples(st.just("huge"), st.sampled_from(["created", "payloads[0].size", "format"]), st.none()),
)


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Device, dict[str, Any], list[tuple[str, bytes]], Path]:
    base = tmp_path_factory.mktemp("fuzz-ota")
    dev = Device(base / "dev", layer=False)
    provision(dev)
    data, members = good_manifest(dev, base)
    members = [
        (n, (b[:100] + bytes([b[100] ^ 1]) + b[101:]) if n.endswith(".whl") else b) for n, b in members
    ]
    return dev, data, members, base


def _apply(data: dict[str, Any], op: str, path: str, value: Any) -> str | None:
    """Apply one mutation; returns a field whose value is to be spliced in raw as huge digits."""
    parent: Any = data
    parts = path.replace("[0]", ".0").split(".")
    for k in parts[:-1]:
        try:
            parent = parent[int(k)] if k.isdigit() else parent[k]
        except (KeyError, IndexError, TypeError, ValueError):
            return None  # the path no longer exists after an earlier mutation
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if (
        not isinstance(parent, (dict, list))
        or (isinstance(parent, list) and not isinstance(last, int))
        or (isinstance(parent, dict) and isinstance(last, int))
    ):
        return None
    try:
        if op == "del":
            del parent[last]
        elif op == "huge":
            parent[last] = "@@HUGE@@"
            return path
        else:
            parent[last] = value
    except (KeyError, IndexError):
        pass
    return None


def _may_downgrade(data: Any) -> bool:
    """Could a correct parser accept this manifest's version over the running 1.0.0?"""
    try:
        newer = parse_version(data["version"]) > parse_version("1.0.0")
    except (OtaError, KeyError, TypeError):
        return True  # not a version: the parser refuses it anyway
    return newer or data.get("allow_downgrade") is True


@pytest.mark.fuzz
@fuzz_settings(examples=150)
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_malformed_signed_manifest_is_a_named_refusal(target, mutations) -> None:
    import json

    dev, good, members, base = target
    data = copy.deepcopy(good)
    for op, path, value in mutations:
        _apply(data, op, path, value)
    raw = json.dumps(data).replace('"@@HUGE@@"', HUGE_DIGITS).encode()
    bundle = signed_bundle(dev, base / "fuzz.tar", raw, members)
    before_slots, before_state = dev.slot_listing(), dev.state()
    with fuzz_example("ota") as ex:
        try:
            install(dev, bundle)
            code = "installed"
        except OtaError as exc:
            code = exc.code
            assert exc.message
        intact = (
            dev.slot_listing() == before_slots
            and dev.state() == before_state
            and not (dev.state_dir / "ota-work" / "unpacked").exists()
        )
        if not intact or code == "installed":
            ex.lost()
        assert intact, f"slots or state changed by {raw[:300]!r} ({code})"
        assert code in NAMED, f"{code} for {raw[:300]!r}"
        if code == "bad_digest":  # the manifest was accepted: only a real permission allows a downgrade
            assert _may_downgrade(data), f"downgrade accepted for {raw[:300]!r}"
