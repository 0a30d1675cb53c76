"""Structured diagnostic results: one status per check and a human summary (the ``Check`` type is
the checks library's, ``device_agent.checks``)."""

from __future__ import annotations

from typing import Any

from device_agent.checks.result import FAIL, PASS, SKIP, WARN, Check

__all__ = ["FAIL", "PASS", "SKIP", "WARN", "Check", "format_report", "report"]

_RANK = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}


def report(action: str, checks: list[Check]) -> dict[str, Any]:
    """The command result: overall status (worst check), per-check results and a summary line."""
    overall = max((c.status for c in checks), key=_RANK.__getitem__, default=SKIP)
    if overall == SKIP:
        overall = PASS
    counts = {s: sum(c.status == s for c in checks) for s in (PASS, WARN, FAIL, SKIP)}
    bad = [f"{c.name}: {c.detail}" for c in checks if c.status in (WARN, FAIL)]
    summary = (
        f"{action}: {overall.upper()} ({counts[PASS]} pass, {counts[WARN]} warn, "
        f"{counts[FAIL]} fail, {counts[SKIP]} skipped)"
    )
    if bad:
        summary += " -- " + "; ".join(bad)
    return {
        "action": action,
        "status": overall,
        "counts": counts,
        "checks": [c.to_dict() for c in checks],
        "summary": summary,
    }


def format_report(result: dict[str, Any]) -> str:
    """A table of checks followed by the summary line, for terminals."""
    marks = {PASS: "PASS", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}
    lines = [
        f"{marks.get(c['status'], c['status']):4}  {c['name']:<22} {c['detail']}"
        for c in result.get("checks", [])
    ]
    lines.append(result.get("summary", ""))
    return "\n".join(lines)
