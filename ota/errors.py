"""The one error type of the OTA path: a machine-readable code and a reason for people."""

from __future__ import annotations


class OtaError(Exception):
    """An update refused or failed. ``code`` is stable (``bad_signature``, ``busy``...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
