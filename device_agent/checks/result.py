"""The one result type of every check (doctor's checklist lines and the self-test's results)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"


@dataclass
class Check:
    """One check: ``status`` is pass | warn | fail | skip (not applicable on this hardware).

    ``detail`` is the one-line finding, ``value`` the figures behind it (the self-test reports
    them), ``fix`` what a person should do about a failure (the doctor prints it).
    """

    name: str
    status: str
    detail: str
    value: dict[str, Any] = field(default_factory=dict)
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The self-test's shape: name, status, detail, value."""
        return {"name": self.name, "status": self.status, "detail": self.detail, "value": self.value}
