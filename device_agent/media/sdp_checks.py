"""Checks on the SDP a viewer sends (WHEP offers, trickled candidates) before aiortc parses it.

aiortc's SDP parser trusts its input: a short candidate line fails an ``assert``, an ``a=fmtp``
for an unknown payload type raises ``StopIteration``, an offer whose BUNDLE group names a missing
``a=mid`` leaves transceivers without a transport (``createAnswer`` and even ``close`` then raise
``AttributeError``). These checks judge the structure first and raise :class:`SdpError` naming the
line and the problem, so a bad offer is a ``400`` with that reason and aiortc only ever sees SDP
it can digest.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from aiortc.sdp import FMTP_INT_PARAMETERS

MAX_MEDIA_SECTIONS = 16
MEDIA_KINDS = ("audio", "video", "application")
SETUP_VALUES = ("actpass", "active", "passive")
CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")
CANDIDATE_TRANSPORTS = ("udp", "tcp")
TCP_TYPES = ("active", "passive", "so")
EXCERPT_CHARS = 60

_NUMBER = re.compile(r"[0-9]{1,10}", re.ASCII)
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+", re.ASCII)
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]{1,64}", re.ASCII)
_MDNS_NAME = re.compile(r"[A-Za-z0-9-]{1,63}\.local", re.ASCII)
_EXTMAP_ID = re.compile(r"[0-9]{1,3}(/[a-z]+)?", re.ASCII)
_LINE = re.compile(r"[a-z]=", re.ASCII)
_MEDIA_LINE = re.compile(r"m=([^ ]+) ([0-9]{1,5}) ([A-Z/]+) (.+)", re.ASCII)  # aiortc's own m= pattern
_CONNECTION = re.compile(r"IN IP[46] [^ ]+", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]")
_NEEDS_VALUE = {
    "mid",
    "group",
    "setup",
    "fingerprint",
    "candidate",
    "extmap",
    "rtpmap",
    "fmtp",
    "rtcp-fb",
    "rtcp",
    "ssrc",
    "ssrc-group",
    "sctp-port",
    "max-message-size",
    "sctpmap",
    "ice-ufrag",
    "ice-pwd",
    "msid-semantic",
}  # attributes aiortc parses a value of
_RTCP_RESERVED = range(72, 77)  # RTP payload types that collide with RTCP packet types (RFC 5761)


class SdpError(ValueError):
    """The SDP is malformed; the message names the line and the problem in one line."""


def excerpt(text: str) -> str:
    """``text`` quoted and cut short enough for a one-line error message."""
    return repr(text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "...")


def _number(text: str, what: str, low: int, high: int) -> int:
    if not _NUMBER.fullmatch(text) or not low <= int(text) <= high:
        raise SdpError(f"{what} {excerpt(text)} is not a number from {low} to {high}")
    return int(text)


def _address(text: str, what: str) -> None:
    if _MDNS_NAME.fullmatch(text):
        return
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise SdpError(f"{what} {excerpt(text)} is not an IP address or an mDNS .local name") from None


def check_candidate(value: str) -> None:
    """Check a candidate attribute's value (what follows ``a=candidate:``, RFC 8839 section 5.1).

    ``foundation component transport priority address port typ type`` and then name/value pairs,
    of which ``raddr``, ``rport`` and ``tcptype`` are checked.
    """
    bits = value.split()
    if len(bits) < 8:
        raise SdpError(
            f"candidate {excerpt(value)} has {len(bits)} fields; it needs at least 8 "
            "(foundation component transport priority address port typ type)"
        )
    foundation, component, transport, priority, address, port, typ, kind = bits[:8]
    if not _ICE_CHARS.fullmatch(foundation) or len(foundation) > 32:
        raise SdpError(f"candidate foundation {excerpt(foundation)} is not 1 to 32 ICE characters")
    _number(component, "candidate component", 1, 256)
    if transport.lower() not in CANDIDATE_TRANSPORTS:
        raise SdpError(f"candidate transport {excerpt(transport)} is not UDP or TCP")
    _number(priority, "candidate priority", 1, 2**32 - 1)
    _address(address, "candidate address")
    _number(port, "candidate port", 0, 65535)
    if typ != "typ":
        raise SdpError(f"candidate field 7 is {excerpt(typ)}, expected 'typ'")
    if kind not in CANDIDATE_TYPES:
        raise SdpError(f"candidate type {excerpt(kind)} is not one of {', '.join(CANDIDATE_TYPES)}")
    extensions = bits[8:]
    if len(extensions) % 2:
        raise SdpError(f"candidate extension {excerpt(extensions[-1])} has no value")
    for name, item in zip(extensions[::2], extensions[1::2], strict=False):  # a lone trailing name: ignored
        if name == "raddr":
            _address(item, "candidate raddr")
        elif name == "rport":
            _number(item, "candidate rport", 0, 65535)
        elif name == "tcptype" and item not in TCP_TYPES:
            raise SdpError(f"candidate tcptype {excerpt(item)} is not one of {', '.join(TCP_TYPES)}")


@dataclass
class MediaSection:
    """One ``m=`` section of an offer, as far as the checks need it."""

    index: int
    kind: str
    mids: list[str] = field(default_factory=list)
    rtpmap: set[int] = field(default_factory=set)
    fmtp: list[tuple[int, str]] = field(default_factory=list)
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    fingerprint: bool = False


def _split_attribute(line: str) -> tuple[str, str | None]:
    name, colon, value = line[2:].partition(":")
    return name, (value if colon else None)


def _check_fmtp_parameters(pt: int, parameters: str) -> None:
    for parameter in parameters.split(";"):
        name, equals, value = parameter.partition("=")
        if equals and name in FMTP_INT_PARAMETERS and not _NUMBER.fullmatch(value):
            raise SdpError(f"a=fmtp:{pt} parameter {excerpt(name)} must be a number, got {excerpt(value)}")


def _check_attribute(name: str, value: str | None, section: MediaSection | None) -> None:
    """One ``a=`` line whose value aiortc parses; ``section`` is None at session level."""
    if value is None:
        if name in _NEEDS_VALUE:
            raise SdpError(f"a={name} has no value")
        return
    if name == "setup" and value not in SETUP_VALUES:
        raise SdpError(f"a=setup:{excerpt(value)} is not one of {', '.join(SETUP_VALUES)}")
    if name == "fingerprint" and len(value.split()) != 2:
        raise SdpError("a=fingerprint must be an algorithm and a value")
    if name == "ice-ufrag" and not (_ICE_CHARS.fullmatch(value) and 4 <= len(value) <= 256):
        raise SdpError(f"a=ice-ufrag {excerpt(value)} is not 4 to 256 ICE characters")
    if name == "ice-pwd" and not (_ICE_CHARS.fullmatch(value) and 22 <= len(value) <= 256):
        raise SdpError("a=ice-pwd is not 22 to 256 ICE characters")
    if section is None:
        return
    if name == "mid" and not _TOKEN.fullmatch(value):
        raise SdpError(f"a=mid:{excerpt(value)} is not a token of 1 to 64 characters")
    if name == "msid" and " " in value and len(value.split()) != 2:
        raise SdpError(f"a=msid:{excerpt(value)} must be a stream id and a track id")
    if name == "candidate":
        check_candidate(value)
    elif name == "extmap":
        bits = value.split()
        if len(bits) != 2 or not _EXTMAP_ID.fullmatch(bits[0]):
            raise SdpError(f"a=extmap:{excerpt(value)} must be 'id[/direction] URI'")
        _number(bits[0].split("/", 1)[0], "a=extmap id", 1, 255)
    elif name == "rtpmap":
        pt, _, encoding = value.partition(" ")
        section.rtpmap.add(_number(pt, "a=rtpmap payload type", 0, 127))
        parts = encoding.split("/")
        if len(parts) < 2 or not parts[0] or len(parts) > 3:
            raise SdpError(f"a=rtpmap:{excerpt(value)} must be 'payload-type name/clock-rate[/channels]'")
        _number(parts[1], "a=rtpmap clock rate", 1, 10**9)
        if len(parts) == 3:
            _number(parts[2], "a=rtpmap channels", 1, 255)
    elif name == "fmtp":
        pt, space, parameters = value.partition(" ")
        if not space:
            raise SdpError(f"a=fmtp:{excerpt(value)} must be a payload type and parameters")
        section.fmtp.append((_number(pt, "a=fmtp payload type", 0, 127), parameters))
    elif name == "rtcp-fb":
        bits = value.split(" ", 2)
        if len(bits) < 2 or not (bits[0] == "*" or _NUMBER.fullmatch(bits[0])):
            raise SdpError(f"a=rtcp-fb:{excerpt(value)} must be a payload type (or *) and a feedback type")
    elif name == "rtcp":
        port, _, address = value.partition(" ")
        _number(port, "a=rtcp port", 0, 65535)
        if address and not _CONNECTION.fullmatch(address):
            raise SdpError(f"a=rtcp address {excerpt(address)} is not 'IN IP4|IP6 address'")
    elif name == "ssrc":
        ssrc, _, description = value.partition(" ")
        _number(ssrc, "a=ssrc", 0, 2**32 - 1)
        if ":" not in description:
            raise SdpError(f"a=ssrc:{excerpt(value)} must be 'ssrc attribute:value'")
    elif name == "ssrc-group":
        for ssrc in value.split()[1:]:
            _number(ssrc, "a=ssrc-group ssrc", 0, 2**32 - 1)
    elif name in ("sctp-port", "max-message-size"):
        _number(value, f"a={name}", 0, 2**32 - 1)
    elif name == "sctpmap":
        number, space, _ = value.partition(" ")
        if not space:
            raise SdpError(f"a=sctpmap:{excerpt(value)} must be a number and a description")
        _number(number, "a=sctpmap number", 0, 65535)


def _media_section(line: str, index: int) -> MediaSection:
    match = _MEDIA_LINE.fullmatch(line)
    if match is None:
        raise SdpError(f"media line {excerpt(line)} is not 'm=kind port PROTO formats'")
    kind, port, _, formats = match.groups()
    if kind not in MEDIA_KINDS:
        raise SdpError(f"media kind {excerpt(kind)} is not one of {', '.join(MEDIA_KINDS)}")
    _number(port, "media port", 0, 65535)
    if kind != "application":
        for pt in formats.split():
            if _number(pt, "payload type", 0, 127) in _RTCP_RESERVED:
                raise SdpError(f"payload type {pt} collides with RTCP (72-76)")
    return MediaSection(index=index, kind=kind)


def check_offer(sdp: str) -> list[MediaSection]:
    """Check an offer's structure; returns its media sections, raises :class:`SdpError`.

    Every line is ``x=value`` without control characters, the first is ``v=0``; there are 1 to
    ``MAX_MEDIA_SECTIONS`` ``m=`` sections of kind audio, video or application, each with exactly
    one ``a=mid`` (unique), ICE credentials and a DTLS fingerprint (its own or the session's);
    BUNDLE groups name only existing mids, each at most once; and the attributes aiortc parses
    (candidate, rtpmap, fmtp, extmap, rtcp-fb, ssrc, setup, ...) are well-formed.
    """
    lines = [line for line in sdp.splitlines() if line.strip()]
    if not lines or lines[0].strip() != "v=0":
        raise SdpError("an SDP offer starts with v=0")
    sections: list[MediaSection] = []
    bundles: list[list[str]] = []
    session_ufrag = session_pwd = None
    session_fingerprint = False
    for number, line in enumerate(lines, start=1):
        if _CONTROL.search(line):
            raise SdpError(f"line {number} has a control character")
        if not _LINE.match(line):
            raise SdpError(f"line {number} {excerpt(line)} is not 'x=value'")
        if line.startswith("v=") and number > 1:
            raise SdpError(f"line {number} repeats v=")
        section = sections[-1] if sections else None
        if line.startswith("m="):
            if len(sections) == MAX_MEDIA_SECTIONS:
                raise SdpError(f"more than {MAX_MEDIA_SECTIONS} media sections")
            sections.append(_media_section(line, len(sections)))
        elif line.startswith("c=") and not _CONNECTION.fullmatch(line[2:]):
            raise SdpError(f"connection line {excerpt(line)} is not 'c=IN IP4|IP6 address'")
        elif line.startswith("a="):
            name, value = _split_attribute(line)
            _check_attribute(name, value, section)
            if section is None:
                if name == "group" and value is not None and value.split()[:1] == ["BUNDLE"]:
                    bundles.append(value.split()[1:])
                session_ufrag = value if name == "ice-ufrag" else session_ufrag
                session_pwd = value if name == "ice-pwd" else session_pwd
                session_fingerprint = session_fingerprint or name == "fingerprint"
            elif value is not None:
                section.mids += [value] if name == "mid" else []
                section.ice_ufrag = value if name == "ice-ufrag" else section.ice_ufrag
                section.ice_pwd = value if name == "ice-pwd" else section.ice_pwd
                section.fingerprint = section.fingerprint or name == "fingerprint"
    _check_sections(sections, bundles, bool(session_ufrag and session_pwd), session_fingerprint)
    return sections


def _check_sections(
    sections: list[MediaSection], bundles: list[list[str]], session_ice: bool, session_fingerprint: bool
) -> None:
    if not sections:
        raise SdpError("the offer has no media section")
    seen: set[str] = set()
    for section in sections:
        where = f"media section {section.index} ({section.kind})"
        if len(section.mids) != 1:
            raise SdpError(f"{where} has {len(section.mids)} a=mid lines; it needs exactly one")
        if section.mids[0] in seen:
            raise SdpError(f"{where} repeats a=mid:{section.mids[0]}")
        seen.add(section.mids[0])
        if not (session_ice or (section.ice_ufrag and section.ice_pwd)):
            raise SdpError(f"{where} has no a=ice-ufrag and a=ice-pwd")
        if not (session_fingerprint or section.fingerprint):
            raise SdpError(f"{where} has no a=fingerprint")
        for pt, parameters in section.fmtp:
            if pt not in section.rtpmap:
                raise SdpError(f"{where} has a=fmtp:{pt} without a=rtpmap:{pt}")
            _check_fmtp_parameters(pt, parameters)
    bundled: set[str] = set()
    for mids in bundles:
        for mid in mids:
            if mid not in seen:
                raise SdpError(f"a=group:BUNDLE names mid {excerpt(mid)}, which no media section has")
            if mid in bundled:
                raise SdpError(f"a=group:BUNDLE names mid {excerpt(mid)} twice")
            bundled.add(mid)
