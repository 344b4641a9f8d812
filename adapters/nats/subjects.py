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
import hashlib
import re

__all__ = ["token", "event_subject", "tenant_events", "api_subject", "msg_id", "traceparent",
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


def traceparent(tenant: str, call_id: str, seq: int) -> str:
    """W3C trace context: every event of one call shares a trace id; the span id is per event."""
    trace = _trace_id(tenant, call_id)
    span = f"{(seq or 1) & 0xFFFFFFFFFFFFFFFF:016x}"
    return f"00-{trace}-{span}-01"


@functools.lru_cache(maxsize=65536)
def _trace_id(tenant: str, call_id: str) -> str:
    return hashlib.blake2b(f"{tenant}/{call_id or '-'}".encode(), digest_size=16).hexdigest()
