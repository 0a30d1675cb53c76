"""The MQTT contract is defined once, in device_agent/protocol.py.

- No other product module builds a topic string: an AST scan of every string constant and f-string
  (docstrings excepted) for the topic roots ``dev/``, ``claim/`` and ``$share/``.
- docs/protocol.md's topic table is ``protocol.TOPICS``, row for row.
- The builders produce the documented shapes, and the error codes keep their wire strings.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from device_agent import protocol
from device_agent.protocol import ErrorCode, Leaf

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("device_agent", "provisioning", "fleet", "ota", "hal", "firmware_hooks")
OWNER = ROOT / "device_agent" / "protocol.py"
# a topic root at the start of a word (``/dev/video0``, ``~/.dev/`` are file paths, not topics)
TOPIC_ROOT = re.compile(r"(?<![\w/.~-])(?:dev|claim)/|\$share/")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the Constant nodes that are docstrings (module, class, function)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                out.add(id(body[0].value))
    return out


def topic_strings(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant or f-string in ``source`` that spells a topic root."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    inside_fstring: set[int] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                inside_fstring.add(id(value))
                parts.append(value.value if isinstance(value, ast.Constant) else "{}")
            text = "".join(str(p) for p in parts)
            if TOPIC_ROOT.search(text):
                found.append((node.lineno, text))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
            and id(node) not in inside_fstring
            and TOPIC_ROOT.search(node.value)
        ):
            found.append((node.lineno, node.value))
    return found


def product_files() -> list[Path]:
    return sorted(p for pkg in PRODUCT if (ROOT / pkg).is_dir() for p in (ROOT / pkg).rglob("*.py"))


def test_the_scan_sees_topics_it_must_refuse() -> None:
    """The scanner itself: hand-built topics in every form are found, file paths and prose are not."""
    src = '''
"""dev/{id}/status in a docstring is documentation."""
a = f"dev/{device}/cmd/{name}"
b = "claim/ca"
c = f"$share/{group}/dev/+/telemetry"
d = "dev/+/" + "status"
e = "/dev/video0"
f = "see docs/dev/notes"
'''
    lines = [line for line, _ in topic_strings(src)]
    assert lines == [3, 5, 4, 6]


def test_only_the_protocol_module_builds_topics() -> None:
    offenders = []
    for path in product_files():
        if path == OWNER:
            continue
        for line, text in topic_strings(path.read_text()):
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not offenders, "topics built outside device_agent/protocol.py:\n" + "\n".join(offenders)


def _doc_topic_rows() -> list[tuple[str, str, bool]]:
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("## Topics", 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        rows.append((cells[0].strip("`"), cells[1], cells[2] == "yes"))
    return rows


def test_doc_topic_table_is_the_protocol_table() -> None:
    assert _doc_topic_rows() == list(protocol.TOPICS)


@pytest.mark.parametrize("pattern, _direction, _retained", protocol.TOPICS)
def test_every_documented_topic_has_a_builder(pattern: str, _direction: str, _retained: bool) -> None:
    built = {
        "dev/{id}/status": protocol.status("{id}"),
        "dev/{id}/telemetry": protocol.telemetry("{id}"),
        "dev/{id}/events": protocol.events("{id}"),
        "dev/{id}/cmd/{name}": protocol.command("{id}", "{name}"),
        "dev/{id}/res": protocol.result("{id}"),
        "dev/{id}/logs/{request}": protocol.logs("{id}", "{request}"),
        "dev/{id}/rtc/{session}": protocol.rtc("{id}", "{session}"),
        "dev/{id}/diag/ping/{token}": protocol.device_topic("{id}", Leaf.diag_ping("{token}")),
        "dev/{id}/renew/req": protocol.renew_request("{id}"),
        "dev/{id}/renew/res": protocol.renew_result("{id}"),
        "claim/{token}/req": protocol.claim_request("{token}"),
        "claim/{token}/res": protocol.claim_result("{token}"),
        "claim/ca": protocol.CLAIM_CA,
    }
    assert built[pattern] == pattern


def test_filters_and_shared_subscriptions() -> None:
    assert protocol.ALL_STATUS == "dev/+/status"
    assert (
        protocol.shared(protocol.FLEET_SHARE_GROUP, protocol.ALL_TELEMETRY) == "$share/fleet/dev/+/telemetry"
    )
    assert protocol.shared("", protocol.ALL_EVENTS) == "dev/+/events"
    assert (
        protocol.shared(protocol.PROVISIONING_SHARE_GROUP, protocol.ALL_CLAIM_REQUESTS)
        == "$share/fleet-provisioning/claim/+/req"
    )
    assert protocol.strip_share("$share/fleet/dev/+/events") == "dev/+/events"
    assert protocol.parse_renew_request("dev/d1/renew/req") == "d1"
    assert protocol.parse_renew_request("dev/d1/renew/res") is None
    assert protocol.parse_claim_topic("claim/t1/req") == ("t1", "req")
    assert protocol.is_command_topic("dev/d1/cmd/ping") and not protocol.is_command_topic("dev/d1/res")
    with pytest.raises(protocol.TopicError):
        protocol.shared("a/b", protocol.ALL_EVENTS)


def test_error_codes_keep_their_wire_strings() -> None:
    assert (
        json.dumps(protocol.error_result(ErrorCode.BAD_JSON, "x"))
        == '{"ok": false, "error": {"code": "bad_json", "message": "x"}}'
    )
    assert ErrorCode.RETAINED_REFUSED == "retained_refused" and ErrorCode.INTERNAL_ERROR == "internal_error"
