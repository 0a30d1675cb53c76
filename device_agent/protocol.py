"""The MQTT contract between devices and the fleet, defined once (standard library only).

Every topic either side publishes or subscribes is built here; docs/protocol.md's topic table is
checked against ``TOPICS`` by the test suite, and no other product module spells a topic
(``tests/test_protocol.py``). Device-side code that publishes through the fleet link uses the
*leaf* builders (``Leaf``, relative to ``dev/{id}/``); the fleet side and the provisioning flow use
the absolute ones. Builders format, they do not validate: a device argument may be ``+`` to build a
filter over every device, and :func:`check_segment` is there for callers that take ids from users.

Layout::

    dev/{id}/status                 device -> fleet, retained
    dev/{id}/telemetry              device -> fleet (spooled)
    dev/{id}/events                 device -> fleet (spooled)
    dev/{id}/cmd/{name}             fleet -> device (response topic + correlation data)
    dev/{id}/res                    device -> fleet (command results)
    dev/{id}/logs/{request}         device -> fleet (log pull and snapshot chunks)
    dev/{id}/rtc/{session}          both (WebRTC signaling for remote viewers)
    dev/{id}/diag/ping/{token}      device -> device (broker round trips)
    dev/{id}/renew/req|res          certificate renewal
    claim/{token id}/req|res        provisioning by claim
    claim/ca                        the fleet CA, retained
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

SCHEMA_VERSION = 1

DEVICE_ROOT = "dev"
CLAIM_ROOT = "claim"
SHARE_ROOT = "$share"
ANY = "+"  # one level, any value: ``status(ANY)`` is the filter over every device

# shared-subscription groups: several fleet workers split one stream
FLEET_SHARE_GROUP = "fleet"
PROVISIONING_SHARE_GROUP = "fleet-provisioning"

WILDCARDS = frozenset("+#")


class TopicError(ValueError):
    """A topic or topic segment that is not part of the contract."""


def check_segment(value: str, what: str = "segment") -> str:
    """``value`` as one topic level: non-empty, no ``/``, no wildcard, no NUL, not ``$``-prefixed."""
    if not isinstance(value, str) or not value:
        raise TopicError(f"{what} must be a non-empty string")
    if "/" in value or WILDCARDS & set(value) or "\x00" in value or value.startswith("$"):
        raise TopicError(f"{what} {value!r} may not contain '/', '+', '#' or NUL, nor start with '$'")
    if len(value.encode("utf-8", "surrogatepass")) > 256:
        raise TopicError(f"{what} is longer than 256 bytes")
    return value


def has_wildcard(topic: str) -> bool:
    """Does ``topic`` contain an MQTT wildcard (``+`` or ``#``)?"""
    return bool(WILDCARDS & set(topic))


# ---------------------------------------------------------------- per device, relative leaves


class Leaf:
    """Topic leaves under ``dev/{id}/`` (what the device's fleet link publishes and subscribes)."""

    STATUS = "status"
    TELEMETRY = "telemetry"
    EVENTS = "events"
    RESULT = "res"
    CMD = "cmd"
    LOGS = "logs"
    RTC = "rtc"
    DIAG_PING = "diag/ping"
    RENEW_REQUEST = "renew/req"
    RENEW_RESULT = "renew/res"
    CMD_FILTER = f"{CMD}/+"
    RTC_FILTER = f"{RTC}/+"
    LOGS_FILTER = f"{LOGS}/+"
    DIAG_PING_FILTER = f"{DIAG_PING}/+"

    @staticmethod
    def cmd(name: str) -> str:
        return f"{Leaf.CMD}/{name}"

    @staticmethod
    def logs(request: str) -> str:
        return f"{Leaf.LOGS}/{request}"

    @staticmethod
    def rtc(session: str) -> str:
        return f"{Leaf.RTC}/{session}"

    @staticmethod
    def diag_ping(token: str) -> str:
        return f"{Leaf.DIAG_PING}/{token}"


# ---------------------------------------------------------------- absolute topics


def device_base(device_id: str) -> str:
    """``dev/{id}``: the root of one device's subtree."""
    return f"{DEVICE_ROOT}/{device_id}"


def device_topic(device_id: str, leaf: str) -> str:
    """``dev/{id}/{leaf}`` for a leaf built with ``Leaf``."""
    return f"{device_base(device_id)}/{leaf}"


def status(device_id: str) -> str:
    return device_topic(device_id, Leaf.STATUS)


def telemetry(device_id: str) -> str:
    return device_topic(device_id, Leaf.TELEMETRY)


def events(device_id: str) -> str:
    return device_topic(device_id, Leaf.EVENTS)


def command(device_id: str, name: str) -> str:
    return device_topic(device_id, Leaf.cmd(name))


def command_filter(device_id: str) -> str:
    return device_topic(device_id, Leaf.CMD_FILTER)


def result(device_id: str) -> str:
    return device_topic(device_id, Leaf.RESULT)


def logs(device_id: str, request: str) -> str:
    return device_topic(device_id, Leaf.logs(request))


def rtc(device_id: str, session: str) -> str:
    return device_topic(device_id, Leaf.rtc(session))


def renew_request(device_id: str) -> str:
    return device_topic(device_id, Leaf.RENEW_REQUEST)


def renew_result(device_id: str) -> str:
    return device_topic(device_id, Leaf.RENEW_RESULT)


def claim_request(token_id: str) -> str:
    return f"{CLAIM_ROOT}/{token_id}/req"


def claim_result(token_id: str) -> str:
    return f"{CLAIM_ROOT}/{token_id}/res"


CLAIM_CA = f"{CLAIM_ROOT}/ca"

# fleet-side filters over every device
ALL_STATUS = status(ANY)
ALL_TELEMETRY = telemetry(ANY)
ALL_EVENTS = events(ANY)
ALL_RENEW_REQUESTS = renew_request(ANY)
ALL_CLAIM_REQUESTS = claim_request(ANY)


def shared(group: str, topic_filter: str) -> str:
    """``$share/{group}/{filter}``, or the plain filter when ``group`` is empty."""
    return f"{SHARE_ROOT}/{check_segment(group, 'share group')}/{topic_filter}" if group else topic_filter


def is_shared(topic_filter: str) -> bool:
    """Is ``topic_filter`` a shared subscription (``$share/{group}/...``)?"""
    return topic_filter.startswith(SHARE_ROOT + "/")


def strip_share(topic_filter: str) -> str:
    """The filter a shared subscription matches: ``$share/g/dev/+/x`` -> ``dev/+/x``."""
    return topic_filter.split("/", 2)[2] if is_shared(topic_filter) else topic_filter


def acl_device_pattern(leaf: str, user: str = "%u") -> str:
    """A mosquitto ACL ``pattern`` for one device's leaf (``%u``: the user name = certificate CN)."""
    return device_topic(user, leaf)


@dataclass(frozen=True)
class DeviceTopic:
    """A topic of one device's subtree, split: ``dev/{device_id}/{leaf}``."""

    device_id: str
    leaf: str


def parse_device_topic(topic: str) -> DeviceTopic | None:
    """``DeviceTopic`` for ``dev/{id}/...``; None for anything else."""
    parts = topic.split("/", 2)
    if len(parts) < 3 or parts[0] != DEVICE_ROOT or not parts[1] or not parts[2]:
        return None
    return DeviceTopic(parts[1], parts[2])


def device_of(topic: str) -> str:
    """The device id of ``dev/{id}/...`` (the second level; "" when there is none)."""
    parts = topic.split("/", 2)
    return parts[1] if len(parts) > 1 else ""


def is_command_topic(topic: str) -> bool:
    """True for ``dev/{device}/cmd/{name}`` (and anything below ``cmd/``)."""
    parts = topic.split("/")
    return len(parts) >= 4 and parts[0] == DEVICE_ROOT and parts[2] == Leaf.CMD


def parse_claim_topic(topic: str) -> tuple[str, str] | None:
    """``(token id, "req"|"res")`` for ``claim/{id}/req|res``; None for anything else."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != CLAIM_ROOT or parts[2] not in ("req", "res") or not parts[1]:
        return None
    return parts[1], parts[2]


def parse_renew_request(topic: str) -> str | None:
    """The device id of ``dev/{id}/renew/req``; None for anything else."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == DEVICE_ROOT and "/".join(parts[2:]) == Leaf.RENEW_REQUEST:
        return parts[1]
    return None


# The topic table of docs/protocol.md, as (pattern, direction, retained): checked by the test suite.
TOPICS: tuple[tuple[str, str, bool], ...] = (
    ("dev/{id}/status", "device → fleet", True),
    ("dev/{id}/telemetry", "device → fleet", False),
    ("dev/{id}/events", "device → fleet", False),
    ("dev/{id}/cmd/{name}", "fleet → device", False),
    ("dev/{id}/res", "device → fleet", False),
    ("dev/{id}/logs/{request}", "device → fleet", False),
    ("dev/{id}/rtc/{session}", "both", False),
    ("dev/{id}/diag/ping/{token}", "device → device", False),
    ("dev/{id}/renew/req", "device → fleet", False),
    ("dev/{id}/renew/res", "fleet → device", False),
    ("claim/{token}/req", "device → fleet", False),
    ("claim/{token}/res", "fleet → device", False),
    ("claim/ca", "fleet → device", True),
)


# ---------------------------------------------------------------- payload envelopes


class Status(TypedDict):
    """``dev/{id}/status`` (retained); ``reason`` is ``lost`` (the will) or ``stopped``."""

    online: bool
    boot: str
    ts: float
    version: str
    slot: str
    hardware: str
    group: str
    reason: NotRequired[str]


class Envelope(TypedDict):
    """Every telemetry sample and event: the boot id and the per-boot sequence number."""

    boot: str
    seq: int


class TelemetrySample(Envelope):
    ts: float
    health: dict[str, Any]


class ErrorBody(TypedDict):
    code: str
    message: str


class CommandOk(TypedDict):
    ok: Literal[True]
    result: Any


class CommandErr(TypedDict):
    ok: Literal[False]
    error: ErrorBody


CommandResult = CommandOk | CommandErr


class ErrorCode(enum.StrEnum):
    """Command error codes (``{"ok": false, "error": {"code", "message"}}``); the values are the wire
    strings."""

    # the device's intake (docs/protocol.md, Commands)
    PAYLOAD_TOO_LARGE = "payload_too_large"
    BAD_JSON = "bad_json"
    BAD_PARAMS = "bad_params"
    RETAINED_REFUSED = "retained_refused"
    DUPLICATE = "duplicate"
    UNKNOWN_COMMAND = "unknown_command"
    INTERNAL_ERROR = "internal_error"
    # handlers
    INVALID_CONFIG = "invalid_config"
    CONFIG_UNREADABLE = "config_unreadable"
    CONFIRMATION_REQUIRED = "confirmation_required"
    NOT_PERSISTENT = "not_persistent"
    REBOOT_FAILED = "reboot_failed"
    RENEWAL_FAILED = "renewal_failed"
    BUSY = "busy"
    CONFLICT = "conflict"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    CAMERA_UNAVAILABLE = "camera_unavailable"
    SESSION_FAILED = "session_failed"
    BAD_REQUEST = "bad_request"
    NO_PREVIOUS_SLOT = "no_previous_slot"
    # the fleet side (FleetClient)
    TIMEOUT = "timeout"
    OFFLINE = "offline"
    BAD_ANSWER = "bad_answer"


def error_result(code: str, message: str) -> CommandErr:
    """``{"ok": false, "error": {"code", "message"}}``."""
    return {"ok": False, "error": {"code": str(code), "message": message}}


def ok_result(value: Any) -> CommandOk:
    """``{"ok": true, "result": value}``."""
    return {"ok": True, "result": value}
