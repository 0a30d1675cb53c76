"""Secret redaction applied on the device before any log line leaves it.

Covers ``key=value`` / ``key: value`` / ``"key": "value"`` pairs whose key names a secret
(password, token, secret, api key, private key, Wi-Fi PSK...), bearer/basic authorization
headers, credentials in URLs, JWTs, AWS access keys, the project's own claim tokens and whole PEM
blocks (multi-line, so redaction is stateful: use one :class:`Redactor` per stream, line by line).
A secret key's value is masked in every form it is written: ``key=value``, ``key: value``, quoted
(``psk 'value'``, ``password "value"``) and command-line flags (``--password value``,
``--password=value``).
"""

from __future__ import annotations

import re

from provisioning.token import ID_LEN, PIN_LEN, SECRET_LEN

MASK = "[REDACTED]"
PEM_MASK = "[REDACTED PEM BLOCK]"

# a key is secret when its lower-cased name contains one of these
_SECRET_WORD = re.compile(
    r"passw(?:or)?d|passphrase|pass|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|"
    r"private[_-]?key|client[_-]?secret|credential|psk|auth|session[_-]?key|cookie"
)
# Pairs are found with simple linear patterns and the key tested separately: a pattern that has to
# find the secret word inside an arbitrary key backtracks quadratically (30 s for 50 MB of logs).
# "key": "value"  (JSON)
_JSON_PAIR = re.compile(r'"([\w.-]+)"(\s*:\s*)"((?:[^"\\]|\\.)*)"')
# key = "value", key='value', key=value, key: value (TOML, INI, wpa_supplicant, env, headers): found
# by a linear scan (_sub_pairs), so a non-secret pair never hides a secret one inside its value
_KEY_END = re.compile(r"key(?![a-z0-9])")  # "key", "ssh_key", "wifi.key" but not "keyframe"
# the separator is ``=``/``:``, blanks before a quoted value (``psk 'x'``), or blanks after a flag
# (group 1, ``--password x``) when a value, not another ``--flag``, follows
_KEY_SEP = re.compile(
    r"(?<![\w.-])(?:(-[\w.-]*+)[ \t]++(?!--)(?=\S)|([\w.-]++)(?:\s*+[:=]\s*+|[ \t]++(?=['\"])))"
)
_VALUE = re.compile(r"(['\"])(.*?)\1|(?!\[REDACTED)([^\s,;&'\"}\]]+)")
_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic|Token|Digest)\s+[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
_URL_CREDS = re.compile(r"\b([a-z][a-z0-9+.-]*://[^/\s:@]+):([^/\s@]+)@", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")
_AWS_KEY = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
# claim tokens (provisioning/token.py): <id>.<secret>.<pin> in base32, in any case, bare or in a QR text
_CLAIM_TOKEN = re.compile(
    rf"(?<![A-Za-z0-9])[A-Za-z2-7]{{{ID_LEN}}}\.[A-Za-z2-7]{{{SECRET_LEN}}}\."
    rf"[A-Za-z2-7]{{{PIN_LEN}}}(?![A-Za-z0-9])"
)
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]+-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]+-----")


def is_secret(key: str) -> bool:
    """Does a config or log key name hold a secret (password, token, PSK, key, ...)?"""
    low = key.lower()
    return _SECRET_WORD.search(low) is not None or low == "key" or low.endswith(("_key", "-key", ".key"))


def _json_pair(m: re.Match[str]) -> str:
    return f'"{m.group(1)}"{m.group(2)}"{MASK}"' if is_secret(m.group(1)) else m.group(0)


def _sub_pairs(line: str) -> str:
    """Mask the value of every ``key[:=]value``, ``key 'quoted'`` and ``--flag value`` whose key names a
    secret."""
    out: list[str] = []
    pos = i = 0
    while True:
        m = _KEY_SEP.search(line, i)
        if m is None:
            break
        start = m.start()
        own_word = start == 0 or not (line[start - 1].isalnum() or line[start - 1] in "_.-")
        key = 1 if m.group(1) is not None else 2
        if own_word and is_secret(m.group(key)):
            v = _VALUE.match(line, m.end())
            if v is not None:
                out.append(line[pos : m.end()])
                out.append(f"{v.group(1)}{MASK}{v.group(1)}" if v.group(1) else MASK)
                pos = i = v.end()
                continue
        i = m.end(key)  # the value may itself hold a pair: scan on from the separator
    out.append(line[pos:])
    return "".join(out)


def redact_text(line: str) -> str:
    """Redact the secrets on one line (PEM blocks spanning lines need :class:`Redactor`).

    Each pattern runs only when the line holds the word it needs (cheap substring tests first):
    most log lines hold no secret and cost a few microseconds.
    """
    low = line.lower()
    keyish = _SECRET_WORD.search(low) is not None or _KEY_END.search(low) is not None
    if keyish:
        line = _JSON_PAIR.sub(_json_pair, line)
    if "bearer" in low or "basic" in low or "token" in low or "digest" in low:
        line = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {MASK}", line)
    if keyish:
        line = _sub_pairs(line)
    if "://" in line and "@" in line:
        line = _URL_CREDS.sub(lambda m: f"{m.group(1)}:{MASK}@", line)
    if "eyj" in low:
        line = _JWT.sub(MASK, line)
    if "AKIA" in line or "ASIA" in line:
        line = _AWS_KEY.sub(MASK, line)
    if line.count(".") >= 2:
        line = _CLAIM_TOKEN.sub(MASK, line)
    return line


class Redactor:
    """Stateful line redactor: also removes PEM blocks, including escaped ones inside JSON strings."""

    def __init__(self) -> None:
        self.in_pem = False
        self.redacted_lines = 0

    def line(self, text: str) -> str | None:
        """The redacted line, or ``None`` when the whole line falls inside a PEM block."""
        original = text
        if self.in_pem:
            end = _PEM_END.search(text)
            if not end:
                self.redacted_lines += 1
                return None
            self.in_pem = False
            text = PEM_MASK + text[end.end() :]
        while "-----BEGIN" in text:
            begin = _PEM_BEGIN.search(text)
            if not begin:
                break
            end = _PEM_END.search(text, begin.end())
            if end:
                text = text[: begin.start()] + PEM_MASK + text[end.end() :]
            else:
                self.in_pem = True
                text = text[: begin.start()] + PEM_MASK
                break
        text = redact_text(text)
        if text != original:
            self.redacted_lines += 1
        return text
