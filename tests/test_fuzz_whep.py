"""Fuzzing the WHEP endpoint (target "whep") against a running agent with a live viewer.

Mutations of real offers (one aiortc makes here, one headless Chromium made: tests/data/chromium_offer.sdp,
see CHROMIUM_OFFER.md): lines dropped, duplicated, moved, truncated, oversized, fields replaced, bytes that
are not UTF-8, random charsets; random candidate fragments PATCHed to the live session and to unknown
ones; random methods, paths and headers. Properties: never a 5xx, every refusal a one-line text/plain
reason, never an ERROR or a traceback in the agent's log, and the live viewer keeps receiving video (a
loss otherwise, as is the agent not answering). Afterwards a new aiortc viewer still connects and plays.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import ipaddress
import logging
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.fuzzing import fuzz_example, fuzz_settings
from tests.support.media import Viewer, media_config, running_agent

pytestmark = [
    pytest.mark.fuzz,
    # the agent's thread uses the random module while Hypothesis draws; nothing here uses it
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]

CHROMIUM_OFFER = (Path(__file__).parent / "data" / "chromium_offer.sdp").read_bytes().decode()  # CRLF kept
FRAGMENT = "application/trickle-ice-sdpfrag"
STALL_S = 3.0  # the live viewer's last frame may not be older than this


class ErrorLog(logging.Handler):
    """Every record at ERROR or above, or carrying a traceback, from any logger in the process."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def lines(self, since: int = 0) -> list[str]:
        return [f"{r.name} {r.levelname}: {r.getMessage()}" for r in self.records[since:]]


class RunningWhep:
    """The agent and one live aiortc viewer on an event loop in a thread; the tests send it raw HTTP."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        self.errors = ErrorLog()
        self.port = 0
        self.live: Viewer | None = None
        self.aiortc_offer = ""
        self.agent: Any = None
        self.answers: collections.Counter[tuple[str, int]] = collections.Counter()  # (method, status) tally
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="whep-agent", daemon=True)

    def start(self) -> RunningWhep:
        logging.getLogger().addHandler(self.errors)
        self._thread.start()
        assert self._ready.wait(60), "the agent did not start"
        if self._failure is not None:
            raise self._failure
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        logging.getLogger().removeHandler(self.errors)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())
        self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        config = media_config(self.workdir, web={"max_viewers": 16, "session_timeout_s": 5.0})
        try:
            async with running_agent(config) as agent, aiohttp.ClientSession() as http:
                self.agent = agent
                self.port = agent.get("media").web.port
                self.live = Viewer(self.base)
                await self.live.connect(http)
                await self.live.wait_frames(10)
                self.aiortc_offer = await aiortc_offer()
                self._ready.set()
                await self._stop.wait()
                await self.live.close(http)
        except BaseException as exc:  # reported to the test thread by start()
            self._failure = exc
            self._ready.set()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def live_path(self) -> str:
        assert self.live is not None and self.live.location
        return self.live.location

    def live_broken(self) -> str | None:
        """Why the live viewer's session is broken, or None while it plays."""
        assert self.live is not None
        session = self.agent.get("media").sessions.sessions.get(self.live_path.rsplit("/", 1)[1])
        if session is None:
            return "the agent ended the live session"
        if session.pc.connectionState != "connected" or self.live.pc.connectionState != "connected":
            return f"live session {session.pc.connectionState} (viewer {self.live.pc.connectionState})"
        if not self.live.stamps or time.monotonic() - self.live.stamps[-1][0] > STALL_S:
            return f"no video frame for {STALL_S} s"
        return None


def _loopback_candidate(line: str) -> str:
    bits = line.split(" ")
    if line.startswith("a=candidate:") and len(bits) > 5:
        bits[4] = "::1" if ":" in bits[4] else "127.0.0.1"
    return " ".join(bits)


async def aiortc_offer() -> str:
    """A real aiortc viewer's offer: video and audio recvonly; its candidates moved to loopback, so the
    agent's ICE checks (for the offers it answers) never leave the machine's loopback."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = "\r\n".join(_loopback_candidate(line) for line in pc.localDescription.sdp.split("\r\n"))
    await pc.close()
    return offer


@pytest.fixture(scope="module")
def whep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWhep]:
    running = RunningWhep(tmp_path_factory.mktemp("fuzz-whep")).start()
    try:
        yield running
    finally:
        running.stop()


# -- sending -----------------------------------------------------------------------------------------
class NoAnswer(Exception):
    """The agent did not answer a request."""


def send(
    whep: RunningWhep, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, str, bytes, http.client.HTTPMessage]:
    """One request on a fresh connection; (status, content type, body, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", whep.port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read(), resp.headers
    except (OSError, http.client.HTTPException) as exc:
        raise NoAnswer(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()


def check_answer(
    whep: RunningWhep,
    ex: Any,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    parsed: bool = True,
) -> int:
    """Send, then judge the answer, the log and the live viewer; returns the status.

    ``parsed=False`` for a request aiohttp's HTTP parser refuses before the endpoint sees it (an
    unknown method): its ``400`` body is aiohttp's own, which may take several lines.
    """
    mark = len(whep.errors.records)
    try:
        status, content_type, answer, answer_headers = send(whep, method, path, body, headers)
    except NoAnswer:
        ex.lost()
        raise
    whep.answers[(method, status)] += 1
    if status == 201 and answer_headers.get("Location", "").startswith("/whep/"):
        assert send(whep, "DELETE", answer_headers["Location"])[0] == 200  # free the viewer slot
    assert status < 500, (status, answer[:300])
    if status >= 400 and method != "HEAD" and parsed:
        text = answer.decode("utf-8", "replace")
        assert content_type.startswith("text/plain"), (status, content_type)
        assert text.strip() and text.count("\n") <= 1 and len(text) < 400, (status, text[:400])
    logged = whep.errors.lines(mark)
    assert not logged, logged
    broken = whep.live_broken()
    if broken:
        ex.lost()
    assert broken is None, broken
    return status


# methods aiohttp's parser (llhttp) knows; any other token is refused there, before the endpoint
KNOWN_METHODS = [
    "GET",
    "POST",
    "PATCH",
    "DELETE",
    "OPTIONS",
    "PUT",
    "HEAD",
    "TRACE",
    "PROPFIND",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "SEARCH",
    "REPORT",
    "PURGE",
    "QUERY",
]


# -- strategies --------------------------------------------------------------------------------------
CHARSETS = [
    "utf-8",
    "UTF-8",
    "utf8",
    "us-ascii",
    "latin-1",
    "utf-16",
    "utf-32",
    "bogus",
    "",
    '"utf-8"',
    "rot13",
    "idna",
    "zlib",
    "utf-8-sig",
    "cp1252",
    "\tutf-8 ",
    "UTF_8",
    "x" * 300,
]
junk_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=40)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
token = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"),
    min_size=1,
    max_size=20,
)


def content_type_for(main: str, data: st.DataObject) -> str | None:
    """``main`` most of the time (so the body is judged), else a random charset, type or none."""
    variant = data.draw(st.integers(0, 9), label="content type variant")
    if variant < 7:
        return main
    charset = st.one_of(st.sampled_from(CHARSETS), header_text.filter(lambda s: ";" not in s))
    return data.draw(
        st.one_of(
            st.just(main.upper()),
            st.builds(lambda c: f"{main}; charset={c}", charset),
            st.builds(lambda c, extra: f"{main}; {extra}; charset={c}", charset, header_text),
            st.sampled_from(
                [
                    "application/sdp",
                    FRAGMENT,
                    "text/plain",
                    "application/json",
                    "multipart/form-data",
                    "application/x-www-form-urlencoded",
                    "",
                ]
            ),
            header_text,
            st.none(),
        ),
        label="content type",
    )


def _mutate_line(line: str, kind: str, data: st.DataObject) -> str:
    if kind == "truncate":
        return line[: data.draw(st.integers(0, max(0, len(line) - 1)))]
    if kind == "oversize":
        return line + "x" * data.draw(st.sampled_from([100, 1000, 5000, 30_000, 70_000]))
    if kind == "field":  # one space- or colon-separated field replaced
        separator = data.draw(st.sampled_from([" ", ":", "/", "="]))
        parts = line.split(separator)
        index = data.draw(st.integers(0, len(parts) - 1))
        parts[index] = data.draw(st.one_of(junk_text, st.integers(-1, 2**33).map(str), st.just("")))
        return separator.join(parts)
    prefix = data.draw(st.sampled_from(["", "a=", "a=" + line[2:].split(":", 1)[0] + ":", line[:2]]))
    return prefix + data.draw(junk_text)  # "replace": the same attribute (or line type) with junk


def mutate_offer(offer: str, data: st.DataObject) -> str:
    """Drop, duplicate, move, truncate, oversize or rewrite a few of the offer's lines."""
    lines = offer.split("\r\n")
    for _ in range(data.draw(st.integers(1, 5), label="mutations")):
        kind = data.draw(
            st.sampled_from(["drop", "duplicate", "move", "truncate", "oversize", "field", "replace"])
        )
        i = data.draw(st.integers(0, len(lines) - 1))
        if kind == "drop" and len(lines) > 1:
            del lines[i]
        elif kind == "duplicate":
            lines.insert(data.draw(st.integers(0, len(lines))), lines[i])
        elif kind == "move":
            line = lines.pop(i)
            lines.insert(data.draw(st.integers(0, len(lines))), line)
        elif kind not in ("drop", "duplicate", "move"):
            lines[i] = _mutate_line(lines[i], kind, data)
    return data.draw(st.sampled_from(["\r\n", "\n", "\r"]), label="line ending").join(lines)


def encode(text: str, data: st.DataObject) -> bytes:
    """UTF-8, or bytes that are not UTF-8 spliced in somewhere."""
    body = text.encode("utf-8")
    if data.draw(st.integers(0, 9), label="not UTF-8") == 9:  # Hypothesis starts from 0: the plain case
        at = data.draw(st.integers(0, len(body)))
        bad = data.draw(
            st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\x80", b"\xf8\x88\x80\x80\x80"])
        )
        body = body[:at] + bad + body[at:]
    return body


def _routes_off_loopback(address: str) -> bool:
    """A candidate address aioice would send checks to off this machine (or resolve by mDNS)."""
    if address.endswith(".local"):
        return True
    try:
        return not ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def candidate_lines() -> st.SearchStrategy[str]:
    number = st.one_of(st.integers(-5, 2**33).map(str), token, st.just(""))
    address = st.one_of(
        st.sampled_from(
            [
                "127.0.0.1",
                "127.3.4.5",
                "::1",
                "0.0.0.0",
                "localhost",
                "::ffff:127.0.0.1",
                "1.2.3",
                "999.1.1.1",
            ]
        ),
        token,
    ).filter(lambda a: not _routes_off_loopback(a))
    fields = st.tuples(
        token,
        number,
        st.sampled_from(["udp", "UDP", "tcp", "sctp", ""]),
        number,
        address,
        number,
        st.sampled_from(["typ", "type", ""]),
        st.sampled_from(["host", "srflx", "prflx", "relay", "bogus", ""]),
        st.lists(
            st.one_of(
                st.sampled_from(
                    ["raddr", "rport", "tcptype", "generation", "ufrag", "network-id", "network-cost"]
                ),
                token,
                number,
                address,
            ),
            max_size=6,
        ),
    )
    built = fields.map(lambda f: " ".join([*f[:8], *f[8]]))
    return st.builds(
        lambda value, cut: "a=candidate:" + (value[:cut] if cut is not None else value),
        built,
        st.one_of(st.none(), st.integers(0, 40)),
    )


fragment_lines = st.one_of(
    candidate_lines(),
    st.sampled_from(
        [
            "a=mid:0",
            "a=mid:1",
            "a=mid:",
            "a=mid:9",
            "a=end-of-candidates",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:abcdefghijklmnopqrstuvwx",
            "a=candidate",
            "a=candidate:",
            "m=audio 9 UDP/TLS/RTP/SAVPF 0",
            "",
        ]
    ),
    junk_text,
)


# -- the fuzz tests (every draw before fuzz_example: running out of data is not a crash) ---------------
@fuzz_settings(examples=300)
@given(data=st.data())
def test_mutated_offers_get_an_answer_or_a_reason(whep: RunningWhep, data: st.DataObject) -> None:
    offer = data.draw(st.sampled_from([whep.aiortc_offer, CHROMIUM_OFFER]), label="offer")
    body = encode(mutate_offer(offer, data), data)
    content_type = content_type_for("application/sdp", data)
    headers = {} if content_type is None else {"Content-Type": content_type}
    with fuzz_example("whep") as ex:
        check_answer(whep, ex, "POST", "/whep", body, headers)


@fuzz_settings(examples=250)
@given(data=st.data())
def test_trickled_fragments_get_204_or_a_reason(whep: RunningWhep, data: st.DataObject) -> None:
    unknown = data.draw(st.integers(0, 3), label="unknown session") == 3
    path = data.draw(token.map(lambda t: f"/whep/{t}"), label="path") if unknown else whep.live_path
    lines = data.draw(st.lists(fragment_lines, max_size=6), label="lines")
    ending = data.draw(st.sampled_from(["\r\n", "\n"]))
    body = encode(ending.join(lines) + ending, data)
    content_type = content_type_for(FRAGMENT, data)
    headers = {} if content_type is None else {"Content-Type": content_type}
    with fuzz_example("whep") as ex:
        status = check_answer(whep, ex, "PATCH", path, body, headers)
        if unknown:
            assert status == 404, status  # an unknown session whatever the body


FRAMING_HEADERS = {
    "content-length",
    "transfer-encoding",
    "connection",
    "host",
    "expect",
    "upgrade",
    "te",
    "trailer",
}
header_names = st.one_of(
    st.sampled_from(
        [
            "Content-Type",
            "Content-Encoding",
            "Authorization",
            "Accept",
            "Origin",
            "If-Match",
            "Range",
            "Cookie",
        ]
    ),
    token.filter(lambda name: name.lower() not in FRAMING_HEADERS),
)


@fuzz_settings(examples=120)
@given(data=st.data())
def test_random_requests_get_an_answer(whep: RunningWhep, data: st.DataObject) -> None:
    method = data.draw(st.one_of(st.sampled_from(KNOWN_METHODS), token), label="method")
    paths = [
        "/whep",
        "/whep/",
        "/whep/x",
        "/whep/x/y",
        "/",
        "/viewer.js",
        "/api/stats",
        "/whep?x=1",
        "/%ff",
        "/whep/%00",
        "//whep",
    ]
    if method != "DELETE":
        paths.append(whep.live_path)  # a DELETE there would rightly end the live viewer
    path = data.draw(st.sampled_from(paths), label="path")
    headers = data.draw(st.dictionaries(header_names, header_text, max_size=4), label="headers")
    body = data.draw(st.one_of(st.binary(max_size=200), st.just(whep.aiortc_offer.encode())), label="body")
    with fuzz_example("whep") as ex:
        check_answer(whep, ex, method, path, body, headers, parsed=method in KNOWN_METHODS)


def test_a_new_viewer_still_connects_and_plays(whep: RunningWhep) -> None:
    """After the fuzz tests above (pytest runs a module in order), a new aiortc viewer connects and plays."""

    async def view() -> int:
        async with aiohttp.ClientSession() as http:
            viewer = Viewer(whep.base)
            try:
                await viewer.connect(http)
                await viewer.wait_frames(15)
                return len({index for _, index, _ in viewer.stamps})
            finally:
                await viewer.close(http)

    print("answers (method, status): count:", dict(sorted(whep.answers.items())))  # shown with -s
    assert whep.call(view()) >= 15
    assert whep.live_broken() is None
    assert whep.agent.get("media").sessions.stats()["active"] == 1  # only the live viewer: nothing leaked
    assert not whep.errors.lines(), whep.errors.lines()
