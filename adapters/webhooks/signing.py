"""HMAC-SHA256 request signatures (the Stripe scheme, with our header name).

The scheme, exactly:

    Callengine-Signature: t=<unix seconds, integer>,v1=<lowercase hex HMAC-SHA256>
    signed bytes = ASCII(t) + b"." + raw request body
    key          = the webhook's secret, UTF-8 encoded

A receiver recomputes the HMAC over the raw body it received (before any JSON parsing), compares
with ``hmac.compare_digest`` and refuses a timestamp further than its tolerance (default 300 s)
from its clock, which bounds replays. Every attempt is signed afresh (new ``t``); the
``Callengine-Delivery`` header stays the same across retries of one event, for deduplication.
Several ``v1=`` entries may appear during a secret rotation; one match is enough.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["sign", "signature_header", "verify_signature", "SignatureError", "DEFAULT_TOLERANCE_S"]

DEFAULT_TOLERANCE_S = 300.0


class SignatureError(ValueError):
    pass


def sign(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), str(int(timestamp)).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={int(timestamp)},v1={sign(secret, timestamp, body)}"


def verify_signature(secret: str, header: str, body: bytes, *, now: float,
                     tolerance_s: float = DEFAULT_TOLERANCE_S) -> None:
    """Raise ``SignatureError`` unless ``header`` signs ``body`` with ``secret`` within tolerance."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError as exc:
                raise SignatureError(f"bad timestamp {value!r}") from exc
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("header lacks t= or v1=")
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"timestamp {timestamp} is more than {tolerance_s:g} s from now")
    expected = sign(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("no signature matches")
