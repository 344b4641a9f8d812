"""The CTI event contract: what clients receive on NATS, WebSocket and Events.Watch.

Rules
1. Every wire event is a frozen msgspec Struct tagged by ``type`` with the name the product's users
   know (CALL_CREATED, AGENT_STATE_CHANGED, ...). Common fields: ``tenant``, ``seq`` (monotonic per
   tenant, assigned by the publisher), ``at``, the ids, and ``version``.
2. Schema evolution: a field added to an event always has a default; decoders ignore fields they
   do not know, so old clients keep working when new fields appear. ``version`` bumps only when a
   field changes meaning.
3. The machines stay generic: they emit ``engine.messages.CtiEvent(name, data)``; ``to_wire``
   turns that into the typed event. A data key that the typed event does not (yet) declare is
   kept in ``data`` rather than lost; a name we do not know becomes ``CtiUnknown`` with its name.
4. The JSON encoding is flat: ``{"type": "CALL_HELD", "tenant": ..., "seq": ..., "call_id": ...}``.
"""

from __future__ import annotations

from typing import Any, ClassVar, get_args

import msgspec

from engine.messages import CtiEvent, Scalar

__all__ = [
    "CtiWireEvent", "CtiBase", "CtiUnknown", "EVENT_TYPES", "WIRE_VERSION", "to_wire", "encode_event",
    "decode_event", "event_kind", "event_id",
]

#: version of the wire contract (bumped only when a field changes meaning)
WIRE_VERSION = 1


class CtiBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=False):
    """Fields every CTI event carries."""

    tenant: str
    #: per-tenant sequence number, strictly increasing; resume after a reconnect from the last seen
    seq: int = 0
    #: when it happened (seconds, the engine's clock)
    at: float = 0.0
    call_id: str = ""
    agent_id: str = ""
    queue_id: str = ""
    version: int = WIRE_VERSION
    #: data keys this version of the contract does not name (kept, never dropped)
    data: dict[str, Scalar] = {}

    #: which entity the event is about: "call", "agent" or "queue" (its subject's middle token)
    kind: ClassVar[str] = "call"


# ---- calls -----------------------------------------------------------------------------------


class CallCreated(CtiBase, tag="CALL_CREATED", frozen=True, kw_only=True):
    caller_id: str = ""
    destination: str = ""
    direction: str = "inbound"


class CallRinging(CtiBase, tag="CALL_RINGING", frozen=True, kw_only=True):
    #: extension or number ringing
    target: str = ""
    #: outbound calls: the trunk of the first attempt ("" otherwise)
    trunk: str = ""


class CallAnswered(CtiBase, tag="CALL_ANSWERED", frozen=True, kw_only=True):
    answered_by: str = ""


class CallHeld(CtiBase, tag="CALL_HELD", frozen=True, kw_only=True):
    #: "phone" when the hold came from the handset, "" when from the API
    by: str = ""


class CallRetrieved(CtiBase, tag="CALL_RETRIEVED", frozen=True, kw_only=True):
    by: str = ""


class CallTransferred(CtiBase, tag="CALL_TRANSFERRED", frozen=True, kw_only=True):
    target: str = ""
    #: "blind" or "attended"
    transfer_kind: str = msgspec.field(default="", name="kind")


class CallConsultStarted(CtiBase, tag="CALL_CONSULT_STARTED", frozen=True, kw_only=True):
    target: str = ""


class CallConsultAnswered(CtiBase, tag="CALL_CONSULT_ANSWERED", frozen=True, kw_only=True):
    target: str = ""


class CallConsultEnded(CtiBase, tag="CALL_CONSULT_ENDED", frozen=True, kw_only=True):
    pass


class CallParked(CtiBase, tag="CALL_PARKED", frozen=True, kw_only=True):
    slot: str = ""


class CallPickedUp(CtiBase, tag="CALL_PICKED_UP", frozen=True, kw_only=True):
    extension: str = ""
    #: the park slot it was picked up from ("" for a directed or group pickup of a ringing call)
    slot: str = ""
    #: "slot" (parked call), "directed" (a call ringing one extension) or "group" (a pickup group)
    kind: str = ""
    #: directed/group pickup: the extension that was ringing
    picked_from: str = ""


class CallParkTimeout(CtiBase, tag="CALL_PARK_TIMEOUT", frozen=True, kw_only=True):
    """Nobody picked the parked call up in time: it rings ``target`` (the parker, or later the
    fallback destination)."""

    slot: str = ""
    target: str = ""


class CallConferenced(CtiBase, tag="CALL_CONFERENCED", frozen=True, kw_only=True):
    room: str = ""
    #: a flow's conference node: the caller joined with the moderator PIN (docs/conferences.md)
    moderator: bool = False


class _RecordingEvent(CtiBase, frozen=True, kw_only=True):
    """Fields of every recording event (docs/recordings.md)."""

    recording_id: str = ""
    #: the file on the media server (the engine chose it; clients fetch audio via GetRecording)
    path: str = ""
    #: who started it: "agent:<id>", "user:<subject>", "auto:queue:<id>", "auto:extension:<ext>"
    by: str = ""
    #: always-on (compliance) recording
    compliance: bool = False
    #: the extension the caller talks to ("" when none)
    extension: str = ""


class CallRecordingConsent(_RecordingEvent, tag="CALL_RECORDING_CONSENT", frozen=True, kw_only=True):
    """The consent announcement plays; recording starts when it finished (CALL_RECORDING_STARTED)."""

    file: str = ""


class CallRecordingStarted(_RecordingEvent, tag="CALL_RECORDING_STARTED", frozen=True, kw_only=True):
    pass


class CallRecordingPaused(_RecordingEvent, tag="CALL_RECORDING_PAUSED", frozen=True, kw_only=True):
    pass


class CallRecordingResumed(_RecordingEvent, tag="CALL_RECORDING_RESUMED", frozen=True, kw_only=True):
    #: masked seconds so far
    paused_s: float = 0.0


class CallRecordingFailed(_RecordingEvent, tag="CALL_RECORDING_FAILED", frozen=True, kw_only=True):
    """A recording waiting for its consent announcement was given up (nothing was recorded)."""

    #: "consent_timeout": the switch did not report the announcement's end in time
    reason: str = ""


class CallRecordingStopped(_RecordingEvent, tag="CALL_RECORDING_STOPPED", frozen=True, kw_only=True):
    #: "stopped" (a command), "call_ended", or the media server's Record-Completion-Cause
    reason: str = ""
    started_at: float = 0.0
    duration_s: float = 0.0
    paused_s: float = 0.0


class CallInFlow(CtiBase, tag="CALL_IN_FLOW", frozen=True, kw_only=True):
    flow_id: str = ""


class CallFlowEnded(CtiBase, tag="CALL_FLOW_ENDED", frozen=True, kw_only=True):
    flow_id: str = ""
    #: the flow node that ended the run
    node: str = ""
    #: what the flow decided (the outcome's type name)
    outcome: str = ""


class CallOverflowed(CtiBase, tag="CALL_OVERFLOWED", frozen=True, kw_only=True):
    target: str = ""
    reason: str = ""


class CallEnded(CtiBase, tag="CALL_ENDED", frozen=True, kw_only=True):
    #: answered, abandoned, no_answer, busy, failed, overflowed
    disposition: str = ""
    #: Q.850 hangup cause
    cause: str = ""


# ---- queues ----------------------------------------------------------------------------------


class QueueEntered(CtiBase, tag="QUEUE_ENTERED", frozen=True, kw_only=True):
    priority: int = 0
    #: 1-based position on entry
    position: int = 0
    kind: ClassVar[str] = "queue"


class QueueLeft(CtiBase, tag="QUEUE_LEFT", frozen=True, kw_only=True):
    #: answered, abandoned, overflowed, ...
    outcome: str = ""
    wait_s: float = 0.0
    kind: ClassVar[str] = "queue"


class QueueOfferLost(CtiBase, tag="QUEUE_OFFER_LOST", frozen=True, kw_only=True):
    """A reservation the queue asked an agent for got no answer: released, the call is retried."""

    offer_id: str = ""
    kind: ClassVar[str] = "queue"


class QueueConfigChanged(CtiBase, tag="QUEUE_CONFIG_CHANGED", frozen=True, kw_only=True):
    """A running queue took new parameters (UpdateQueueConfig)."""

    strategy: str = ""
    kind: ClassVar[str] = "queue"


# ---- agents ----------------------------------------------------------------------------------


class AgentStateChanged(CtiBase, tag="AGENT_STATE_CHANGED", frozen=True, kw_only=True):
    #: LOGGED_OUT, AVAILABLE, RESERVED, ON_CALL, WRAP_UP, NOT_READY
    state: str = ""
    previous: str = ""
    #: not-ready reason
    reason: str | None = None
    kind: ClassVar[str] = "agent"


class AgentDeviceChanged(CtiBase, tag="AGENT_DEVICE_CHANGED", frozen=True, kw_only=True):
    registered: bool = False
    contact: str | None = None
    kind: ClassVar[str] = "agent"


class AgentOfferMissed(CtiBase, tag="AGENT_OFFER_MISSED", frozen=True, kw_only=True):
    reason: str = ""
    missed: int = 0
    kind: ClassVar[str] = "agent"


class AgentLateAnswer(CtiBase, tag="AGENT_LATE_ANSWER", frozen=True, kw_only=True):
    kind: ClassVar[str] = "agent"


class AgentCallLost(CtiBase, tag="AGENT_CALL_LOST", frozen=True, kw_only=True):
    """The agent's call stopped answering (probe timeout): the agent leaves it."""

    reason: str = ""
    kind: ClassVar[str] = "agent"


# ---- engine ----------------------------------------------------------------------------------


class ActorError(CtiBase, tag="ACTOR_ERROR", frozen=True, kw_only=True):
    """An actor's step raised; it resumed from its last good state (see docs/actors.md)."""

    actor_kind: str = msgspec.field(default="", name="kind")
    id: str = ""
    error: str = ""
    message: str = ""
    restarts: int = 0


class CallTrunkSeized(CtiBase, tag="CALL_TRUNK_SEIZED", frozen=True, kw_only=True):
    """An outbound call dials out through ``trunk`` (first attempt or failover)."""

    trunk: str = ""
    #: the number as sent to the trunk (after the route's strip/prepend)
    number: str = ""


class CallTrunkFailover(CtiBase, tag="CALL_TRUNK_FAILOVER", frozen=True, kw_only=True):
    """``from_trunk`` failed with ``cause`` before answering; the call now dials ``to_trunk``."""

    from_trunk: str = ""
    to_trunk: str = ""
    cause: str = ""


class CallContact(CtiBase, tag="CALL_CONTACT", frozen=True, kw_only=True):
    """Who is calling, by the tenant's CRM (the contact lookup, ``adapters/webhooks/lookup.py``):
    published once the answer arrives, and again with ``agent_id`` for each agent the call rings.
    The contact is ``data``: the answer's scalar keys as the CRM chose them (at most 32, strings
    cut at 1,024 characters, nested values dropped), its ``name`` as ``contact_name``. They stay
    in ``data`` on purpose: the keys are the CRM's, not the contract's, and one place holds them
    all (a declared field would move its key out of ``data``)."""


class VoicemailNew(CtiBase, tag="VOICEMAIL_NEW", frozen=True, kw_only=True):
    """A caller left a message (docs/voicemail.md); ``message_id`` is the call id, ``path`` the file
    on the media server; ``ended``: why recording stopped (silence/limit/hangup: the switch's
    Record-Completion-Cause, "hangup" or "timeout")."""

    box: str = ""
    message_id: str = ""
    caller_id: str = ""
    duration_s: float = 0.0
    path: str = ""
    ended: str = ""


class VoicemailAbandoned(CtiBase, tag="VOICEMAIL_ABANDONED", frozen=True, kw_only=True):
    """The caller reached a mailbox but left no message (hung up before or at the beep, or recorded
    less than the node's ``min_length_s``)."""

    box: str = ""
    caller_id: str = ""
    duration_s: float = 0.0
    reason: str = ""


class VoicemailAccess(CtiBase, tag="VOICEMAIL_ACCESS", frozen=True, kw_only=True):
    """A caller reached the voicemail menu of ``box`` (a flow's voicemail_access node); the node's
    voicemail service loads the mailbox for the call. Says nothing about the PIN yet."""

    box: str = ""


class VoicemailSettings(CtiBase, tag="VOICEMAIL_SETTINGS", frozen=True, kw_only=True):
    """A caller is about to leave a message in ``box`` with the mailbox's own greeting and max
    length (an unanswered extension); the node's voicemail service sends them to the call."""

    box: str = ""


class VoicemailSaved(CtiBase, tag="VOICEMAIL_SAVED", frozen=True, kw_only=True):
    """The owner saved a message from the phone menu (new -> saved); the service stores it."""

    box: str = ""
    message_id: str = ""


class VoicemailDeleted(CtiBase, tag="VOICEMAIL_DELETED", frozen=True, kw_only=True):
    """The owner deleted a message from the phone menu; the service deletes it."""

    box: str = ""
    message_id: str = ""


class VoicemailPinOk(CtiBase, tag="VOICEMAIL_PIN_OK", frozen=True, kw_only=True):
    """The owner's PIN was right at the phone menu (the wrong-PIN count is cleared)."""

    box: str = ""


class VoicemailPinFailed(CtiBase, tag="VOICEMAIL_PIN_FAILED", frozen=True, kw_only=True):
    """A wrong PIN at the phone menu of ``box``; the service counts them across calls and locks
    the mailbox after too many (docs/voicemail.md)."""

    box: str = ""


# ---- conference rooms (#10 part 3; engine/fsm/conference.py, docs/conferences.md) -----------
# Filed under "call" subjects: member events carry the member's call_id (room-level ones "-").


class ConferenceStarted(CtiBase, tag="CONFERENCE_STARTED", frozen=True, kw_only=True):
    room: str = ""
    room_uuid: str = ""


class ConferenceEnded(CtiBase, tag="CONFERENCE_ENDED", frozen=True, kw_only=True):
    room: str = ""
    room_uuid: str = ""
    #: most members at once, members joined in all, whether it ever ran (a moderator came)
    peak: int = 0
    joined: int = 0
    started: bool = False
    duration_s: float = 0.0


class ConferenceMemberJoined(CtiBase, tag="CONFERENCE_MEMBER_JOINED", frozen=True, kw_only=True):
    room: str = ""
    member_id: int = 0
    moderator: bool = False
    caller_id: str = ""
    #: members in the room after the join
    members: int = 0


class ConferenceMemberLeft(CtiBase, tag="CONFERENCE_MEMBER_LEFT", frozen=True, kw_only=True):
    room: str = ""
    member_id: int = 0
    kicked: bool = False
    #: time in the room
    seconds: float = 0.0


class ConferenceMemberMuted(CtiBase, tag="CONFERENCE_MEMBER_MUTED", frozen=True, kw_only=True):
    room: str = ""
    member_id: int = 0


class ConferenceMemberUnmuted(CtiBase, tag="CONFERENCE_MEMBER_UNMUTED", frozen=True, kw_only=True):
    room: str = ""
    member_id: int = 0


class ConferenceMemberKicked(CtiBase, tag="CONFERENCE_MEMBER_KICKED", frozen=True, kw_only=True):
    room: str = ""
    member_id: int = 0
    seconds: float = 0.0


class ConferenceFull(CtiBase, tag="CONFERENCE_FULL", frozen=True, kw_only=True):
    """A non-moderator's join took the room over its ``max_members``: the engine asks the switch to
    kick that member (its KICKED and LEFT follow)."""

    room: str = ""
    member_id: int = 0
    #: members in the room with this one
    members: int = 0
    max_members: int = 0


class ConferenceFloorChanged(CtiBase, tag="CONFERENCE_FLOOR_CHANGED", frozen=True, kw_only=True):
    room: str = ""
    #: the member holding the floor now (0: nobody)
    member_id: int = 0


class CtiUnknown(CtiBase, tag="UNKNOWN", frozen=True, kw_only=True):
    """An event whose name this version of the contract does not know."""

    name: str = ""


CtiWireEvent = (
    CallCreated | CallRinging | CallAnswered | CallHeld | CallRetrieved | CallTransferred
    | CallConsultStarted | CallConsultAnswered | CallConsultEnded | CallParked | CallPickedUp | CallParkTimeout
    | CallConferenced | CallRecordingConsent | CallRecordingStarted | CallRecordingPaused
    | CallRecordingResumed | CallRecordingStopped | CallRecordingFailed | CallInFlow | CallFlowEnded
    | CallOverflowed | CallTrunkSeized | CallTrunkFailover | CallContact | VoicemailNew | VoicemailAbandoned
    | VoicemailAccess | VoicemailSettings | VoicemailSaved | VoicemailDeleted | VoicemailPinOk | VoicemailPinFailed
    | CallEnded | QueueEntered | QueueLeft | AgentStateChanged | AgentDeviceChanged
    | AgentOfferMissed | AgentLateAnswer | AgentCallLost | QueueOfferLost | QueueConfigChanged | ActorError | CtiUnknown
    | ConferenceStarted | ConferenceEnded | ConferenceMemberJoined | ConferenceMemberLeft
    | ConferenceMemberMuted | ConferenceMemberUnmuted | ConferenceMemberKicked | ConferenceFull | ConferenceFloorChanged
)

#: name -> Struct class
EVENT_TYPES: dict[str, type[CtiBase]] = {
    t.__struct_config__.tag: t for t in get_args(CtiWireEvent)
}

_BASE_FIELDS = frozenset(CtiBase.__struct_fields__)
#: per class: wire name of each declared non-base field -> attribute name
_EXTRA: dict[type, dict[str, str]] = {}
for _cls in EVENT_TYPES.values():
    _names = dict(zip(_cls.__struct_encode_fields__, _cls.__struct_fields__, strict=True))
    _EXTRA[_cls] = {wire: attr for wire, attr in _names.items() if attr not in _BASE_FIELDS}

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(CtiWireEvent)


#: (class, data keys) -> True when every key is a declared field whose wire name is its attribute
_DIRECT: dict[tuple[type, tuple[str, ...]], bool] = {}


def _direct(cls: type, keys: tuple[str, ...]) -> bool:
    known = _EXTRA[cls]
    ok = cls is not CtiUnknown and all(known.get(k) == k for k in keys)
    if len(_DIRECT) < 4096:
        _DIRECT[(cls, keys)] = ok
    return ok


def to_wire(event: CtiEvent, seq: int | None = None) -> CtiBase:
    """The typed wire event for a machine's generic ``CtiEvent`` (``seq`` overrides the event's)."""
    cls = EVENT_TYPES.get(event.name, CtiUnknown)
    data = event.data
    keys = tuple(data)
    direct = _DIRECT.get((cls, keys))
    if direct is None:
        direct = _direct(cls, keys)
    if direct:  # the common case: every data key is a declared field (no renames, no leftovers)
        fields: dict[str, Any] = data  # declared fields of cls, not its ``data`` dict
        try:
            return cls(tenant=event.tenant, seq=event.seq if seq is None else seq, at=event.at,
                       call_id=event.call_id, agent_id=event.agent_id, queue_id=event.queue_id,
                       version=WIRE_VERSION, **fields)
        except TypeError:  # pragma: no cover - a wrong value type: the general path below decides
            pass
    known = _EXTRA[cls]
    kwargs: dict[str, Any] = {}
    rest: dict[str, Scalar] = {}
    for key, value in event.data.items():
        attr = known.get(key)
        if attr is None:
            rest[key] = value
        else:
            kwargs[attr] = value
    if cls is CtiUnknown:
        kwargs["name"] = event.name
    try:
        return cls(tenant=event.tenant, seq=event.seq if seq is None else seq, at=event.at,
                   call_id=event.call_id, agent_id=event.agent_id, queue_id=event.queue_id,
                   version=WIRE_VERSION, data=rest, **kwargs)
    except TypeError:  # pragma: no cover - a machine sent a value of the wrong type: keep it all
        return CtiUnknown(tenant=event.tenant, seq=event.seq if seq is None else seq, at=event.at,
                          call_id=event.call_id, agent_id=event.agent_id, queue_id=event.queue_id,
                          name=event.name, data=dict(event.data))


def event_kind(event: CtiBase) -> str:
    """"call", "agent" or "queue": the entity the event's subject is filed under."""
    return type(event).kind


def event_id(event: CtiBase) -> str:
    """The id of the entity the event is about (its subject's fourth token)."""
    kind = type(event).kind
    value = event.call_id if kind == "call" else event.agent_id if kind == "agent" else event.queue_id
    return value or event.call_id or event.agent_id or event.queue_id or "-"


def event_name(event: CtiBase) -> str:
    name = type(event).__struct_config__.tag
    return event.name if isinstance(event, CtiUnknown) else str(name)


def encode_event(event: CtiBase) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> CtiBase:
    """Decode a wire event; raises ``msgspec.ValidationError``/``DecodeError`` on bad input."""
    return _decoder.decode(data)
