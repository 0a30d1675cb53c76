"""Claim tokens: ``<id>.<secret>.<ca-pin>``, short enough to type, safe in a QR code.

- ``id``: 8 characters of lowercase base32; names the claim topics and the MQTT client id.
- ``secret``: 20 characters of base32 (100 bits); the fleet stores only its SHA-256.
- ``ca-pin``: the first 16 base32 characters (80 bits) of the SHA-256 of the fleet CA
  certificate (DER); the device checks the CA it is given, and the broker's certificate
  against that CA, before it sends the secret.

The QR code carries ``dagent-claim:<token>@<host>:<port>``, so one scan gives the device both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

ALPHABET = set("abcdefghijklmnopqrstuvwxyz234567")
ID_LEN, SECRET_LEN, PIN_LEN = 8, 20, 16
QR_PREFIX = "dagent-claim:"


class TokenFormatError(ValueError):
    """The text is not a claim token (typo, truncated, wrong thing scanned)."""


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def ca_pin(ca_der: bytes) -> str:
    """The pin of a CA certificate as carried in tokens."""
    return _b32(hashlib.sha256(ca_der).digest())[:PIN_LEN]


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


@dataclass(frozen=True)
class ClaimToken:
    id: str
    secret: str
    pin: str

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}.{self.pin}"

    @classmethod
    def new(cls, ca_der: bytes) -> ClaimToken:
        return cls(
            _b32(secrets.token_bytes(5))[:ID_LEN], _b32(secrets.token_bytes(13))[:SECRET_LEN], ca_pin(ca_der)
        )

    @classmethod
    def parse(cls, text: str) -> ClaimToken:
        """Parse a typed or scanned token (case, spaces and dashes forgiven)."""
        t = text.strip()
        if t.startswith(QR_PREFIX):
            t = t[len(QR_PREFIX) :].split("@", 1)[0]
        t = t.lower().replace(" ", "").replace("-", "")
        parts = t.split(".")
        if len(parts) != 3:
            raise TokenFormatError(
                "a claim token has three parts separated by dots "
                "(id.secret.pin); check it was copied completely"
            )
        tid, secret, pin = parts
        for name, value, n in (("id", tid, ID_LEN), ("secret", secret, SECRET_LEN), ("pin", pin, PIN_LEN)):
            if len(value) != n or not set(value) <= ALPHABET:
                raise TokenFormatError(
                    f"the token's {name} part must be {n} characters a-z/2-7; "
                    f"got {value!r}: check for typos (0/o, 1/l, 8/b)"
                )
        return cls(tid, secret, pin)


def qr_payload(token: ClaimToken, fleet: str = "") -> str:
    """The text put in a QR code: the token, plus the claim endpoint when known."""
    return f"{QR_PREFIX}{token}" + (f"@{fleet}" if fleet else "")


def parse_qr(text: str) -> tuple[ClaimToken, str]:
    """``dagent-claim:TOKEN[@HOST:PORT]`` (or a bare token) -> (token, fleet or "")."""
    t = text.strip()
    fleet = ""
    if t.startswith(QR_PREFIX) and "@" in t:
        fleet = t.split("@", 1)[1]
    return ClaimToken.parse(t), fleet
