"""Remote ICE candidates, with the mDNS ones kept off the answer's path.

A browser page without camera/microphone permission (any remote viewer) hides its host addresses
behind mDNS names (``<uuid>.local``). aioice resolves each one inside ``add_remote_candidate``
(a query with a 1.0 s timeout), and aiortc awaits that inside ``setRemoteDescription``, so an offer
carrying such names is answered a second late. So the offer's ``.local`` candidates are taken out
before aiortc sees it (``split_mdns_candidates``) and handed to the ICE transport in the background
(``RemoteCandidates``), as are trickled ones. Meanwhile the browser's own checks against our host
candidates (in the answer) become peer-reflexive candidates on our side, which is what a
connection on loopback or a LAN normally ends up using. End-of-candidates is applied only after
every candidate still being resolved: aiortc ignores candidates that arrive after it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aioice.mdns import is_mdns_hostname
from aiortc import RTCIceCandidate, RTCPeerConnection
from aiortc.sdp import candidate_from_sdp

log = logging.getLogger(__name__)

END_OF_CANDIDATES = "a=end-of-candidates"


def is_mdns_candidate(candidate: RTCIceCandidate) -> bool:
    """True for a candidate whose address is an mDNS name (aioice would resolve it first)."""
    return is_mdns_hostname(candidate.ip)


@dataclass
class SplitOffer:
    """An offer without its mDNS candidates, and what was taken out."""

    sdp: str
    deferred: list[RTCIceCandidate] = field(default_factory=list)
    ended: bool = False  # the offer carried a=end-of-candidates (taken out too when anything was deferred)


def split_mdns_candidates(offer_sdp: str) -> SplitOffer:
    """Take the ``.local`` candidate lines out of ``offer_sdp`` (already checked by ``check_offer``).

    When any were taken out, ``a=end-of-candidates`` lines are taken out as well (``ended`` says
    whether there were any), so the caller can apply it after the deferred candidates.
    """
    lines = offer_sdp.splitlines(keepends=True)
    keep: list[str] = []
    found: list[tuple[int, RTCIceCandidate]] = []  # (media section index, candidate)
    mids: dict[int, str] = {}
    section = -1
    ended = False
    for line in lines:
        text = line.strip()
        if text.startswith("m="):
            section += 1
        elif text.startswith("a=mid:") and section >= 0:
            mids[section] = text[6:]
        elif text == END_OF_CANDIDATES:
            ended = True
        elif text.startswith("a=candidate:") and section >= 0:
            try:
                candidate = candidate_from_sdp(text.split(":", 1)[1])
            except (ValueError, IndexError, AssertionError):
                candidate = None  # not ours to judge: aiortc sees it as it was
            if candidate is not None and is_mdns_candidate(candidate):
                found.append((section, candidate))
                continue
        keep.append(line)
    if not found:
        return SplitOffer(sdp=offer_sdp, ended=ended)
    for index, candidate in found:
        candidate.sdpMLineIndex = index
        candidate.sdpMid = mids.get(index)
    sdp = "".join(line for line in keep if line.strip() != END_OF_CANDIDATES)
    return SplitOffer(sdp=sdp, deferred=[c for _, c in found], ended=ended)


class RemoteCandidates:
    """One peer's remote candidates: plain ones applied at once, mDNS ones resolved in the background.

    ``close()`` cancels whatever is still resolving; the session calls it before closing the peer.
    """

    def __init__(self, pc: RTCPeerConnection, name: str = "") -> None:
        self.pc = pc
        self.name = name
        self._pending: set[asyncio.Task[None]] = set()
        self._end: asyncio.Task[None] | None = None
        self.deferred = 0  # mDNS candidates handed over in the background

    async def add(self, candidate: RTCIceCandidate) -> None:
        """Apply ``candidate``; an mDNS one is resolved in the background and this returns at once."""
        if not is_mdns_candidate(candidate):
            await self.pc.addIceCandidate(candidate)
            return
        self.deferred += 1
        task = asyncio.create_task(self._apply(candidate), name=f"mdns-candidate-{self.name}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def end(self) -> None:
        """End-of-candidates, after every candidate still being resolved."""
        if not self._pending:
            await self.pc.addIceCandidate(None)
        elif self._end is None:
            self._end = asyncio.create_task(
                self._end_after(set(self._pending)), name=f"end-of-candidates-{self.name}"
            )

    async def _apply(self, candidate: RTCIceCandidate) -> None:
        try:
            await self.pc.addIceCandidate(candidate)
        except Exception as exc:  # the peer closed under us: nothing left to tell
            log.info(
                "viewer session %s: mDNS candidate %s not applied (%s: %s)",
                self.name,
                candidate.ip,
                type(exc).__name__,
                exc,
                extra={"session": self.name},
            )

    async def _end_after(self, pending: set[asyncio.Task[None]]) -> None:
        await asyncio.gather(*pending, return_exceptions=True)
        try:
            await self.pc.addIceCandidate(None)
        except Exception as exc:
            log.info(
                "viewer session %s: end-of-candidates not applied (%s: %s)",
                self.name,
                type(exc).__name__,
                exc,
                extra={"session": self.name},
            )

    async def close(self) -> None:
        """Cancel every background step and wait until they have finished."""
        tasks = [*self._pending, *([self._end] if self._end is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pending.clear()
        self._end = None
