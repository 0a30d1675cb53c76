"""Fuzz target "telemetry": hostile telemetry payloads against the fleet side's decoding and ingest.

Each example is what a device (or anything that can publish on its topic) could send: mutations of a
real sample deflated with the preset dictionary (bit flips, truncation, trailing bytes, a spliced
header), zip bombs, raw bytes, plain JSON, under any content type. Through the service's own decoding
(``FleetService.decode``: ``telemetry_codec.decode``) and a real SQLite store's ``ingest``:

- decoding returns JSON bytes of at most ``MAX_DECODED`` or refuses (counted, logged), never raises;
- ingest never raises; a refused payload is one ``bad`` row, nothing stored;
- a valid sample sent after every example is still stored with its health unchanged (``lost()``
  otherwise).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_agent import telemetry_codec as codec
from device_agent.fleetlink.link import dumps
from fleet.service import FleetService
from fleet.store import Incoming, Store
from tests.support.fuzzing import fuzz_example, fuzz_settings

pytestmark = pytest.mark.fuzz

SAMPLE = json.loads((Path(__file__).parent / "data" / "telemetry_two_viewers.json").read_text())
PLAIN = dumps(SAMPLE)
ENCODED = codec.encode(PLAIN)
CTYPES = [
    None,
    "",
    "application/json",
    codec.content_type(),
    codec.content_type(2),
    "application/json; enc=x",
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FleetService, Store, Iterator[int]]]:
    store = Store(str(tmp_path_factory.mktemp("fuzz-telemetry") / "fleet.db"))
    svc = FleetService("mqtt://127.0.0.1:1", store, rollouts=False)  # never started: its decoding only
    yield svc, store, itertools.count(1)
    store.close()


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "append", "splice", "bomb", "raw", "json"]))
    data = bytearray(ENCODED)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif kind == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    elif kind == "splice":  # a valid header in front of anything
        data = data[:6] + draw(st.binary(max_size=512))
    elif kind == "bomb":
        data = bytearray(
            codec.encode(draw(st.sampled_from([b" ", b"0,", b"{"])) * draw(st.integers(1, 600_000)))
        )
    elif kind == "raw":
        data = bytearray(draw(st.binary(max_size=2048)))
    else:
        data = bytearray(json.dumps(draw(st.dictionaries(st.text(max_size=8), st.integers()))).encode())
    return bytes(data)


@fuzz_settings(examples=300)
@given(payload=payloads(), ctype=st.sampled_from(CTYPES) | st.text(max_size=40))
def test_hostile_telemetry_is_refused_and_nothing_is_lost(
    fleet: tuple[FleetService, Store, Iterator[int]], payload: bytes, ctype: str | None
) -> None:
    svc, store, seqs = fleet
    with fuzz_example("telemetry") as example:
        decoded = svc.decode("telemetry", "evil", payload, ctype)
        assert isinstance(decoded, bytes) and len(decoded) <= codec.MAX_DECODED
        store.ingest([Incoming("telemetry", "evil", decoded, time.time())])
        seq = next(seqs)
        good = dumps({"boot": "b", "seq": seq, "ts": time.time(), "health": SAMPLE["health"]})
        wire = codec.encode(good)
        res = store.ingest(
            [
                Incoming(
                    "telemetry",
                    "good",
                    svc.decode("telemetry", "good", wire, codec.content_type()),
                    time.time(),
                )
            ]
        )
        dev = store.device("good", history=1)
        if res["stored"] != 1 or dev is None or dev["health"] != SAMPLE["health"]:
            example.lost()
        assert res["stored"] == 1
