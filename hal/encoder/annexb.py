"""Annex-B H.264 helpers: split NAL units and make sure every IDR carries SPS and PPS in-band."""

from __future__ import annotations

NAL_IDR, NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD = 5, 6, 7, 8, 9
START_CODE = b"\x00\x00\x00\x01"


def split_nals(data: bytes) -> list[bytes]:
    """NAL unit payloads (without start codes) of an Annex-B byte string."""
    nals: list[bytes] = []
    i, n = 0, len(data)
    start = -1
    while i + 2 < n:
        if data[i] == 0 and data[i + 1] == 0 and data[i + 2] == 1:
            if start >= 0:
                end = i - 1 if i > 0 and data[i - 1] == 0 else i  # a 4-byte start code owns its zero
                nals.append(data[start:end])
            i += 3
            start = i
        else:
            i += 1
    if start >= 0:
        nals.append(data[start:])
    return [nal for nal in nals if nal]


def nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F


def join_nals(nals: list[bytes]) -> bytes:
    return b"".join(START_CODE + nal for nal in nals)


class ParameterSetKeeper:
    """Remembers the latest SPS/PPS and puts them in front of any IDR that lacks them.

    Hardware encoders differ: some repeat parameter sets on every IDR, some only emit them once
    (or out of band). A viewer joining mid-stream needs them with the IDR it starts from.
    """

    def __init__(self) -> None:
        self.sps: bytes | None = None
        self.pps: bytes | None = None

    def fix(self, data: bytes) -> tuple[bytes, bool]:
        """Return ``(access unit, is_idr)`` with SPS and PPS before the IDR slice when needed."""
        nals = split_nals(data)
        types = [nal_type(n) for n in nals]
        for nal, kind in zip(nals, types, strict=True):
            if kind == NAL_SPS:
                self.sps = nal
            elif kind == NAL_PPS:
                self.pps = nal
        is_idr = NAL_IDR in types
        if not is_idr or (NAL_SPS in types and NAL_PPS in types):
            return data, is_idr
        if self.sps is None or self.pps is None:
            return data, is_idr  # nothing known yet; the decoder will ask again (PLI)
        idr_at = types.index(NAL_IDR)
        head = [n for n, t in zip(nals[:idr_at], types[:idr_at], strict=True) if t not in (NAL_SPS, NAL_PPS)]
        return join_nals(head + [self.sps, self.pps] + nals[idr_at:]), True
