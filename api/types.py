"""Request and response types of every API method (defined once; every transport uses them).

Rules
1. Requests are msgspec Structs with ``forbid_unknown_fields`` (a typo is INVALID_ARGUMENT, not
   silently ignored) and constrained fields (lengths, ranges); decoding is the validation.
2. Responses never carry fields a caller's tenant may not see. Added fields always default.
3. The tenant is never a request field: it comes from the caller's token.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from api.store import AgentRecord, Extension, Flow, QueueRecord

Id = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[^\s]+$")]
OptId = Annotated[str, Meta(max_length=128, pattern=r"^[^\s]*$")]
Text = Annotated[str, Meta(max_length=256)]
Timeout = Annotated[float, Meta(gt=0, le=600)]
Digits = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[0-9*#A-Da-d]+$")]


class Req(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class Resp(msgspec.Struct, frozen=True, kw_only=True):
    pass


# ---- CallControl ------------------------------------------------------------------------------


class OriginateRequest(Req, frozen=True, kw_only=True):
    """Click-to-call: ring ``from_extension`` (an agent's own by default), then dial ``to``."""

    to: Id
    from_extension: OptId = ""
    caller_id: OptId = ""
    timeout_s: Timeout = 30.0


class OriginateResponse(Resp, frozen=True, kw_only=True):
    call_id: str


class CallRequest(Req, frozen=True, kw_only=True):
    call_id: Id


class HangupRequest(Req, frozen=True, kw_only=True):
    call_id: Id
    cause: Annotated[str, Meta(max_length=64, pattern=r"^[A-Z_]*$")] = "NORMAL_CLEARING"


class TransferRequest(Req, frozen=True, kw_only=True):
    call_id: Id
    target: Id


class AttendedTransferStartRequest(Req, frozen=True, kw_only=True):
    call_id: Id
    target: Id
    timeout_s: Timeout = 30.0


class ParkRequest(Req, frozen=True, kw_only=True):
    """Park the caller in ``slot`` ("" = the lowest free slot of the tenant); unanswered after
    ``timeout_s`` it rings ``return_to`` (default: who parked it), then ``fallback`` ("" = hang up)."""

    call_id: Id
    slot: OptId = ""
    timeout_s: Timeout = 60.0
    return_to: OptId = ""
    fallback: OptId = ""


class PickupRequest(Req, frozen=True, kw_only=True):
    """Take a call at ``extension`` (an agent: its own, the default). ``kind`` "slot": the call
    parked in ``slot`` (or ``call_id``); "directed": the call ringing ``target``; "group": the
    oldest call ringing another member of the picker's pickup groups."""

    extension: OptId = ""
    kind: Literal["slot", "directed", "group"] = "slot"
    slot: OptId = ""
    target: OptId = ""
    call_id: OptId = ""


class ParkedRequest(Req, frozen=True, kw_only=True):
    pass


class ParkedCall(Resp, frozen=True, kw_only=True):
    slot: str
    call_id: str


class ParkedList(Resp, frozen=True, kw_only=True):
    items: list[ParkedCall]


# ---- Voicemail (docs/voicemail.md) -----------------------------------------------------------------

Pin = Annotated[str, Meta(min_length=4, max_length=12, pattern=r"^[0-9]+$")]


class MailboxRequest(Req, frozen=True, kw_only=True):
    box: Id


class SetMailboxRequest(Req, frozen=True, kw_only=True):
    """Create or update the mailbox of extension ``box`` (a new one needs its PIN set with SetPin
    first or in the same breath: SetPin creates it with the defaults)."""

    box: Id
    greeting: Text = ""
    max_length_s: Annotated[int, Meta(ge=1, le=3600)] = 120
    #: 0 keeps messages until deleted
    retention_days: Annotated[int, Meta(ge=0, le=3650)] = 30


class SetPinRequest(Req, frozen=True, kw_only=True):
    """Set a mailbox's PIN (creating the mailbox with defaults when it has none). Not audited with
    its body, so the PIN never reaches the audit log; the PIN is stored only as a hash. A new PIN
    clears the wrong-PIN count and unlocks a locked mailbox."""

    box: Id
    pin: Pin


class MailboxInfo(Resp, frozen=True, kw_only=True):
    box: str
    greeting: str = ""
    max_length_s: int = 120
    retention_days: int = 30
    new: int = 0
    saved: int = 0
    #: wrong PINs in a row at the phone menu (across calls); the menu refuses every PIN until
    #: ``locked_until`` (unix seconds) once there were too many (docs/voicemail.md); SetPin unlocks
    pin_failures: int = 0
    locked_until: float | None = None


class ListMessagesRequest(Req, frozen=True, kw_only=True):
    box: Id
    #: "" = both folders
    folder: Literal["", "new", "saved"] = ""


class VoicemailMessageInfo(Resp, frozen=True, kw_only=True):
    message_id: str
    box: str
    caller_id: str
    created_at: float
    duration_s: float
    path: str
    folder: str
    expires_at: float | None = None


class VoicemailMessageList(Resp, frozen=True, kw_only=True):
    items: list[VoicemailMessageInfo]


class MessageRequest(Req, frozen=True, kw_only=True):
    box: Id
    message_id: Id


class EraseCallerRequest(Req, frozen=True, kw_only=True):
    """GDPR: delete every message this number left in the tenant's mailboxes."""

    caller_id: Id


class ErasedResponse(Resp, frozen=True, kw_only=True):
    #: messages deleted now (their audio files are listed for removal on the media server)
    erased: int = 0


# ---- Recordings (docs/recordings.md) ---------------------------------------------------------------


class RecordingRequest(Req, frozen=True, kw_only=True):
    recording_id: Id


class ListRecordingsRequest(Req, frozen=True, kw_only=True):
    #: only this call's recordings ("" = all the caller may see)
    call_id: OptId = ""
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


class RecordingInfo(Resp, frozen=True, kw_only=True):
    """A recording's metadata and where to fetch its audio. The file name was chosen by the engine
    (never by a client); ``audio_url`` is the media store's address for it ("" when none is
    configured: the file is then only on the media server, ``path``)."""

    recording_id: str
    call_id: str
    path: str
    audio_url: str = ""
    started_at: float
    stopped_at: float | None = None
    duration_s: float = 0.0
    paused_s: float = 0.0
    started_by: str = ""
    compliance: bool = False
    queue_id: str = ""
    agent_id: str = ""
    extension: str = ""
    stop_reason: str = ""
    retain_until: float = 0.0


class RecordingList(Resp, frozen=True, kw_only=True):
    items: list[RecordingInfo]


class RecordingPolicyRequest(Req, frozen=True, kw_only=True):
    pass


class RecordingPolicyRecord(Req, frozen=True, kw_only=True):
    """The tenant's recording policy (``engine.recordings.RecordingPolicy``; docs/recordings.md)."""

    #: the announcement played before an API-started recording (a file on the media server; "" = none)
    consent: Annotated[str, Meta(max_length=256, pattern=r"^[^\s]*$")] = ""
    retention_days: Annotated[int, Meta(ge=1, le=36_500)] = 90
    agent_control: bool = True
    agent_listen: bool = False
    compliance_stop_roles: list[Literal["admin", "supervisor", "agent"]] = []


class SendDtmfRequest(Req, frozen=True, kw_only=True):
    call_id: Id
    digits: Digits


class JoinConferenceRequest(Req, frozen=True, kw_only=True):
    call_id: Id
    #: the room number (docs/conferences.md); the tenant's rooms only
    room: Id
    #: the room's moderator PIN (joins as moderator) or member PIN
    pin: Annotated[str, Meta(max_length=12, pattern=r"^[0-9]*$")] = ""
    #: staff only: join as moderator without the PIN
    moderator: bool = False


# ---- Conferences (docs/conferences.md) ---------------------------------------------------------


class ListConferencesRequest(Req, frozen=True, kw_only=True):
    pass


class ConferenceRoomRequest(Req, frozen=True, kw_only=True):
    room: Id


class ConferenceMemberRequest(Req, frozen=True, kw_only=True):
    room: Id
    #: FreeSWITCH's Member-ID (Conferences/Get lists them)
    member_id: Annotated[int, Meta(ge=1, le=2**31)]


class ConferenceMemberInfo(Resp, frozen=True, kw_only=True):
    member_id: int
    call_id: str = ""
    caller_id: str = ""
    moderator: bool = False
    muted: bool = False
    joined_at: float = 0.0


class ConferenceRoomInfo(Resp, frozen=True, kw_only=True):
    room: str
    name: str = ""
    #: RUNNING (a moderator came, or the room does not wait for one) / members waiting for one
    running: bool = False
    waiting: bool = False
    max_members: int = 0
    members: list[ConferenceMemberInfo] = []


class ConferenceList(Resp, frozen=True, kw_only=True):
    items: list[ConferenceRoomInfo]


class ConferenceResponse(Resp, frozen=True, kw_only=True):
    room: str
    member_id: int
    action: str


RoomNumber = Annotated[str, Meta(min_length=1, max_length=16, pattern=r"^[0-9]+$")]
Pin = Annotated[str, Meta(max_length=12, pattern=r"^[0-9]*$")]


class PutConferenceRoomRequest(Req, frozen=True, kw_only=True):
    """A room of the caller's tenant. A PIN left out keeps the stored one; "" removes it."""

    room: RoomNumber
    name: Text = ""
    moderator_pin: Pin | None = None
    member_pin: Pin | None = None
    max_members: Annotated[int, Meta(ge=0, le=10_000)] = 0
    wait_for_moderator: bool = False
    #: mod_conference member flags for everyone: mute, deaf, endconf, mintwo, nomoh, ghost
    flags: Annotated[list[Annotated[str, Meta(pattern=r"^[a-z]+$")]], Meta(max_length=8)] = []


class ConferenceRoomRecord(Resp, frozen=True, kw_only=True):
    """A stored room; the PINs are never returned, only whether each is set."""

    room: str
    name: str = ""
    moderator_pin: bool = False
    member_pin: bool = False
    max_members: int = 0
    wait_for_moderator: bool = False
    flags: list[str] = []


class CallResponse(Resp, frozen=True, kw_only=True):
    call_id: str
    message: str = ""
    #: what the call machine answered (slot for Park, consult_leg for AttendedTransferStart, ...)
    data: dict[str, Any] = {}


# ---- Agents -----------------------------------------------------------------------------------


class LoginRequest(Req, frozen=True, kw_only=True):
    agent_id: OptId = ""
    extension: OptId = ""
    queues: Annotated[list[Id], Meta(max_length=64)] = []
    skills: Annotated[dict[Id, Annotated[int, Meta(ge=1, le=100)]], Meta(max_length=64)] = {}
    ready: bool = False


class AgentRequest(Req, frozen=True, kw_only=True):
    #: "" = the caller's own agent
    agent_id: OptId = ""


class NotReadyRequest(Req, frozen=True, kw_only=True):
    agent_id: OptId = ""
    reason: Annotated[str, Meta(min_length=1, max_length=64)] = "break"


class ListAgentsRequest(Req, frozen=True, kw_only=True):
    #: only agents in this state (e.g. "AVAILABLE"); "" = all
    state: Annotated[str, Meta(max_length=32)] = ""


class AgentResponse(Resp, frozen=True, kw_only=True):
    agent_id: str
    message: str = ""


class AgentInfo(Resp, frozen=True, kw_only=True):
    agent_id: str
    state: str
    reason: str = ""
    extension: str = ""
    queues: list[str] = []
    skills: dict[str, int] = {}
    call_id: str = ""
    state_since: float = 0.0
    calls_handled: int = 0
    talk_time_s: float = 0.0
    phone_registered: bool = True


class AgentList(Resp, frozen=True, kw_only=True):
    agents: list[AgentInfo]


# ---- Queues -----------------------------------------------------------------------------------


class QueueRequest(Req, frozen=True, kw_only=True):
    queue_id: Id


class ListQueuesRequest(Req, frozen=True, kw_only=True):
    pass


class QueueMembershipRequest(Req, frozen=True, kw_only=True):
    queue_id: Id
    agent_id: OptId = ""


class QueueInfo(Resp, frozen=True, kw_only=True):
    queue_id: str
    strategy: str
    waiting: int
    members: list[str]
    available: int
    ring_timeout_s: float = 0.0
    max_wait_s: float = 0.0
    max_length: int = 0


class QueueList(Resp, frozen=True, kw_only=True):
    queues: list[QueueInfo]


class QueueStatsResponse(Resp, frozen=True, kw_only=True):
    queue_id: str
    waiting: int
    longest_wait_s: float
    agents_logged_in: int
    agents_available: int
    offered: int
    answered: int
    answered_within_sl: int
    abandoned: int
    overflowed: int
    average_wait_s: float
    service_level: float


class MembershipResponse(Resp, frozen=True, kw_only=True):
    queue_id: str
    agent_id: str
    queues: list[str]
    #: "applied" (the agent's live membership changed) or "at_next_login"
    effect: str


# ---- Events -----------------------------------------------------------------------------------


class WatchRequest(Req, frozen=True, kw_only=True):
    """Stream the tenant's CTI events, filtered; optionally first replay from a seq or a time."""

    #: replay from this per-tenant seq (inclusive) before going live; 0 = live only
    from_seq: Annotated[int, Meta(ge=0)] = 0
    #: replay from this unix time (seconds) when from_seq is 0; 0 = live only
    since: Annotated[float, Meta(ge=0)] = 0.0
    types: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=64)] = []
    call_id: OptId = ""
    agent_id: OptId = ""
    queue_id: OptId = ""
    #: stop after this many events (0 = no limit); HTTP streams default to 1000
    max_events: Annotated[int, Meta(ge=0, le=1_000_000)] = 0
    #: stop after this many seconds (0 = no limit); HTTP streams default to 60
    timeout_s: Annotated[float, Meta(ge=0, le=86_400)] = 0.0
    #: WebSocket: deliver events batched, ``{"events": [...]}`` with one or more events per message
    #: (in seq order), instead of one ``{"event": ...}`` message each; other transports ignore it
    batch: bool = False
    #: NATS only: the subject the events are published to, an inbox the client subscribed to
    #: BEFORE asking (``_INBOX.<token>...``, no wildcards); other transports ignore it
    deliver_subject: Annotated[str, Meta(max_length=200, pattern=r"^(_INBOX(\.[A-Za-z0-9_\-]+)+)?$")] = ""


class WatchStarted(Resp, frozen=True, kw_only=True):
    """NATS Events.Watch reply: events follow on ``deliver_subject`` (see docs/api.md)."""

    watch_id: str
    deliver_subject: str
    watching: bool = True


class WatchEvent(Resp, frozen=True, kw_only=True):
    """One frame of a Watch stream: the wire event (see api/events.py)."""

    event: dict[str, Any]


# ---- Admin ------------------------------------------------------------------------------------


class GetRecordRequest(Req, frozen=True, kw_only=True):
    id: Id


class ListRecordsRequest(Req, frozen=True, kw_only=True):
    pass


class Deleted(Resp, frozen=True, kw_only=True):
    id: str


class ExtensionList(Resp, frozen=True, kw_only=True):
    items: list[Extension]


class QueueRecordList(Resp, frozen=True, kw_only=True):
    items: list[QueueRecord]


class AgentRecordList(Resp, frozen=True, kw_only=True):
    items: list[AgentRecord]


class FlowList(Resp, frozen=True, kw_only=True):
    items: list[Flow]


class ErrorBody(Resp, frozen=True, kw_only=True):
    """The error object every transport returns: a gRPC status name and a message."""

    code: str
    message: str
