"""NATS subjects and headers of the CTI contract (pure; no I/O).

- events:   ``cti.<tenant>.<call|agent|queue>.<id>.<EVENT>`` (JetStream stream ``CTI``: ``cti.>``)
- commands: ``api.<tenant>.<Service>.<Method>`` (request-reply, nats micro services)
- headers:  ``Nats-Msg-Id`` = ``<tenant>:<seq>`` (JetStream dedupe), ``traceparent`` (W3C),
            ``Cti-Seq`` (the per-tenant seq, so replay can find it without decoding the body)

A token is what sits between dots; ids and tenants are sanitised so that a ``.``, ``*``, ``>`` or
whitespace in an id can never widen or shift a subject.
"""

from __future__ import annotations

import functools
import re

from engine.tracecontext import derived_trace_id

__all__ = ["token", "event_subject", "tenant_events", "api_subject", "msg_id", "traceparent",
           "header_value", "header_block", "hpub_frame", "cti_frame",
           "SEQ_HEADER", "MSG_ID_HEADER", "TRACE_HEADER"]

SEQ_HEADER = "Cti-Seq"
MSG_ID_HEADER = "Nats-Msg-Id"
TRACE_HEADER = "traceparent"

_BAD = re.compile(r"[.*>\s\x00-\x1f]")


@functools.lru_cache(maxsize=65536)
def token(value: str) -> str:
    """A safe subject token ("-" when empty)."""
    if not value:
        return "-"
    return _BAD.sub("_", value)[:128]


def event_subject(tenant: str, kind: str, entity_id: str, name: str) -> str:
    return f"cti.{token(tenant)}.{kind}.{token(entity_id)}.{token(name)}"


def tenant_events(tenant: str) -> str:
    """Every CTI event of one tenant (a subscription or consumer filter)."""
    return f"cti.{token(tenant)}.>"


def api_subject(tenant: str, service: str, method: str) -> str:
    return f"api.{token(tenant)}.{service}.{method}"


def msg_id(tenant: str, seq: int) -> str:
    return f"{tenant}:{seq}"


def traceparent(tenant: str, call_id: str, seq: int, trace: str = "") -> str:
    """W3C trace context: every event of one call shares a trace id (``trace``: a resumed incoming
    one, else the derived one, engine.tracecontext); the span id is per event."""
    trace = trace or _trace_id(tenant, call_id)
    span = f"{(seq or 1) & 0xFFFFFFFFFFFFFFFF:016x}"
    return f"00-{trace}-{span}-01"


_trace_id = derived_trace_id


# ---------------------------------------------------------------- NATS wire frames (HPUB)
#
# The publisher writes its batches as ready-made protocol frames (one buffer per batch) instead of
# asking nats-py to encode each message: ``HPUB <subject> <header bytes> <total bytes>\r\n``,
# the header block ``NATS/1.0\r\nKey: value\r\n...\r\n``, the payload, ``\r\n``.

_HEADER_BREAKS = str.maketrans({"\r": " ", "\n": " "})


@functools.lru_cache(maxsize=65536)
def header_value(value: str) -> str:
    """A header value that cannot break the header block (CR/LF become spaces)."""
    return value.strip().translate(_HEADER_BREAKS)


def header_block(headers: dict[str, str]) -> bytes:
    """The NATS/1.0 header block for ``headers`` (keys must be tokens; values are sanitised)."""
    lines = ["NATS/1.0"]
    for key, value in headers.items():
        if not key or _BAD.search(key) or ":" in key:
            raise ValueError(f"bad header key {key!r}")
        lines.append(f"{key}: {header_value(value)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def hpub_frame(subject: str, payload: bytes, headers: dict[str, str], reply: str = "") -> bytes:
    """One HPUB protocol frame (``subject`` must already be a valid subject)."""
    hdr = header_block(headers)
    middle = f" {reply}" if reply else ""
    return (f"HPUB {subject}{middle} {len(hdr)} {len(hdr) + len(payload)}\r\n".encode()
            + hdr + payload + b"\r\n")


def cti_frame(subject: str, payload: bytes, tenant: str, call_id: str, seq: int, trace: str = "") -> bytes:
    """The HPUB frame of one CTI event: the same bytes as ``hpub_frame`` with
    ``{Nats-Msg-Id, Cti-Seq, traceparent}``, built without the generic path (the hot loop).
    ``trace``: the call's resumed trace id (see ``traceparent``)."""
    prefix = b"00-%s-" % trace.encode() if trace else _trace_prefix(tenant, call_id)
    hdr = b"%s%d\r\nCti-Seq: %d\r\ntraceparent: %s%016x-01\r\n\r\n" % (
        _msg_id_prefix(tenant), seq, seq, prefix, (seq or 1) & 0xFFFFFFFFFFFFFFFF)
    n = len(hdr)
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (subject.encode(), n, n + len(payload), hdr, payload)


@functools.lru_cache(maxsize=65536)
def _msg_id_prefix(tenant: str) -> bytes:
    return f"NATS/1.0\r\n{MSG_ID_HEADER}: {header_value(tenant)}:".encode()


@functools.lru_cache(maxsize=65536)
def _trace_prefix(tenant: str, call_id: str) -> bytes:
    return f"00-{_trace_id(tenant, call_id)}-".encode()
