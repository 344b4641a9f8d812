"""W3C trace context (``traceparent``) values: parsing and the per-call trace id rule. Pure.

A call's trace id is, by default, derived from its tenant and call id (``derived_trace_id``), so
every process (shard hosts, the CTI publisher, the tracer) computes the same id without sharing
state. When a call arrives carrying a ``traceparent`` (a FreeSWITCH channel variable
``traceparent`` / ``sip_h_traceparent``, or the ``traceparent`` of an API request that originates
it), the call *resumes* that trace: the call machine copies the value into its CALL_CREATED CTI
event, and the publisher and the tracer use its trace id (and the tracer its span as the root's
parent) for the whole call.

Only well-formed values are honoured (https://www.w3.org/TR/trace-context/#traceparent-header):
``version-traceid-parentid-flags``, lowercase hex, version ``ff`` forbidden, ids not all zero.
Anything else is ignored: a bad header from a SIP peer never breaks a call.
"""

from __future__ import annotations

import functools
import hashlib
import re

__all__ = ["TRACEPARENT_VARIABLES", "derived_trace_id", "incoming_traceparent", "parse_traceparent"]

#: channel variables (without ``variable_``) that may carry an incoming trace context, in order
TRACEPARENT_VARIABLES = ("traceparent", "sip_h_traceparent", "sip_h_X-Traceparent")

_TP = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def parse_traceparent(value: str) -> tuple[str, str] | None:
    """``(trace_id_hex, parent_span_id_hex)`` of a valid ``traceparent``, else None."""
    if not value or len(value) > 512:
        return None
    m = _TP.fullmatch(value.strip())
    if m is None:
        return None
    version, trace, span, _flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace == "0" * 32 or span == "0" * 16:
        return None
    return trace, span


def incoming_traceparent(variables: dict[str, str]) -> str:
    """The first valid trace context among a channel's variables ("" when none)."""
    for key in TRACEPARENT_VARIABLES:
        value = variables.get(key, "")
        if value and parse_traceparent(value) is not None:
            return value.strip()
    return ""


@functools.lru_cache(maxsize=65536)
def derived_trace_id(tenant: str, call_id: str) -> str:
    """The default trace id of a call (32 hex): blake2b of ``tenant/call_id``."""
    return hashlib.blake2b(f"{tenant}/{call_id or '-'}".encode(), digest_size=16).hexdigest()
