"""QR codes for claim tokens (segno): PNG files for printing, text for the terminal."""

from __future__ import annotations

import io
from pathlib import Path

import segno


def write_png(payload: str, path: str | Path, scale: int = 8) -> Path:
    """Write ``payload`` as a PNG QR code (error correction M) to ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    segno.make(payload, error="m", micro=False).save(str(p), kind="png", scale=scale, border=4)
    return p


def terminal(payload: str) -> str:
    """The QR code drawn with text blocks, scannable from a terminal."""
    buf = io.StringIO()
    segno.make(payload, error="m", micro=False).terminal(out=buf, compact=True)
    return buf.getvalue()
