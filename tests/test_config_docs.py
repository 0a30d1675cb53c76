"""docs/configuration.md cannot drift from the loader: every section and key that
device_agent/config.py accepts is documented, and every documented key is accepted."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from device_agent.config import AgentConfig, config_from_dict

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def accepted() -> dict[str, set[str]]:
    """Section -> keys, from the loader's own dataclasses (what ``_build`` accepts)."""
    hints = typing.get_type_hints(AgentConfig)
    out: dict[str, set[str]] = {}
    for f in dataclasses.fields(AgentConfig):
        if f.name == "source_path":
            continue
        tp = hints[f.name]
        if typing.get_origin(tp) is list:  # [[alerts]]
            (tp,) = typing.get_args(tp)
        out[f.name] = {g.name for g in dataclasses.fields(tp)}
    return out


def documented() -> dict[str, set[str]]:
    """Section -> keys named in the first column of the doc's tables: ``section.key`` anywhere, or a
    bare ``key`` under a heading that names ``[section]`` / ``[[section]]`` (the one that has such a
    key when the heading names several, else the first)."""
    out: dict[str, set[str]] = {}
    heading_sections: list[str] = []
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            heading_sections = re.findall(r"`\[\[?([a-z_]+)\]?\]`", line)
            for s in heading_sections:
                out.setdefault(s, set())
            continue
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        for name in re.findall(r"`([a-z_.\[\]]+)`", first):
            section, dot, key = name.rpartition(".")
            if dot and section in accepted():
                out.setdefault(section, set()).add(key)
            elif not dot and heading_sections:  # `[mqtt]` and `[[alerts]]`: the one that has it
                owners = [s for s in heading_sections if name in accepted().get(s, set())]
                out.setdefault((owners or heading_sections)[0], set()).add(name)
    return out


def test_every_section_and_key_the_loader_accepts_is_documented() -> None:
    acc, doc = accepted(), documented()
    missing_sections = sorted(set(acc) - set(doc))
    assert not missing_sections, f"docs/configuration.md has no section for {missing_sections}"
    missing = {s: sorted(keys - doc[s]) for s, keys in acc.items() if keys - doc[s]}
    assert not missing, f"keys accepted by device_agent/config.py but not in docs/configuration.md: {missing}"


def test_every_documented_key_is_accepted() -> None:
    acc, doc = accepted(), documented()
    unknown = {s: sorted(keys - acc.get(s, set())) for s, keys in doc.items() if keys - acc.get(s, set())}
    assert not unknown, f"docs/configuration.md documents keys the loader refuses: {unknown}"


def test_the_checker_sees_what_the_loader_does() -> None:
    """The two readings above are the loader's: a key it lists is accepted, a made-up one refused."""
    acc = accepted()
    assert {"device", "logging", "ns", "alerts", "mqtt", "ota"} <= set(acc)
    assert "state_dir" in acc["device"] and "budget_rtf" in acc["ns"] and "file_backups" in acc["logging"]
    config_from_dict({"ns": {"budget_rtf": 0.4}, "logging": {"file_backups": 2}})
    try:
        config_from_dict({"ns": {"not_a_key": 1}})
    except ValueError as exc:
        assert "ns.not_a_key: unknown key" in str(exc)
    else:
        raise AssertionError("an unknown key was accepted")
