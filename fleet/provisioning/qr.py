"""QR codes for claim tokens (segno): PNG files for printing, text for the terminal."""

from __future__ import annotations

import io
from pathlib import Path

import segno

from ota.atomic import write_atomic


def write_png(payload: str, path: str | Path, scale: int = 8) -> Path:
    """Write ``payload`` as a PNG QR code (error correction M) to ``path``, mode 0600.

    The code holds the claim secret: it is rendered in memory and written owner-only from the start.
    """
    buf = io.BytesIO()
    segno.make(payload, error="m", micro=False).save(buf, kind="png", scale=scale, border=4)
    return write_atomic(path, buf.getvalue(), mode=0o600)


def terminal(payload: str) -> str:
    """The QR code drawn with text blocks, scannable from a terminal."""
    buf = io.StringIO()
    segno.make(payload, error="m", micro=False).terminal(out=buf, compact=True)
    return buf.getvalue()
