"""The ``media`` section of the health sample, defined once.

``MEDIA`` is the contract the fleet, the alert rules and docs/protocol.md rely on. Both producers
build the section through :func:`media_section`: the media component (``component.py``) from its
pipelines and viewer sessions, and the fleet simulator (``fleet/simulate.py``) from simulated raw
figures, its viewers' figures coming from real ``ViewerQoe`` objects fed simulated receiver
reports. :func:`media_section` fills every declared key (``None`` when a producer has no figure)
and keeps anything else it is given; :func:`problems` lists what differs from the contract, and
``tests/test_health_schema.py`` fails when a key exists in one producer and not in the other.

A ``Section`` is *closed* (exactly these keys) or open (at least these: backend-specific detail
such as the camera's or the rate controller's own counters may follow).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from device_agent.media.capture_clock import SOURCE_SYNC_KEYS
from device_agent.media.qoe import ViewerQoe


@dataclass(frozen=True)
class Section:
    keys: dict[str, Node]
    closed: bool = True


@dataclass(frozen=True)
class ListOf:
    item: Section


@dataclass(frozen=True)
class Opaque:
    """Any value (a backend's own sub-object); only its presence is part of the contract."""

    note: str = field(default="")


Node = Section | ListOf | Opaque | None  # None: a scalar leaf (number, string, bool or null)


def _leaves(*names: str) -> dict[str, Node]:
    return {name: None for name in names}


QOE_KEYS = tuple(ViewerQoe().figures())  # the receiver-report figures of one session (qoe.py)

SESSION = Section(
    {
        **_leaves(
            "id",
            "kind",
            "state",
            "age_s",
            "connect_ms",
            "pli",
            "fir",
            "nack",
            "packets",
            "bytes",
            "first_keyframe_ms",
            "rtt_ms",
            "jitter",
            "packets_lost",
            "bitrate_bps",
            "fps",
        ),
        "qoe": Section(_leaves(*QOE_KEYS)),
        "source_sync": Section(_leaves(*SOURCE_SYNC_KEYS)),
    },
    closed=False,
)  # the rate controller adds its own figures (viewer_control.py)

MEDIA = Section(
    {
        "encoder": Section(_leaves("backend", "reason")),
        "video": Section(
            {
                **_leaves("fps", "frame_interval_jitter_ms", "encode_ms", "camera_errors", "last_error"),
                "camera": Opaque("the camera backend's counters"),
                "encoder": Opaque("the encoder's counters"),
                "capture_to_packet": Section(_leaves("p50_ms", "p95_ms")),
            },
            closed=False,
        ),
        "fanout": Section(
            _leaves(
                "viewers",
                "packets",
                "idrs_forced",
                "target_bitrate",
                "output_fps",
                "output_interval_jitter_ms",
                "capture_to_output_p50_ms",
                "capture_to_output_p95_ms",
            ),
            closed=False,
        ),  # the encoder output's own QoS: source_qos.py
        "audio": Section(
            {
                "source": Section(_leaves("backend", "state", "xruns", "level_rms_dbfs"), closed=False),
                **_leaves("level_dbfs", "chunks", "packets", "viewers", "stage_errors"),
                "stage": Section(_leaves("enabled", "fell_back", "rtf"), closed=False),
            }
        ),
        "talkback": Opaque("null without a speaker"),
        "viewers": Section(
            {
                **_leaves("active", "max", "failed_connects_10min"),
                "ended": Opaque("count by reason"),
                "sessions": ListOf(SESSION),
            }
        ),
        "web": Opaque("null when the web server is off"),
    }
)


def conform(value: Any, node: Node) -> Any:
    """``value`` with every key ``node`` declares present (None when missing); other keys kept."""
    if isinstance(node, Section):
        if not isinstance(value, dict):
            return value if value is None else {}
        out = {key: conform(value.get(key), sub) for key, sub in node.keys.items()}
        out.update({k: v for k, v in value.items() if k not in node.keys})
        return out
    if isinstance(node, ListOf):
        return [conform(v, node.item) for v in value] if isinstance(value, list) else []
    return value


def media_section(raw: dict[str, Any]) -> dict[str, Any]:
    """The ``media`` health section from a producer's raw parts (keys of ``MEDIA``)."""
    return conform(raw, MEDIA)


def problems(value: Any, node: Node = MEDIA, path: str = "media") -> list[str]:
    """Where ``value`` departs from the contract: missing keys, undeclared keys in closed sections."""
    out: list[str] = []
    if isinstance(node, Section):
        if value is None:
            return out
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        for key, sub in node.keys.items():
            if key not in value:
                out.append(f"{path}.{key}: missing")
            else:
                out.extend(problems(value[key], sub, f"{path}.{key}"))
        if node.closed:
            out.extend(f"{path}.{key}: not in the schema" for key in value if key not in node.keys)
    elif isinstance(node, ListOf):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        for i, item in enumerate(value):
            out.extend(problems(item, node.item, f"{path}.{i}"))
    return out


def key_paths(value: Any, node: Node = MEDIA, path: str = "media") -> set[str]:
    """The declared key paths ``value`` has (list items as ``*``), for comparing two producers."""
    out: set[str] = set()
    if isinstance(node, Section) and isinstance(value, dict):
        for key in value:
            if key in node.keys:
                out.add(f"{path}.{key}")
                out |= key_paths(value[key], node.keys[key], f"{path}.{key}")
            elif node.closed:
                out.add(f"{path}.{key}")
    elif isinstance(node, ListOf) and isinstance(value, list):
        for item in value:
            out |= key_paths(item, node.item, f"{path}.*")
    return out
