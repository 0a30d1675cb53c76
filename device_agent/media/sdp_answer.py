"""Edits to the answer aiortc writes, made on its SDP text before ``setLocalDescription``.

aiortc answers Opus with its own codec entry, which has no parameters, so the answer carries no
``a=fmtp`` for Opus even when the offer had ``useinbandfec=1``. ``with_opus_fec`` adds
``useinbandfec=1`` (RFC 7587: this side decodes in-band FEC, so the browser may send it on the
talkback stream) and keeps any parameters already there. Our own stream's FEC is the encoder's
(``audio_pipeline.OPUS_FEC_LOSS_PCT``); the browser's offer says it decodes it.
"""

from __future__ import annotations


def with_opus_fec(answer_sdp: str) -> str:
    """``answer_sdp`` with ``useinbandfec=1`` on every Opus payload type of its audio sections."""
    newline = "\r\n" if "\r\n" in answer_sdp else "\n"
    sections: list[list[str]] = [[]]
    for line in answer_sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    out: list[str] = []
    for section in sections:
        out += _audio_section(section) if section and section[0].startswith("m=audio") else section
    return newline.join(out) + (newline if answer_sdp.endswith("\n") else "")


def _audio_section(lines: list[str]) -> list[str]:
    opus = {
        line[9:].split(" ", 1)[0]
        for line in lines
        if line.startswith("a=rtpmap:") and " " in line and line.split(" ", 1)[1].lower().startswith("opus/")
    }
    with_fmtp = {line[7:].split(" ", 1)[0] for line in lines if line.startswith("a=fmtp:")}
    out: list[str] = []
    for line in lines:
        if line.startswith("a=fmtp:") and " " in line and line[7:].split(" ", 1)[0] in opus:
            pt, params = line[7:].split(" ", 1)
            if "useinbandfec" not in {p.split("=", 1)[0].strip().lower() for p in params.split(";")}:
                line = f"a=fmtp:{pt} {params};useinbandfec=1"
        out.append(line)
        if line.startswith("a=rtpmap:") and " " in line:
            pt = line[9:].split(" ", 1)[0]
            if pt in opus and pt not in with_fmtp:
                out.append(f"a=fmtp:{pt} useinbandfec=1")
    return out
