"""Redaction of the forms the first version missed: claim tokens, quoted values, command-line flags."""

from __future__ import annotations

import pytest

from device_agent.diag.redact import MASK, Redactor, redact_text
from provisioning.token import ClaimToken, qr_payload

TOKEN = "h3ri5pbg.frw6diskvwijbqgi6ilg.qoe4xdcnppwk3uoy"


@pytest.mark.parametrize(
    "line, secret",
    [
        (f"provision --claim {TOKEN}", "frw6diskvwijbqgi6ilg"),
        (f"device-agent provision --claim={TOKEN} --fleet fleet.example.com", "frw6diskvwijbqgi6ilg"),
        (f"scanned {qr_payload(ClaimToken.parse(TOKEN), 'fleet.example.com:8884')}", "frw6diskvwijbqgi6ilg"),
        (f"typed {TOKEN.upper()} (upper case)", "FRW6DISKVWIJBQGI6ILG"),
        (f"claim '{TOKEN}' refused: used_token", "frw6diskvwijbqgi6ilg"),
    ],
)
def test_claim_tokens_are_redacted_wherever_they_appear(line, secret):
    out = redact_text(line)
    assert secret not in out and MASK in out


@pytest.mark.parametrize(
    "line, secret",
    [
        ("wifi network psk 'quotedPskSecret18'", "quotedPskSecret18"),
        ('wifi network psk "quotedPskSecret18"', "quotedPskSecret18"),
        ("set password 'two words here'", "two words here"),
        ("--password pwFlagSecret24", "pwFlagSecret24"),
        ("nmcli --password pwFlagSecret24 --ssid home", "pwFlagSecret24"),
        ("tool --api-key=k3yFlagSecret99 run", "k3yFlagSecret99"),
        ("tool --api-key k3yFlagSecret99 run", "k3yFlagSecret99"),
        ("tool --client-secret 'quoted flag value' run", "quoted flag value"),
        ("tool -psk pskSingleDash77", "pskSingleDash77"),
    ],
)
def test_quoted_values_and_flags_are_redacted(line, secret):
    out = redact_text(line)
    assert secret not in out and MASK in out


@pytest.mark.parametrize(
    "line",
    [
        "frame 12 encoded, bitrate=2000000",
        "viewer 3 joined from 10.0.0.7 after 1.25 s",
        "ota: version 1.2.0 installed in slot b",
        "run --verbose --port 8080 --name 'front door'",
        "device dev-1a2b3c4d5e6f7a8b online, claim h3ri5pbg used",
        "--key-file /etc/device-agent/device.key --verbose",
    ],
)
def test_ordinary_lines_stay_untouched(line):
    assert redact_text(line) == line


def test_a_flag_without_value_before_another_flag_keeps_the_next_flag():
    assert redact_text("login --password --verbose") == "login --password --verbose"


def test_stream_redactor_masks_tokens_too():
    r = Redactor()
    assert r.line(f"claim {TOKEN}") == f"claim {MASK}"
    assert r.redacted_lines == 1
