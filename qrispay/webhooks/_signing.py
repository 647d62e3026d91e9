"""Signing webhooks as the Standard Webhooks specification says.

A secret is ``whsec_`` followed by base64 of the key. The signed content is
``{webhook-id}.{webhook-timestamp}.{body}``; a signature is ``v1,`` and base64
of its HMAC-SHA256. With several secrets (a rotation under way), the header
holds one signature per secret, space-separated, so a receiver that knows
either one verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping

__all__ = ["PREFIX", "WebhookSigner", "parse_secret", "verify"]

PREFIX = "whsec_"
#: How far a timestamp may be from the receiver's clock, as the specification advises.
TOLERANCE = 5 * 60


def parse_secret(secret: str) -> bytes:
    """The key of a ``whsec_`` secret; ``ValueError`` (which never quotes it)
    for anything else."""
    if not isinstance(secret, str) or not secret.startswith(PREFIX):
        raise ValueError("a webhook secret is 'whsec_' followed by base64")
    try:
        key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is 'whsec_' followed by base64 (it is not)") from None
    if len(key) < 16:
        raise ValueError("a webhook secret's key must be at least 16 bytes")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    content = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


class WebhookSigner:
    """Signs with every secret given (the first is the current one)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._keys = [parse_secret(secret) for secret in secrets]
        if not self._keys:
            raise ValueError("at least one webhook secret is needed")

    def __repr__(self) -> str:
        return f"<WebhookSigner secrets={len(self._keys)}>"

    def signature(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """The ``webhook-signature`` header's value."""
        return " ".join(_signature(key, msg_id, timestamp, body) for key in self._keys)

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """The three Standard Webhooks headers, and the content type."""
        return {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self.signature(msg_id, timestamp, body),
        }


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float, tolerance: int = TOLERANCE
) -> bool:
    """Whether ``headers`` carry a valid signature of ``body`` by ``secret`` and a
    timestamp within ``tolerance`` seconds of ``now`` (Unix time). Header names
    are matched ignoring case."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    # ASCII digits only: "\u00b2" (a latin-1 header byte) passes isdigit(), and int() refuses it.
    digits = stamp.isascii() and stamp.isdigit()
    if not msg_id or not digits or abs(now - int(stamp)) > tolerance:
        return False
    expected = _signature(parse_secret(secret), msg_id, int(stamp), body)
    return any(
        hmac.compare_digest(expected, given)
        for given in lowered.get("webhook-signature", "").split()
    )
