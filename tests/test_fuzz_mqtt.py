"""Fuzz target "mqtt": hostile command messages against the assembled agent's fleet link and its real
commands.

One real mosquitto and one assembled agent (``build_agent``: fleet link, media, OTA, diagnostics) run for
the whole module, the agent on an event loop in a background thread; the examples publish raw MQTT 5
messages (payloads, properties, flags Hypothesis draws) and check after each one that

- every answer that is due arrives on ``dev/{id}/res`` with its correlation data, and is a structured
  result or error code, never ``internal_error``;
- a message with an unusable response topic or the retained flag runs nothing (the reboot runner and the
  restart request stay untouched) and only a retained one is answered (``retained_refused``);
- nothing was logged with a traceback or at ERROR, and no task died unseen on the agent's loop;
- telemetry (every 0.2 s) kept coming without a gap (``ex.lost()`` for a gap or a missing answer).

No command runs with parameters that would restart, reboot or reset anything: ``agent.restart``,
``reboot``, ``ota.install`` and ``ota.rollback`` only ever get wrong parameters (or come retained or with a
hostile response topic, which must stop them before they run); the link's reboot runner is replaced by a
recorder all the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_agent.assemble import build_agent
from device_agent.config import dump_toml, load_config
from device_agent.fleetlink.mqtt import MqttConnection, MqttOptions, PublishRefused
from device_agent.params import Param
from tests.support.fuzzing import fuzz_example, fuzz_settings
from tests.support.mosquitto import Mosquitto

pytestmark = pytest.mark.fuzz

DEVICE = "fuzz-1"
RES = f"dev/{DEVICE}/res"
TELEMETRY_S = 0.2
GAP_S = 5.0  # telemetry every 0.2 s; a longer pause is a gap (2.5 s seen at load average 24 on 2 cores)
ANSWER_S = 8.0
# commands that change nothing when called with valid parameters (the JSON edge cases go to these)
SAFE = ["ping", "config.get", "ota.status", "diag.stats", "media.ns"]
# valid parameters that must never run here: these commands only get wrong ones
DANGEROUS = {
    "agent.restart",
    "reboot",
    "ota.install",
    "ota.rollback",
    "config.set",
    "media.restart",
    "logs.pull",
    "diag.snapshot",
    "diag.selftest",
    "diag.netcheck",
    "cert.renew",
}
STRUCTURED = {
    "bad_json",
    "bad_params",
    "bad_request",
    "payload_too_large",
    "unknown_command",
    "retained_refused",
    "confirmation_required",
    "not_found",
    "unavailable",
}


class Recorder:
    """Stands in for the reboot runner: records, never runs anything."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        return 0


class Problems(logging.Handler):
    """Log records with a traceback or at ERROR and above, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR or "Traceback" in record.getMessage():
            self.records.append(record)


class Rig:
    """The running agent, its loop thread and a raw MQTT 5 session that records every answer."""

    def __init__(self, broker: Mosquitto, workdir: Path) -> None:
        self.broker = broker
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-agent-loop", daemon=True)
        self.loop_errors: list[dict[str, Any]] = []
        self.problems = Problems()
        self.answers: dict[bytes, list[tuple[str, dict[str, Any], Any]]] = {}
        self.stray: list[tuple[str, bytes]] = []  # answers to anything but dev/{id}/res
        self.telemetry: list[float] = []
        self.max_gap = 0.0  # the longest pause in telemetry any example saw
        self.runner = Recorder()
        self.agent: Any = None
        self.wire: MqttConnection | None = None

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    # -- setup ------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()
        self.loop.call_soon_threadsafe(
            self.loop.set_exception_handler, lambda loop, ctx: self.loop_errors.append(ctx)
        )
        logging.getLogger().addHandler(self.problems)
        cfg = self.workdir / "agent.toml"
        cfg.write_text(
            dump_toml(
                {
                    "device": {"id": DEVICE, "state_dir": str(self.workdir / "state")},
                    "mqtt": {"url": self.broker.url, "telemetry_interval_s": TELEMETRY_S},
                    "camera": {"width": 160, "height": 120, "fps": 5},
                    "ns": {"enabled": False},
                    "web": {"enabled": False},
                    "ota": {"root": str(self.workdir / "ota")},
                }
            )
        )
        self.run(self._start(cfg))

    async def _start(self, cfg: Path) -> None:
        self.agent = build_agent(load_config(cfg))
        link = self.agent.get("fleet_link")
        link.commands.runner = self.runner
        await self.agent.start()
        await link.wait_ready(10)
        self.wire = MqttConnection(
            MqttOptions(url=self.broker.url, clean_start=True, session_expiry_s=0, max_inflight=1000)
        )
        self.wire.subscribe("#", self._record)
        self.wire.start()
        await self.wire.wait_ready(10)
        for _ in range(100):
            if self.telemetry:
                break
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        try:
            if self.wire is not None:
                self.run(self.wire.close())
            if self.agent is not None:
                self.run(self.agent.stop())
        finally:
            logging.getLogger().removeHandler(self.problems)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    def _record(self, msg: Any) -> None:
        topic = msg.topic
        if topic == f"dev/{DEVICE}/telemetry":
            self.telemetry.append(time.monotonic())
            return
        if "/cmd/" in topic or topic.endswith(("/status", "/events")) or "/diag/ping/" in topic:
            return
        if topic != RES:
            self.stray.append((topic, msg.payload))
            return
        corr = bytes(getattr(msg.properties, "CorrelationData", b"") or b"")
        self.answers.setdefault(corr, []).append((topic, json.loads(msg.payload), msg.properties))

    # -- sending ------------------------------------------------------------------------------
    def publish(
        self,
        name: str,
        payload: bytes,
        *,
        corr: bytes | None = None,
        response_topic: str | None = RES,
        qos: int = 1,
        retain: bool = False,
        expiry: int | None = None,
        content_type: str | None = None,
        user_props: list[tuple[str, str]] | None = None,
        utf8_flag: bool = False,
    ) -> tuple[bytes, bool]:
        """Publish one command; returns (correlation data, whether the broker took it)."""
        corr = corr if corr is not None else uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        if response_topic is not None:
            props.ResponseTopic = response_topic
        props.CorrelationData = corr
        if expiry is not None:
            props.MessageExpiryInterval = expiry
        if content_type is not None:
            props.ContentType = content_type
        if user_props:
            props.UserProperty = user_props
        if utf8_flag:
            props.PayloadFormatIndicator = 1
        assert self.wire is not None
        try:
            self.run(
                self.wire.publish(
                    f"dev/{DEVICE}/cmd/{name}",
                    payload,
                    qos=qos,
                    retain=retain,
                    properties=props,
                    timeout=10.0,
                )
            )
        except PublishRefused:
            return corr, False
        return corr, True

    def publish_many(self, messages: list[tuple[str, bytes]]) -> list[bytes]:
        """Publish ``(name, payload)`` commands all at once (QoS 1, fresh correlation data each)."""
        assert self.wire is not None
        wire = self.wire
        corrs = [uuid.uuid4().bytes for _ in messages]

        async def send() -> None:
            sends = []
            for (name, payload), corr in zip(messages, corrs, strict=True):
                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = RES
                props.CorrelationData = corr
                sends.append(wire.publish(f"dev/{DEVICE}/cmd/{name}", payload, qos=1, properties=props))
            await asyncio.gather(*sends)

        self.run(send())
        return corrs

    def wait_answers(self, corrs: list[bytes], count: int = 1, timeout: float = ANSWER_S) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(len(self.answers.get(c, [])) >= count for c in corrs):
                return True
            time.sleep(0.01)
        return False

    def barrier(self) -> None:
        """Returns once the link has handled everything published before (one ping answered after it)."""
        corr, _ = self.publish("ping", b"{}")
        assert self.wait_answers([corr]), "the link stopped answering"

    # -- properties every example checks ---------------------------------------------------------
    def begin(self) -> float:
        """Start an example: forget what earlier ones left (a failure must not fail the next ones, which
        Hypothesis runs while shrinking); returns the start time for :meth:`check`."""
        self.problems.records, self.loop_errors, self.stray, self.runner.calls = [], [], [], []
        return time.monotonic()

    def check(self, ex: Any, since: float) -> None:
        now = time.monotonic()
        stamps = [since] + [t for t in self.telemetry if t >= since] + [now]
        gap = max(b - a for a, b in zip(stamps, stamps[1:], strict=False))
        self.max_gap = max(self.max_gap, gap)
        if gap > GAP_S:
            ex.lost()
        assert gap <= GAP_S, f"telemetry gap of {gap:.2f} s"
        assert not self.problems.records, [self.problems.format(r) for r in self.problems.records[:3]]
        assert not self.loop_errors, self.loop_errors[:3]
        assert not self.stray, self.stray[:3]
        assert self.runner.calls == [] and not self.agent.restart_requested

    def answer_of(self, corr: bytes) -> dict[str, Any]:
        return self.answers[corr][0][1]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp("fuzz-mqtt")
    broker = Mosquitto(workdir / "broker").start()
    r = Rig(broker, workdir)
    try:
        r.start()
        yield r
    finally:
        r.stop()
        broker.stop()


def check_structured(ex: Any, answer: dict[str, Any], allowed: set[str] = STRUCTURED) -> None:
    if answer.get("ok") is True:
        return
    code = answer["error"]["code"]
    assert code != "internal_error", answer
    assert code in allowed, answer
    assert isinstance(answer["error"]["message"], str) and answer["error"]["message"]


def expect_answer(rig: Rig, ex: Any, corr: bytes) -> dict[str, Any]:
    if not rig.wait_answers([corr]):
        ex.lost()
        raise AssertionError("no answer")
    return rig.answer_of(corr)


# ---- values ---------------------------------------------------------------------------------------
scalars = st.one_of(
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    st.one_of(st.none(), scalars),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "string": st.text(max_size=200),
    "integer": st.integers(-(10**40), 10**40),
    "number": st.floats(allow_nan=False, allow_infinity=False),
    "boolean": st.booleans(),
    "array": st.lists(json_values, max_size=5),
    "object": st.dictionaries(st.text(max_size=10), json_values, max_size=5),
}


# the same, small: one example of the sweep below draws ~110 of them within Hypothesis's data budget
small_scalars = st.one_of(
    st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)
)
SMALL_BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "string": st.text(max_size=12),
    "integer": st.integers(),
    "number": st.floats(allow_nan=False, allow_infinity=False),
    "boolean": st.booleans(),
    "array": st.lists(st.none() | small_scalars, max_size=3),
    "object": st.dictionaries(st.text(max_size=6), st.none() | small_scalars, max_size=3),
}


def wrong_types(param: Param) -> list[str]:
    """The JSON types a parameter does not accept (``number`` accepts integers)."""
    if "any" in param.kinds:
        return []
    return [k for k in BY_TYPE if k not in param.kinds and not (k == "integer" and "number" in param.kinds)]


# what mosquitto takes in a topic or string property: it drops a client that sends NUL, a control
# character, a surrogate or a non-character (U+FDD0..U+FDEF, U+xFFFE, U+xFFFF: category Cn)
BROKER_CATEGORIES = ("Cs", "Cc", "Cn")
BROKER_TEXT = st.characters(exclude_categories=BROKER_CATEGORIES)
command_names = st.text(
    st.characters(exclude_categories=BROKER_CATEGORIES, exclude_characters="/+#"), min_size=1, max_size=80
)


# ---- every registered command, every declared parameter, every wrong JSON type ---------------------
@fuzz_settings(examples=8)
@given(data=st.data())
def test_every_parameter_of_every_command_refuses_every_wrong_type(rig: Rig, data: st.DataObject) -> None:
    with fuzz_example("mqtt") as ex:
        since = rig.begin()
        fields: list[tuple[str, str]] = []  # (command, parameter) of each message, in order
        values: list[st.SearchStrategy[Any]] = []
        for name in rig.agent.commands.names():
            declared = {p.name for p in rig.agent.commands.get(name).params}
            fields.append((name, ""))  # an undeclared key
            values.append(
                st.tuples(
                    st.text(min_size=1, max_size=12).filter(lambda k, d=declared: k not in d), small_scalars
                ).map(lambda kv: {kv[0]: kv[1]})
            )
            for param in rig.agent.commands.get(name).params:
                for kind in wrong_types(param):
                    fields.append((name, param.name))
                    values.append(SMALL_BY_TYPE[kind].map(lambda v, n=param.name: {n: v}))
        drawn = data.draw(st.tuples(*values))  # one draw for all: much faster than one per value
        fields = [
            (name, field or next(iter(params))) for (name, field), params in zip(fields, drawn, strict=True)
        ]
        messages = [
            (name, json.dumps(params).encode()) for (name, _), params in zip(fields, drawn, strict=True)
        ]
        sent = [
            (corr, name, field)
            for corr, (name, field) in zip(rig.publish_many(messages), fields, strict=True)
        ]
        if not rig.wait_answers([c for c, _, _ in sent]):
            ex.lost(sum(1 for c, _, _ in sent if c not in rig.answers))
            raise AssertionError("answers missing")
        for corr, name, field in sent:
            answer = rig.answer_of(corr)
            assert answer["ok"] is False, (name, field, answer)
            assert answer["error"]["code"] == rig.agent.commands.get(name).param_error, (name, field, answer)
            assert answer["error"]["message"].startswith(f"{name}: {field}:"), answer
        rig.check(ex, since)


# ---- JSON the decoder has to survive ---------------------------------------------------------------
def _nested(depth: int, opener: str) -> bytes:
    closer = "]" if opener == "[" else "}"
    if opener == "[":
        return ("[" * depth + "]" * depth).encode()
    return ('{"a":' * depth + "1" + closer * depth).encode()


edge_payloads = st.one_of(
    st.integers(4301, 20000).map(lambda n: b'{"echo": ' + b"7" * n + b"}"),  # int digit limit
    st.integers(4301, 20000).map(lambda n: b'{"echo": -' + b"9" * n + b"e5}"),
    st.tuples(st.integers(33, 100_000), st.sampled_from("[{")).map(lambda t: _nested(*t)),
    st.integers(1, 60_000).map(lambda n: b"[" * n),  # unterminated
    st.sampled_from(
        [
            b'{"echo": NaN}',
            b'{"echo": Infinity}',
            b'{"echo": -Infinity}',
            b"NaN",
            b'{"echo": 1e999}',
            b'{"echo": -1e400}',
            b'{"echo": "\\ud800"}',
            b'{"\\udfff": 1}',
            b"\xef\xbb\xbf{}",
            "{}".encode("utf-16"),
            "{}".encode("utf-32"),
            b"{}\x00",
            b"\x00",
            b"null",
            b"[]",
            b"1",
            b'"x"',
            b"true",
            b"{",
            b"}",
            b'{"a":1,}',
            b"{'a': 1}",
            b"",
            b" \t\r\n",
            b"{}" * 3,
        ]
    ),
    st.tuples(st.text(min_size=1, max_size=6), json_values, json_values).map(  # duplicate keys
        lambda t: (
            f'{{"{json.dumps(t[0])[1:-1]}": {json.dumps(t[1])}, '
            f'"{json.dumps(t[0])[1:-1]}": {json.dumps(t[2])}}}'
        ).encode()
    ),
    st.binary(min_size=1, max_size=300),  # anything, mostly not UTF-8
    st.integers(65_537, 300_000).map(lambda n: b'{"echo": "' + b"x" * n + b'"}'),  # over max_command_bytes
    json_values.map(lambda v: json.dumps(v).encode()),
)


@fuzz_settings(examples=100)
@given(name=st.sampled_from(SAFE + ["no.such.command"]) | command_names, payload=edge_payloads)
def test_json_edge_cases_get_structured_errors(rig: Rig, name: str, payload: bytes) -> None:
    if name in DANGEROUS:
        name = "ping"
    with fuzz_example("mqtt") as ex:
        since = rig.begin()
        corr, taken = rig.publish(name, payload)
        assert taken
        check_structured(ex, expect_answer(rig, ex, corr))
        rig.check(ex, since)


# ---- MQTT 5 properties ---------------------------------------------------------------------------
@fuzz_settings(examples=40)
@given(
    corr=st.binary(min_size=1, max_size=64)
    | st.integers(1000, 65_000).map(lambda n: bytes(range(256)) * (n // 256)),
    expiry=st.sampled_from([None, 0, 1, 30, 2**32 - 1]),
    content_type=st.none()
    | st.text(BROKER_TEXT, max_size=300)
    | st.integers(1000, 32_000).map(lambda n: "\u00e9" * n),
    user_props=st.lists(
        st.tuples(st.text(BROKER_TEXT, max_size=30), st.text(BROKER_TEXT, max_size=30)), max_size=20
    )
    | st.integers(100, 1000).map(lambda n: [(f"k{i}", "v" * (i % 50)) for i in range(n)]),
    utf8_flag=st.booleans(),
    qos=st.sampled_from([1, 2]),
    echo=json_values,
)
def test_mqtt5_properties_are_harmless(
    rig: Rig,
    corr: bytes,
    expiry: int | None,
    content_type: str | None,
    user_props: list[tuple[str, str]],
    utf8_flag: bool,
    qos: int,
    echo: Any,
) -> None:
    with fuzz_example("mqtt") as ex:
        since = rig.begin()
        corr = uuid.uuid4().bytes + corr  # unique, however much Hypothesis shrinks it
        payload = json.dumps({"echo": echo}).encode()
        corr, taken = rig.publish(
            "ping",
            payload,
            corr=corr,
            expiry=expiry,
            content_type=content_type,
            user_props=user_props,
            utf8_flag=utf8_flag,
            qos=qos,
        )
        assert taken
        answer = expect_answer(rig, ex, corr)
        assert answer["ok"] is True and answer["result"]["echo"] == json.loads(payload)["echo"], answer
        props = rig.answers[corr][0][2]
        if expiry:
            assert 0 < getattr(props, "MessageExpiryInterval", 0) <= expiry
        rig.check(ex, since)


# ---- retained and QoS 2 deliveries, redeliveries -----------------------------------------------------
@fuzz_settings(examples=30)
@given(
    name=st.sampled_from(["reboot", "agent.restart", "ping", "ota.rollback", "config.set"]),
    qos=st.sampled_from([0, 1, 2]),
    retain=st.booleans(),
    repeats=st.integers(1, 3),
)
def test_retained_commands_never_run_and_repeats_run_once(
    rig: Rig, name: str, qos: int, retain: bool, repeats: int
) -> None:
    payload = {"reboot": b'{"confirm": true}', "config.set": b'{"set": {"device.name": "fuzzed"}}'}.get(
        name, b"{}"
    )
    if not retain:
        name, payload = "ping", b'{"echo": "again"}'  # only retained ones may carry a live command
    with fuzz_example("mqtt") as ex:
        since = rig.begin()
        corr = uuid.uuid4().bytes
        for _ in range(repeats):
            rig.publish(name, payload, corr=corr, qos=qos, retain=retain, expiry=60)
        if retain:
            rig.run(rig.wire.publish(f"dev/{DEVICE}/cmd/{name}", b"", qos=1, retain=True))  # delete it again
        rig.barrier()
        if qos > 0 and not rig.wait_answers([corr], repeats):
            ex.lost()
            raise AssertionError(f"{repeats} deliveries, answers: {rig.answers.get(corr)}")
        answers = [a for _, a, _ in rig.answers.get(corr, [])]
        if retain:
            assert answers and all(a["error"]["code"] == "retained_refused" for a in answers), answers
        elif answers:
            assert all(a == answers[0] for a in answers), answers  # run once, the same answer each time
            assert answers[0]["ok"] is True
        rig.check(ex, since)


# ---- response topics it must not answer on -----------------------------------------------------------
topic_piece = st.text(
    st.characters(exclude_categories=BROKER_CATEGORIES, exclude_characters="/"), max_size=12
)
hostile_topics = st.one_of(
    st.sampled_from(
        [
            "#",
            "+",
            "dev/#",
            "dev/+/res",
            f"dev/{DEVICE}/#",
            f"dev/{DEVICE}/+",
            f"dev/{DEVICE}/res/#",
            f"dev/{DEVICE}/res/+",
            f"dev/{DEVICE}/cmd/ping",
            f"dev/{DEVICE}/cmd/reboot",
            f"dev/{DEVICE}/res/x",
            f"dev/{DEVICE}/resx",
            f"dev/{DEVICE}/status",
            "dev/other/res",
            "$SYS/broker",
            "/",
            "dev//res",
            f"dev/{DEVICE}/rtc/s1",
            f"dev/{DEVICE}/diag/ping/t",
        ]
    ),
    st.lists(
        st.one_of(topic_piece, st.sampled_from(["#", "+", "dev", DEVICE, "res", "a+b", "x#"])),
        min_size=1,
        max_size=6,
    )
    .map("/".join)
    .filter(lambda t: t not in ("", RES)),
    st.integers(70, 2000).map(lambda n: f"dev/{DEVICE}/" + "r" * n),
)


@fuzz_settings(examples=60)
@given(
    response_topic=hostile_topics,
    name=st.sampled_from(["reboot", "agent.restart", "ping"]),
    qos=st.sampled_from([1, 2]),
)
def test_hostile_response_topics_run_nothing_and_answer_nothing(
    rig: Rig, response_topic: str, name: str, qos: int
) -> None:
    payload = b'{"confirm": true}' if name == "reboot" else b"{}"
    with fuzz_example("mqtt") as ex:
        since = rig.begin()
        corr, _ = rig.publish(name, payload, response_topic=response_topic, qos=qos)
        rig.barrier()
        assert corr not in rig.answers, rig.answers[corr]
        rig.check(ex, since)
