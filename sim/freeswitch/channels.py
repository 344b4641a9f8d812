"""Emulated FreeSWITCH channels: state, and the header values FreeSWITCH derives from it.

Rules: pure data and pure functions (no trio, no I/O) so that the server and tests can reason
about a channel without running anything. Values follow the real 1.10.12 recordings: timestamps
in microseconds since the epoch, ``0`` for "never", state names as FreeSWITCH prints them.

Theory: a :class:`Channel` holds what ``switch_channel_event_set_data`` reads (state, call state,
caller profile, times, peer). :func:`channel_values` renders the Channel-*/Caller-* headers;
:func:`other_leg_values` the Other-Leg-* block of the bridged peer; :func:`show_row` one row of
``show channels as json``. Event header ORDER comes from templates.py, not from here.
"""

from __future__ import annotations

import uuid as _uuid
from dataclasses import dataclass, field

# Channel-State -> Channel-State-Number (switch_channel_state_t)
STATE_NUMBERS = {
    "CS_NEW": 0, "CS_INIT": 1, "CS_ROUTING": 2, "CS_SOFT_EXECUTE": 3, "CS_EXECUTE": 4,
    "CS_EXCHANGE_MEDIA": 5, "CS_PARK": 6, "CS_CONSUME_MEDIA": 7, "CS_HIBERNATE": 8,
    "CS_RESET": 9, "CS_HANGUP": 10, "CS_REPORTING": 11, "CS_DESTROY": 12,
}
# Channel-Call-State -> Channel-Call-State-Number (switch_channel_callstate_t)
CALLSTATE_NUMBERS = {"DOWN": 0, "DIALING": 1, "RINGING": 2, "EARLY": 3, "ACTIVE": 4, "HELD": 5,
                     "RING_WAIT": 6, "HANGUP": 7, "UNHELD": 8}


def new_uuid() -> str:
    return str(_uuid.uuid4())


@dataclass
class Channel:
    uuid: str
    name: str
    direction: str                 # "inbound" (towards FS) or "outbound" (originated by FS)
    caller_number: str
    caller_name: str
    destination: str
    created_us: int
    context: str = "public"
    source: str = "mod_sofia"
    network_addr: str = "127.0.0.1"
    state: str = "CS_INIT"
    call_state: str = "DOWN"
    answer_state: str = "ringing"
    answered_us: int = 0
    progress_us: int = 0
    progress_media_us: int = 0
    hangup_us: int = 0
    bridged_us: int = 0
    transfer_us: int = 0
    last_hold_us: int = 0
    hold_accum_us: int = 0
    peer: str | None = None          # uuid of the bridged leg
    originator: str | None = None    # uuid of the leg that originated us (bridge app)
    held: bool = False
    parked: bool = False
    hangup_cause: str | None = None
    application: str = ""
    application_data: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    dtmf_buffer: list[str] = field(default_factory=list)
    recording: str | None = None
    #: uuid_record mask: the recording runs but writes silence (no event, as in FreeSWITCH)
    record_masked: bool = False
    conference: str | None = None
    alive: bool = True

    @property
    def up(self) -> bool:
        return self.alive and self.hangup_cause is None


def _profile(ch: Channel, prefix: str) -> list[tuple[str, str]]:
    return [
        (f"{prefix}-Direction", ch.direction),
        (f"{prefix}-Logical-Direction", ch.direction),
        (f"{prefix}-Username", ch.caller_number),
        (f"{prefix}-Dialplan", "XML"),
        (f"{prefix}-Caller-ID-Name", ch.caller_name),
        (f"{prefix}-Caller-ID-Number", ch.caller_number),
        (f"{prefix}-Orig-Caller-ID-Name", ch.caller_name),
        (f"{prefix}-Orig-Caller-ID-Number", ch.caller_number),
        (f"{prefix}-Callee-ID-Name", ch.variables.get("callee_id_name", "Outbound Call")),
        (f"{prefix}-Callee-ID-Number", ch.destination),
        (f"{prefix}-Network-Addr", ch.network_addr),
        (f"{prefix}-ANI", ch.caller_number),
        (f"{prefix}-Destination-Number", ch.destination),
        (f"{prefix}-Unique-ID", ch.uuid),
        (f"{prefix}-Source", ch.source),
        (f"{prefix}-Transfer-Source", ch.variables.get("transfer_source", "")),
        (f"{prefix}-Context", ch.context),
        (f"{prefix}-RDNIS", ch.variables.get("rdnis", "")),
        (f"{prefix}-Channel-Name", ch.name),
        (f"{prefix}-Profile-Index", "1"),
        (f"{prefix}-Profile-Created-Time", str(ch.created_us)),
        (f"{prefix}-Channel-Created-Time", str(ch.created_us)),
        (f"{prefix}-Channel-Answered-Time", str(ch.answered_us)),
        (f"{prefix}-Channel-Progress-Time", str(ch.progress_us)),
        (f"{prefix}-Channel-Progress-Media-Time", str(ch.progress_media_us)),
        (f"{prefix}-Channel-Hangup-Time", str(ch.hangup_us)),
        (f"{prefix}-Channel-Transfer-Time", str(ch.transfer_us)),
        (f"{prefix}-Channel-Resurrect-Time", "0"),
        (f"{prefix}-Channel-Bridged-Time", str(ch.bridged_us)),
        (f"{prefix}-Channel-Last-Hold", str(ch.last_hold_us)),
        (f"{prefix}-Channel-Hold-Accum", str(ch.hold_accum_us)),
        (f"{prefix}-Screen-Bit", "true"),
        (f"{prefix}-Privacy-Hide-Name", "false"),
        (f"{prefix}-Privacy-Hide-Number", "false"),
    ]


def channel_values(ch: Channel) -> dict[str, str]:
    vals = {
        "Channel-State": ch.state,
        "Channel-Call-State": ch.call_state,
        "Channel-State-Number": str(STATE_NUMBERS.get(ch.state, 0)),
        "Channel-Name": ch.name,
        "Unique-ID": ch.uuid,
        "Call-Direction": ch.direction,
        "Presence-Call-Direction": ch.direction,
        "Channel-HIT-Dialplan": "true" if ch.direction == "inbound" else "false",
        "Channel-Presence-ID": f"{ch.caller_number}@127.0.0.1",
        "Channel-Call-UUID": ch.uuid,
        "Answer-State": ch.answer_state,
        "Channel-Read-Codec-Name": "PCMU",
        "Channel-Read-Codec-Rate": "8000",
        "Channel-Read-Codec-Bit-Rate": "64000",
        "Channel-Write-Codec-Name": "PCMU",
        "Channel-Write-Codec-Rate": "8000",
        "Channel-Write-Codec-Bit-Rate": "64000",
        "Channel-Call-State-Number": str(CALLSTATE_NUMBERS.get(ch.call_state, 0)),
    }
    if ch.hangup_cause:
        vals["Hangup-Cause"] = ch.hangup_cause
    vals.update(_profile(ch, "Caller"))
    return vals


def other_leg_values(peer: Channel, originator_side: bool) -> list[tuple[str, str]]:
    """The Other-Leg block as FreeSWITCH appends it after the caller profile."""
    block = [("Other-Type", "originatee" if originator_side else "originator")]
    block += [(k, v) for k, v in _profile(peer, "Other-Leg") if not k.endswith("-Profile-Index")]
    return block


def show_row(ch: Channel, created_local: str, hostname: str) -> dict[str, str]:
    """One row of ``show channels as json`` (keys and order as FS 1.10.12)."""
    return {
        "uuid": ch.uuid, "direction": ch.direction, "created": created_local,
        "created_epoch": str(ch.created_us // 1_000_000), "name": ch.name, "state": ch.state,
        "cid_name": ch.caller_name, "cid_num": ch.caller_number, "ip_addr": ch.network_addr,
        "dest": ch.destination, "application": ch.application,
        "application_data": ch.application_data, "dialplan": "XML", "context": ch.context,
        "read_codec": "PCMU", "read_rate": "8000", "read_bit_rate": "64000",
        "write_codec": "PCMU", "write_rate": "8000", "write_bit_rate": "64000", "secure": "",
        "hostname": hostname, "presence_id": "", "presence_data": "", "accountcode": "",
        "callstate": ch.call_state, "callee_name": "", "callee_num": "", "callee_direction": "",
        "call_uuid": ch.uuid, "sent_callee_name": "", "sent_callee_num": "",
        "initial_cid_name": ch.caller_name, "initial_cid_num": ch.caller_number,
        "initial_ip_addr": ch.network_addr, "initial_dest": ch.destination,
        "initial_dialplan": "XML", "initial_context": ch.context,
    }


_CALL_FIELDS = ["uuid", "direction", "created", "created_epoch", "name", "state", "cid_name",
                "cid_num", "ip_addr", "dest", "presence_id", "presence_data", "accountcode",
                "callstate", "callee_name", "callee_num", "callee_direction", "call_uuid",
                "hostname", "sent_callee_name", "sent_callee_num"]


def show_call_row(a: dict[str, str], b: dict[str, str] | None) -> dict[str, str]:
    """One row of ``show calls as json``: the A leg's fields, then b_* of the peer."""
    row = {k: a.get(k, "") for k in _CALL_FIELDS}
    for k in _CALL_FIELDS:
        if k in ("call_uuid", "hostname"):
            continue
        row[f"b_{k}"] = (b or {}).get(k, "")
    row["call_created_epoch"] = a["created_epoch"] if b else ""
    return row
