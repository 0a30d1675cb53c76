"""Telemetry on the wire: compact JSON, deflated with a versioned preset dictionary (standard library only).

A health sample is 2-4 KB of compact JSON whose keys and most values repeat from one sample to the
next. Deflate (zlib, RFC 1950) with a *preset dictionary* of typical samples compresses each one
on its own (no state across messages, so QoS 1 redelivery, spool replays and shared subscriptions
are unaffected) about 7-10x.

- The device (``FleetLink``) publishes ``dev/{id}/telemetry`` deflated, with the MQTT 5 **Content
  Type** ``application/json; enc=deflate-dict-{version}`` (``mqtt.compress_telemetry = false``:
  plain JSON, no content type).
- The fleet side (``fleetctl serve``, ``FleetClient.on_telemetry``) decodes with :func:`decode`
  and accepts both forms: no content type (or ``application/json``) is plain JSON, as every
  device before this encoding sends it. A zlib stream with a preset dictionary is also recognised
  without a content type (a bridge that drops MQTT 5 properties): JSON never starts with ``x``.
- The dictionaries live in one place, this package: ``telemetry_dict_{version}.json`` (built by
  ``tools/telemetry_dict.py`` from samples of real agents), each pinned by its Adler-32 (which is
  also the DICTID in every stream's header). A new dictionary is a new version; old versions stay
  decodable.
- :func:`decode` refuses, with :class:`PayloadError` (a ``ValueError``) naming the reason: an
  unknown content type or dictionary version, a stream for another dictionary, corrupt or
  truncated data, trailing bytes, and anything that inflates beyond ``MAX_DECODED`` bytes (a zip
  bomb costs at most that much memory and one bounded inflate call).
"""

from __future__ import annotations

import functools
import zlib
from importlib import resources

CONTENT_TYPE_JSON = "application/json"
ENCODING_PREFIX = "deflate-dict-"
DICT_VERSION = 1  # what devices send
MAX_DECODED = 256 * 1024  # bytes of JSON one telemetry message may inflate to
LEVEL = 9  # ~100 us for a 5.5 KB sample on the development machine (x86-64); the size is what counts
# version -> Adler-32 of the dictionary file: an edited file is a new version, not a silent change
DICT_ADLER32: dict[int, int] = {1: 0x6987A3C0}


class PayloadError(ValueError):
    """A payload that cannot be decoded (the message is refused, nothing else happens)."""


def content_type(version: int = DICT_VERSION) -> str:
    """The MQTT 5 Content Type of a payload deflated with dictionary ``version``."""
    return f"{CONTENT_TYPE_JSON}; enc={ENCODING_PREFIX}{version}"


@functools.cache
def dictionary(version: int) -> bytes:
    """The preset dictionary ``version`` (package data), checked against its pinned Adler-32."""
    expected = DICT_ADLER32.get(version)
    if expected is None:
        raise PayloadError(f"unknown telemetry dictionary version {version}")
    data = resources.files("device_agent").joinpath(f"telemetry_dict_{version}.json").read_bytes()
    actual = zlib.adler32(data)
    if actual != expected:
        raise RuntimeError(
            f"telemetry_dict_{version}.json has Adler-32 {actual:#010x}, not the pinned {expected:#010x}: "
            "a changed dictionary needs a new version"
        )
    return data


def dict_version_of_id(dict_id: int) -> int | None:
    """The dictionary version whose Adler-32 is ``dict_id`` (a stream's DICTID), else None."""
    for version in DICT_ADLER32:
        if zlib.adler32(dictionary(version)) == dict_id:
            return version
    return None


def encode(data: bytes, version: int = DICT_VERSION) -> bytes:
    """``data`` (compact JSON) as a zlib stream with preset dictionary ``version``."""
    comp = zlib.compressobj(LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, dictionary(version))
    return comp.compress(data) + comp.flush()


def _stream_dict_id(payload: bytes) -> int | None:
    """The DICTID of a zlib stream header with FDICT set; None for anything else."""
    if len(payload) < 6:
        return None
    cmf, flg = payload[0], payload[1]
    if cmf & 0x0F != 8 or (cmf << 8 | flg) % 31 or not flg & 0x20:
        return None
    return int.from_bytes(payload[2:6], "big")


def is_encoded(payload: bytes) -> bool:
    """Does ``payload`` look like a dictionary-deflated stream (not plain JSON)?"""
    return _stream_dict_id(payload) is not None


def _inflate(payload: bytes, version: int, limit: int) -> bytes:
    want = zlib.adler32(dictionary(version))
    got = _stream_dict_id(payload)
    if got is None:
        raise PayloadError(f"not a zlib stream with a preset dictionary ({len(payload)} bytes)")
    if got != want:
        raise PayloadError(f"stream needs dictionary {got:#010x}, not version {version}'s ({want:#010x})")
    inflater = zlib.decompressobj(15, zdict=dictionary(version))
    try:
        out = inflater.decompress(payload, limit)
    except zlib.error as exc:
        raise PayloadError(f"corrupt deflate data: {exc}") from None
    if inflater.unconsumed_tail or (not inflater.eof and len(out) >= limit):
        raise PayloadError(f"inflates to more than {limit} bytes: refused")
    if not inflater.eof:
        raise PayloadError("truncated deflate stream")
    if inflater.unused_data:
        raise PayloadError(f"{len(inflater.unused_data)} bytes after the end of the deflate stream")
    return out


def decode(payload: bytes, ctype: str | None = None, limit: int = MAX_DECODED) -> bytes:
    """The JSON bytes of a telemetry payload with MQTT 5 Content Type ``ctype`` (None: absent).

    Plain JSON passes through unchanged; raises :class:`PayloadError` for what cannot be decoded.
    """
    base, _, params = (ctype or "").partition(";")
    base = base.strip().lower()
    enc = ""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "enc":
            enc = value.strip().strip('"')
    if base not in ("", CONTENT_TYPE_JSON):
        raise PayloadError(f"unsupported content type {ctype!r}")
    if not enc:
        dict_id = _stream_dict_id(payload)
        if dict_id is None:
            return payload  # plain JSON (or not JSON: the JSON parser says so)
        version = dict_version_of_id(dict_id)
        if version is None:
            raise PayloadError(f"stream needs an unknown dictionary {dict_id:#010x}")
        return _inflate(payload, version, limit)
    if not enc.startswith(ENCODING_PREFIX) or not enc[len(ENCODING_PREFIX) :].isdigit():
        raise PayloadError(f"unsupported encoding {enc!r}")
    version = int(enc[len(ENCODING_PREFIX) :])
    if version not in DICT_ADLER32:
        raise PayloadError(f"unknown telemetry dictionary version {version} (known: {sorted(DICT_ADLER32)})")
    return _inflate(payload, version, limit)


def message_content_type(msg: object) -> str | None:
    """The Content Type property of a received paho message (None when absent)."""
    props = getattr(msg, "properties", None)
    value = getattr(props, "ContentType", None) if props is not None else None
    return value if isinstance(value, str) else None
