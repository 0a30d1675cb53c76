"""One MQTT transport (device_agent/fleetlink/mqtt.py): one broker-URL parser with one default-port
rule, one TLS context builder, one paho driver (``MqttConnection``; ``MqttClient`` is its
request/response face), and no other module that builds a paho client."""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import pytest

from device_agent.fleetlink.mqtt import (
    BrokerAddress,
    BrokerUrlError,
    MqttClient,
    MqttError,
    parse_broker_url,
    split_endpoint,
    tls_context,
)
from tests.support.mosquitto import Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent
TRANSPORT = ROOT / "device_agent" / "fleetlink" / "mqtt.py"


@pytest.mark.parametrize(
    "url, expected",
    [
        ("mqtt://broker", BrokerAddress("broker", 1883, False)),
        ("mqtts://broker", BrokerAddress("broker", 8883, True)),
        ("mqtt://10.0.0.1:1999", BrokerAddress("10.0.0.1", 1999, False)),
        ("mqtts://[::1]:8884", BrokerAddress("::1", 8884, True)),
        (" mqtt://broker/ ", BrokerAddress("broker", 1883, False)),
    ],
)
def test_one_default_port_rule(url: str, expected: BrokerAddress) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://x",
        "mqtt://",
        "tcp://host:1883",
        "host:1883",
        "broker",
        "",
        "mqtt://h:99999",
        "mqtt://h:0",
        "mqtt://h/x",
        "mqtt://h:port",
    ],
)
def test_anything_else_is_refused_naming_the_url(url: str) -> None:
    with pytest.raises(BrokerUrlError) as e:
        parse_broker_url(url)
    assert repr(url) in str(e.value) and "mqtt://host[:port]" in str(e.value)


def test_fleetctl_serve_gives_the_claim_responder_the_services_own_port() -> None:
    """``fleetctl serve --mqtt mqtt://broker --claims DIR`` connected the claim responder to 8883
    (``split_host_port(url, 8883)``) while the service itself used 1883."""
    src = (ROOT / "fleet" / "core_cli.py").read_text()
    assert "split_host_port" not in src and "parse_broker_url(url)" in src  # url: the service's own
    assert (parse_broker_url("mqtt://broker").host, parse_broker_url("mqtt://broker").port) == (
        "broker",
        1883,
    )


def test_scheme_less_endpoints_keep_their_listener_default() -> None:
    assert split_endpoint("fleet.example", 8884) == ("fleet.example", 8884)
    assert split_endpoint("fleet.example:9000", 8884) == ("fleet.example", 9000)
    assert split_endpoint("[fd00::1]:9000", 8884) == ("fd00::1", 9000)
    assert split_endpoint("mqtts://fleet.example", 8884) == ("fleet.example", 8883)  # a URL: the URL rule
    for bad in ("", ":9000", "h:0", "h:x", "http://h"):
        with pytest.raises(BrokerUrlError):
            split_endpoint(bad, 8884)


def test_one_tls_context_builder() -> None:
    ctx = tls_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    loose = tls_context(verify=False)
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname
    assert not tls_context(check_hostname=False).check_hostname


def _builds_paho_client(tree: ast.AST) -> list[int]:
    """Lines that construct a paho ``Client`` (``mqtt.Client(...)``, ``Client(...)``)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name == "Client":
                lines.append(node.lineno)
    return lines


def test_no_other_module_drives_paho() -> None:
    offenders = []
    for pkg in ("device_agent", "provisioning", "fleet", "ota", "benchmarks", "tools"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == TRANSPORT:
                continue
            for line in _builds_paho_client(ast.parse(path.read_text())):
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, f"paho clients built outside {TRANSPORT.relative_to(ROOT)}: {offenders}"
    assert not (ROOT / "provisioning" / "mqtt.py").exists()


async def test_client_classifies_failures_and_round_trips(tmp_path: Path) -> None:
    with pytest.raises(MqttError) as e:
        await MqttClient("nobody").connect("127.0.0.1", free_port(), timeout=3)
    assert e.value.kind == "refused"
    with pytest.raises(MqttError) as e:
        await MqttClient("nobody").connect("no-such-host.invalid", 1883, timeout=3)
    assert e.value.kind == "dns"
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        a, b = MqttClient("a"), MqttClient("b")
        await a.connect("127.0.0.1", broker.port)
        await b.connect("127.0.0.1", broker.port)
        assert await a.subscribe("t/#") == 1
        assert await b.publish("t/x", b"hello", response_topic="t/r", correlation=b"c1") == 0
        msg = await a.next_message(5)
        assert (msg.topic, msg.payload, msg.properties.CorrelationData) == ("t/x", b"hello", b"c1")
        await a.close()
        assert not a.connected
        with pytest.raises(MqttError) as e:
            await a.publish("t/x", b"again")
        assert e.value.kind == "closed"
        await b.close()
    finally:
        broker.stop()
