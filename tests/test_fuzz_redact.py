"""Fuzz target "redact": generated secrets in every form the redactor claims to cover never survive,
and generated ordinary log lines (no secret in them) come out byte for byte unchanged."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from device_agent.diag.redact import MASK, PEM_MASK, Redactor, is_secret
from provisioning.token import ClaimToken, qr_payload
from tests.support.fuzzing import fuzz_example, fuzz_settings

SECRET_KEYS = [
    "password",
    "passwd",
    "pwd",
    "pass",
    "passphrase",
    "secret",
    "token",
    "api_key",
    "apikey",
    "api-key",
    "access_key",
    "private_key",
    "client_secret",
    "credentials",
    "psk",
    "wpa_passphrase",
    "auth_token",
    "session_key",
    "cookie",
    "key",
    "signing_key",
    "mqtt.password",
    "wifi.psk",
    "MQTT_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "db-pass",
]
# words of ordinary log lines: none names a secret, none is an authorization scheme
WORDS = [
    "camera",
    "frame",
    "encoded",
    "viewer",
    "joined",
    "bitrate",
    "slot",
    "installed",
    "online",
    "offline",
    "health",
    "telemetry",
    "sent",
    "queued",
    "broker",
    "connected",
    "reconnect",
    "after",
    "mic",
    "level",
    "speaker",
    "model",
    "loaded",
    "hop",
    "update",
    "version",
    "rollout",
    "group",
    "lobby",
    "ssid",
    "home",
    "door",
    "front",
    "ok",
    "failed",
    "retry",
    "watchdog",
    "spool",
    "drained",
    "ALSA",
    "underrun",
    "V4L2",
]
assert not any(is_secret(w) for w in WORDS)

SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# what unquoted values may hold (a value ends at a blank, , ; & quote } ])
UNQUOTED = SAFE + "!#$%*+-./=?@^_~"
URL_PASSWORD = SAFE + "!$%*+=._~-"
BEARER = SAFE + "._~+/=-"

words = st.lists(st.sampled_from(WORDS), min_size=0, max_size=6).map(" ".join)
numbers = st.one_of(
    st.integers(-(10**9), 10**12).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda f: f"{f:.3f}"),
)
paths = st.lists(
    st.sampled_from(WORDS + ["var", "lib", "etc", "device-agent", "log"]), min_size=1, max_size=5
).map(lambda p: "/" + "/".join(p))
stamps = st.tuples(
    st.integers(2025, 2030),
    st.integers(1, 12),
    st.integers(1, 28),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999),
).map(lambda t: "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}Z".format(*t))
plain_pairs = st.tuples(
    st.sampled_from(WORDS + ["fps", "width", "port", "rtt_ms", "key_file", "keyframe"]),
    st.sampled_from(["=", ": ", " = "]),
    st.one_of(numbers, paths, st.sampled_from(WORDS)),
).map("".join)
plain_flags = st.tuples(
    st.sampled_from(["--verbose", "--port", "--name", "--config", "--key-file", "-v"]),
    st.sampled_from([" ", "="]),
    st.one_of(numbers, paths, st.sampled_from(WORDS)),
).map("".join)
ordinary_piece = st.one_of(words, numbers, paths, stamps, plain_pairs, plain_flags)
ordinary_line = st.lists(ordinary_piece, min_size=1, max_size=8).map(" ".join)


def _secret(alphabet: str, min_size: int = 10) -> st.SearchStrategy[str]:
    # long enough never to occur by chance in the surrounding text or in the mask itself
    return st.text(alphabet, min_size=min_size, max_size=40).filter(lambda s: s not in MASK + PEM_MASK)


key_names = st.tuples(st.sampled_from(SECRET_KEYS), st.booleans()).map(
    lambda kc: kc[0].upper() if kc[1] else kc[0]
)
quoted_secret = st.text(
    st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="'\"\\"), min_size=10, max_size=40
).filter(lambda s: s.strip() == s and s not in MASK + PEM_MASK)


@st.composite
def secret_forms(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """(lines of one secret form, the secret strings that must not survive)."""
    kind = draw(
        st.sampled_from(
            ["pair", "yaml", "json", "quoted", "flag", "flag_eq", "url", "header", "pem", "claim"]
        )
    )
    key = draw(key_names)
    if kind == "pair":
        s = draw(_secret(UNQUOTED))
        return [f"{key}{draw(st.sampled_from(['=', ' = ', '=', ': ']))}{s}"], [s]
    if kind == "yaml":
        s = draw(
            st.one_of(
                _secret(UNQUOTED).map(lambda v: (v, v)),
                quoted_secret.map(lambda v: (v, f"'{v}'")),
                quoted_secret.map(lambda v: (v, f'"{v}"')),
            )
        )
        return [f"{draw(st.sampled_from(['', '  ', '- ']))}{key}: {s[1]}"], [s[0]]
    if kind == "json":
        s = draw(
            st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=10, max_size=40).filter(
                lambda v: v not in MASK + PEM_MASK
            )
        )
        doc = {draw(st.sampled_from(WORDS)): draw(st.sampled_from(WORDS)), key: s}
        dumped = json.dumps(doc, ensure_ascii=draw(st.booleans()))
        inner = json.dumps(s, ensure_ascii=False)[1:-1]
        return [dumped], sorted({s, inner} - {""}, key=len)[-1:]
    if kind == "quoted":
        s = draw(quoted_secret)
        q = draw(st.sampled_from(["'", '"']))
        return [f"{key}{draw(st.sampled_from([' ', '  ', '=', ' = ', ': ']))}{q}{s}{q}"], [s]
    if kind in ("flag", "flag_eq"):
        dashes = draw(st.sampled_from(["--", "-"]))
        flag = dashes + key.lower().replace("_", "-").replace(".", "-")
        quoted = draw(st.booleans())
        s = draw(quoted_secret if quoted else _secret(UNQUOTED).filter(lambda v: not v.startswith("-")))
        value = f"'{s}'" if quoted else s
        sep = "=" if kind == "flag_eq" else " "
        return [f"{draw(st.sampled_from(['device-agent run', 'nmcli', 'curl', '']))} {flag}{sep}{value}"], [s]
    if kind == "url":
        s = draw(_secret(URL_PASSWORD))
        user = draw(st.text(SAFE, min_size=1, max_size=8))
        scheme = draw(st.sampled_from(["mqtts", "mqtt", "https", "http", "postgresql", "redis"]))
        return [f"connecting to {scheme}://{user}:{s}@{draw(st.sampled_from(WORDS))}.example.com:8883/x"], [s]
    if kind == "header":
        s = draw(_secret(BEARER))
        scheme = draw(st.sampled_from(["Bearer", "Basic", "bearer", "Token", "Digest"]))
        header = draw(st.sampled_from(["Authorization", "authorization", "Proxy-Authorization"]))
        return [f"-H '{header}: {scheme} {s}'" if draw(st.booleans()) else f"{header}: {scheme} {s}"], [s]
    if kind == "pem":
        raw = draw(st.binary(min_size=48, max_size=300))
        body = base64.b64encode(raw).decode()
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        label = draw(
            st.sampled_from(["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY"])
        )
        secrets_ = [ln for ln in lines if len(ln) >= 12]
        if draw(st.booleans()):  # one line, as an escaped JSON string would carry it
            escaped = "\\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"])
            return [f"key dump: {escaped}"], secrets_
        return [f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"], secrets_
    token = ClaimToken(
        draw(st.text("abcdefghijklmnopqrstuvwxyz234567", min_size=8, max_size=8)),
        draw(st.text("abcdefghijklmnopqrstuvwxyz234567", min_size=20, max_size=20)),
        draw(st.text("abcdefghijklmnopqrstuvwxyz234567", min_size=16, max_size=16)),
    )
    text = draw(
        st.sampled_from([str(token), str(token).upper(), qr_payload(token, "fleet.example.com:8884")])
    )
    form = draw(
        st.sampled_from(["provision --claim {}", "provision --claim={}", "claim={}", "token '{}'", "{}"])
    )
    return [form.format(text)], [token.secret, token.secret.upper()]


@pytest.mark.fuzz
@fuzz_settings(examples=300)
@given(form=secret_forms(), before=st.lists(ordinary_line, max_size=2), prefix=words, suffix=words)
def test_no_secret_survives(form, before, prefix, suffix):
    lines, secrets_ = form
    lines = list(lines)
    lines[0] = f"{prefix} {lines[0]}".lstrip()
    lines[-1] = f"{lines[-1]} {suffix}".rstrip()
    # a secret that also occurs by chance in the surrounding text is no test of the redactor
    assume(all("\n".join([*before, *lines]).count(s) <= 1 for s in secrets_))
    with fuzz_example("redact") as ex:
        r = Redactor()
        out = [r.line(ln) for ln in [*before, *lines]]
        text = "\n".join(x for x in out if x is not None)
        leaked = [s for s in secrets_ if s in text]
        if leaked:
            ex.lost(len(leaked))
        assert not leaked, f"{leaked!r} survived in {text!r}"


@pytest.mark.fuzz
@fuzz_settings(examples=300)
@given(lines=st.lists(ordinary_line, min_size=1, max_size=4))
def test_ordinary_lines_untouched(lines):
    with fuzz_example("redact") as ex:
        r = Redactor()
        out = [r.line(ln) for ln in lines]
        if out != lines:
            ex.lost()
        assert out == lines
