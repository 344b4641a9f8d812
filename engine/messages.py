"""Typed messages: the one vocabulary every part of callengine speaks.

Rules
1. Every message is a frozen msgspec Struct tagged by ``type``; unions are tagged unions, so one
   ``msgspec.json.Decoder(Message)`` decodes any of them and ``match`` dispatches on the class.
2. Types are checked when decoding, at the edges (ESL, NATS, WebSocket, files). Inside the engine
   they are trusted.
3. A field added to a message that has been published always has a default (schema evolution).
4. Time is data: every event carries ``at`` (seconds, float, from whatever clock the host uses:
   trio's clock in production, virtual time in the simulator). Nothing here reads a clock.
5. Effects are plain data returned by the pure state machines (``engine/fsm``); hosts perform them.

Theory of operation
- *Media events* are what FreeSWITCH reports, normalised by ``adapters/freeswitch``. ``call_id`` is
  the engine's call (the a-leg's channel UUID for inbound calls); ``leg`` names the channel within
  the call: ``"a"`` for the caller, otherwise the id of a leg the engine originated (its channel
  UUID, derived deterministically from the call id so that simulations replay).
- *Call commands* come from the API / agent desktops and ask a call to do something; they carry a
  ``request_id`` so the answer (a ``Reply`` effect) finds its way back.
- *Agent commands* change an agent's availability.
- *Routing messages* are how calls, queues and agents talk to each other. They share no state: a
  queue reserves an agent (``ReserveAgent`` -> ``ReservationAccepted`` / ``ReservationRejected``),
  then asks the call to ring it (``ConnectAgent``); the call reports the outcome to both
  (``OfferAnswered`` / ``OfferFailed``). That reservation protocol is what makes "an agent is never
  reserved twice" and "no agent rings for a caller who hung up" hold across actors.
- *Effects* (``StartTimer``, ``CancelTimer``, ``SendMedia``, ``PublishCti``, ``WriteCdr``, ``Send``,
  ``Reply``, ``Stop``) are what a step asks its host to do.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from engine.flows.model import Flow


class Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every message: frozen, keyword-only, tagged by ``type``."""


# --------------------------------------------------------------------------------------------
# Shared value types
# --------------------------------------------------------------------------------------------

#: Reasons a call ended, as reported in the CDR.
Disposition = Literal["answered", "abandoned", "no_answer", "busy", "failed", "overflowed"]

#: Kinds of addressable actors.
ActorKind = Literal["call", "agent", "queue"]


class HangupCause:
    """Q.850-style causes as FreeSWITCH names them (a subset; unknown ones pass through as str).

    Plain string constants rather than an Enum: causes travel as strings and reprs stay valid Python.
    """

    NORMAL_CLEARING = "NORMAL_CLEARING"
    ORIGINATOR_CANCEL = "ORIGINATOR_CANCEL"
    USER_BUSY = "USER_BUSY"
    NO_ANSWER = "NO_ANSWER"
    NO_USER_RESPONSE = "NO_USER_RESPONSE"
    CALL_REJECTED = "CALL_REJECTED"
    NO_ROUTE_DESTINATION = "NO_ROUTE_DESTINATION"
    UNALLOCATED_NUMBER = "UNALLOCATED_NUMBER"
    NORMAL_TEMPORARY_FAILURE = "NORMAL_TEMPORARY_FAILURE"
    NORMAL_CIRCUIT_CONGESTION = "NORMAL_CIRCUIT_CONGESTION"
    SWITCH_CONGESTION = "SWITCH_CONGESTION"
    GATEWAY_DOWN = "GATEWAY_DOWN"
    INVALID_GATEWAY = "INVALID_GATEWAY"
    LOSE_RACE = "LOSE_RACE"
    MANAGER_REQUEST = "MANAGER_REQUEST"
    ATTENDED_TRANSFER = "ATTENDED_TRANSFER"
    BLIND_TRANSFER = "BLIND_TRANSFER"
    #: a ringing leg cancelled because another extension picked the call up (directed/group pickup)
    PICKED_OFF = "PICKED_OFF"


# --------------------------------------------------------------------------------------------
# Media events (FreeSWITCH -> engine), normalised
# --------------------------------------------------------------------------------------------


class MediaEventBase(Msg, frozen=True, kw_only=True):
    call_id: str
    at: float
    #: "a" for the caller's channel, else the id of an originated leg
    leg: str = "a"
    #: media node (FreeSWITCH instance) the channel lives on
    node: str = ""


class ChannelCreated(MediaEventBase, tag="channel_created", frozen=True, kw_only=True):
    direction: Literal["inbound", "outbound"] = "inbound"
    caller_id: str = ""
    caller_name: str = ""
    destination: str = ""
    tenant: str = "default"
    variables: dict[str, str] = {}


class ChannelProgress(MediaEventBase, tag="channel_progress", frozen=True, kw_only=True):
    #: True for CHANNEL_PROGRESS_MEDIA (early media), False for plain ringing
    early_media: bool = False


class ChannelAnswered(MediaEventBase, tag="channel_answered", frozen=True, kw_only=True):
    pass


class ChannelBridged(MediaEventBase, tag="channel_bridged", frozen=True, kw_only=True):
    other_leg: str = ""


class ChannelUnbridged(MediaEventBase, tag="channel_unbridged", frozen=True, kw_only=True):
    other_leg: str = ""


class ChannelHeld(MediaEventBase, tag="channel_held", frozen=True, kw_only=True):
    pass


class ChannelUnheld(MediaEventBase, tag="channel_unheld", frozen=True, kw_only=True):
    pass


class DtmfReceived(MediaEventBase, tag="dtmf", frozen=True, kw_only=True):
    digit: str
    duration_ms: int = 0


class PlaybackStarted(MediaEventBase, tag="playback_started", frozen=True, kw_only=True):
    file: str = ""


class PlaybackFinished(MediaEventBase, tag="playback_finished", frozen=True, kw_only=True):
    file: str = ""
    #: "done" when the file played to its end, "break" when interrupted
    status: str = "done"


class RecordingStarted(MediaEventBase, tag="recording_started", frozen=True, kw_only=True):
    path: str = ""


class RecordingStopped(MediaEventBase, tag="recording_stopped", frozen=True, kw_only=True):
    path: str = ""
    cause: str = ""


class ApplicationExecuted(MediaEventBase, tag="app_executed", frozen=True, kw_only=True):
    app: str
    arg: str = ""
    app_uuid: str = ""


class ApplicationCompleted(MediaEventBase, tag="app_completed", frozen=True, kw_only=True):
    app: str
    arg: str = ""
    app_uuid: str = ""
    response: str = ""


class ChannelHangup(MediaEventBase, tag="channel_hangup", frozen=True, kw_only=True):
    cause: str = HangupCause.NORMAL_CLEARING


class ChannelHangupComplete(MediaEventBase, tag="channel_hangup_complete", frozen=True, kw_only=True):
    cause: str = HangupCause.NORMAL_CLEARING


class ChannelDestroyed(MediaEventBase, tag="channel_destroyed", frozen=True, kw_only=True):
    pass


MediaEvent = (
    ChannelCreated
    | ChannelProgress
    | ChannelAnswered
    | ChannelBridged
    | ChannelUnbridged
    | ChannelHeld
    | ChannelUnheld
    | DtmfReceived
    | PlaybackStarted
    | PlaybackFinished
    | RecordingStarted
    | RecordingStopped
    | ApplicationExecuted
    | ApplicationCompleted
    | ChannelHangup
    | ChannelHangupComplete
    | ChannelDestroyed
)


# --------------------------------------------------------------------------------------------
# Call control commands (API / desktop -> call)
# --------------------------------------------------------------------------------------------


class CallCommandBase(Msg, frozen=True, kw_only=True):
    call_id: str
    at: float
    #: correlates the Reply effect with the request; empty when nobody waits for an answer
    request_id: str = ""


class Originate(CallCommandBase, tag="originate", frozen=True, kw_only=True):
    """Click-to-call: ring ``from_extension`` first, then connect it to ``to``."""

    from_extension: str
    to: str
    tenant: str = "default"
    caller_id: str = ""
    timeout_s: float = 30.0
    #: W3C trace context of the request that originated the call: the call resumes that trace
    traceparent: str = ""
    #: ``to`` is an outside number: dial it through these trunks in order, with failover
    #: (``engine.routing.outbound.plan``), once ``from_extension`` answers
    trunks: tuple[TrunkDial, ...] = ()


class Answer(CallCommandBase, tag="answer", frozen=True, kw_only=True):
    pass


class Hangup(CallCommandBase, tag="hangup", frozen=True, kw_only=True):
    cause: str = HangupCause.NORMAL_CLEARING


class Hold(CallCommandBase, tag="hold", frozen=True, kw_only=True):
    pass


class Retrieve(CallCommandBase, tag="retrieve", frozen=True, kw_only=True):
    pass


class BlindTransfer(CallCommandBase, tag="blind_transfer", frozen=True, kw_only=True):
    target: str
    #: ``target`` is an outside number: dial it through these trunks in order, with failover
    trunks: tuple[TrunkDial, ...] = ()
    #: ``target`` is an extension that records every call (always-on, docs/recordings.md)
    record: bool = False
    record_consent: str = ""


class AttendedTransferStart(CallCommandBase, tag="attended_transfer_start", frozen=True, kw_only=True):
    target: str
    timeout_s: float = 30.0


class AttendedTransferComplete(CallCommandBase, tag="attended_transfer_complete", frozen=True, kw_only=True):
    pass


class AttendedTransferCancel(CallCommandBase, tag="attended_transfer_cancel", frozen=True, kw_only=True):
    pass


class Park(CallCommandBase, tag="park", frozen=True, kw_only=True):
    """Park the caller in ``slot`` (claimed beforehand from the tenant's ``engine.parking.ParkingLot``;
    "" parks under the call id). After ``timeout_s`` unanswered the call rings ``return_to`` (default:
    the party that parked it); if that is not answered, ``fallback`` (an extension) or, when "",
    the call hangs up. See docs/parking.md."""

    slot: str = ""
    timeout_s: float = 60.0
    return_to: str = ""
    fallback: str = ""


class Pickup(CallCommandBase, tag="pickup", frozen=True, kw_only=True):
    """Pick a call up at ``extension``: a parked call (``kind="slot"``), or a call that is ringing
    ``target`` (``kind="directed"``) or a member of the picker's pickup group (``kind="group"``)."""

    extension: str
    kind: Literal["slot", "directed", "group"] = "slot"
    #: directed pickup: the ringing extension whose call is taken ("" = any ringing leg)
    target: str = ""


class JoinConference(CallCommandBase, tag="join_conference", frozen=True, kw_only=True):
    room: str
    #: mod_conference member flags of the caller's leg (e.g. ("moderator",)) and of the leg it
    #: talks to (engine.conference.join_check decides them from the room and the PIN)
    flags: tuple[str, ...] = ()
    connected_flags: tuple[str, ...] = ()
    #: a blind transfer into the room: only the caller goes; the party it talked to is released
    caller_only: bool = False


class SendDtmf(CallCommandBase, tag="send_dtmf", frozen=True, kw_only=True):
    digits: str


class StartRecording(CallCommandBase, tag="start_recording", frozen=True, kw_only=True):
    """Record the call (docs/recordings.md). With ``consent`` the announcement plays to both parties
    first and recording starts only when it finished (PLAYBACK_STOP)."""

    path: str = ""
    #: who asked: "agent:<id>" / "user:<subject>" from the API, "auto:queue:<id>" for always-on
    by: str = ""
    #: the consent announcement (a sound file on the media server); "" = none
    consent: str = ""
    #: an always-on (compliance) recording: pausing or stopping it needs ``override``
    compliance: bool = False


class StopRecording(CallCommandBase, tag="stop_recording", frozen=True, kw_only=True):
    #: the caller's policy allows stopping a compliance recording
    override: bool = False


class PauseRecording(CallCommandBase, tag="pause_recording", frozen=True, kw_only=True):
    """Mask the recording (the paused part is silence in the file: ``uuid_record mask``)."""

    #: the caller's policy allows pausing a compliance recording
    override: bool = False


class ResumeRecording(CallCommandBase, tag="resume_recording", frozen=True, kw_only=True):
    pass


CallCommand = (
    Originate
    | Answer
    | Hangup
    | Hold
    | Retrieve
    | BlindTransfer
    | AttendedTransferStart
    | AttendedTransferComplete
    | AttendedTransferCancel
    | Park
    | Pickup
    | JoinConference
    | SendDtmf
    | StartRecording
    | StopRecording
    | PauseRecording
    | ResumeRecording
)


# --------------------------------------------------------------------------------------------
# Agent commands (desktop / API -> agent)
# --------------------------------------------------------------------------------------------


class AgentCommandBase(Msg, frozen=True, kw_only=True):
    agent_id: str
    at: float
    request_id: str = ""


class AgentLogin(AgentCommandBase, tag="agent_login", frozen=True, kw_only=True):
    extension: str
    queues: tuple[str, ...] = ()
    #: skill name -> proficiency (1..100)
    skills: dict[str, int] = {}
    tenant: str = "default"
    #: log in straight to AVAILABLE instead of NOT_READY("login")
    ready: bool = False


class AgentLogout(AgentCommandBase, tag="agent_logout", frozen=True, kw_only=True):
    pass


class AgentReady(AgentCommandBase, tag="agent_ready", frozen=True, kw_only=True):
    pass


class AgentNotReady(AgentCommandBase, tag="agent_not_ready", frozen=True, kw_only=True):
    reason: str = "break"


class AgentEndWrapUp(AgentCommandBase, tag="agent_end_wrap_up", frozen=True, kw_only=True):
    pass


class AgentJoinQueue(AgentCommandBase, tag="agent_join_queue", frozen=True, kw_only=True):
    """Make the agent a member of ``queue_id`` (takes effect at once, whatever the agent's state)."""

    queue_id: str


class AgentLeaveQueue(AgentCommandBase, tag="agent_leave_queue", frozen=True, kw_only=True):
    """Remove the agent from ``queue_id``; an offer already accepted from it still completes."""

    queue_id: str


class DeviceState(AgentCommandBase, tag="device_state", frozen=True, kw_only=True):
    """The agent's phone registered or went away (FreeSWITCH sofia::register / unregister / expire).

    An agent whose phone is not registered is never offered a call, whatever its state says.
    """

    registered: bool
    contact: str = ""


AgentCommand = (
    AgentLogin | AgentLogout | AgentReady | AgentNotReady | AgentEndWrapUp | AgentJoinQueue | AgentLeaveQueue
    | DeviceState
)


# --------------------------------------------------------------------------------------------
# Routing: how calls, queues and agents talk (all by message, no shared state)
# --------------------------------------------------------------------------------------------


class EnterFlow(Msg, tag="enter_flow", frozen=True, kw_only=True):
    """Router -> call: run the IVR flow ``flow_id`` (the flow engine drives the call from here).

    With ``flow`` (the graph, validated by ``engine.flows.loader``) the call machine runs it itself
    through the pure interpreter; without it an external driver does (the original behaviour).
    """

    call_id: str
    at: float
    flow_id: str
    flow: Flow | None = None
    #: unix time = ``at`` + clock_offset: lets business-hours nodes judge local time without a clock
    clock_offset: float = 0.0
    #: initial flow variables (read by ``route`` nodes as ``var:<name>``)
    variables: dict[str, str] = {}


class VoicemailBox(Msg, tag="voicemail_box", frozen=True, kw_only=True):
    """Host -> a call at a flow's ``voicemail_access`` node (docs/voicemail.md): the mailbox it asked
    for with VOICEMAIL_ACCESS, as the store holds it. ``pin_hash`` "" (no such mailbox): every PIN
    fails. The PIN hash travels only here, never in a CTI event. For a ``voicemail`` node that
    takes its settings from the mailbox (VOICEMAIL_SETTINGS) only ``greeting`` and ``max_length_s``
    are filled (0: the node's own)."""

    call_id: str
    at: float
    box: str
    pin_hash: str = ""
    #: (message id, folder "new"/"saved", path, created) of the live messages
    messages: tuple[tuple[str, str, str, float], ...] = ()
    greeting: str = ""
    max_length_s: float = 0.0


class RouteToQueue(Msg, tag="route_to_queue", frozen=True, kw_only=True):
    """Flow/router -> call: put the caller into ``queue_id``."""

    call_id: str
    at: float
    queue_id: str
    priority: int = 0
    #: required skill -> minimum proficiency
    skills: dict[str, int] = {}


class TrunkDial(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of an outbound call: dial ``number`` through gateway ``gateway`` of trunk
    ``trunk_id`` (built by ``engine.routing.outbound.plan``)."""

    trunk_id: str
    gateway: str
    number: str
    #: the caller id presented on this trunk ("" keeps the call's own)
    caller_id: str = ""


class RouteToExtension(Msg, tag="route_to_extension", frozen=True, kw_only=True):
    """Flow/router -> call: ring an extension (or an external number) directly.

    With ``trunks`` (an outbound dial plan) the call dials them in order: the first one, and on a
    failover cause (busy, congestion, no route, gateway down) the next; ``target`` is then the
    dialled number as the caller entered it (the CDR's destination)."""

    call_id: str
    at: float
    target: str
    timeout_s: float = 30.0
    trunks: tuple[TrunkDial, ...] = ()
    #: the extension records every call (always-on); the announcement to play first ("" = none)
    record: bool = False
    record_consent: str = ""
    #: not answered (busy, no answer, unreachable): the caller leaves a message in this mailbox
    #: ("" = the call ends; docs/voicemail.md)
    voicemail: str = ""


class QueueCall(Msg, tag="queue_call", frozen=True, kw_only=True):
    """Call -> queue: a caller joins."""

    queue_id: str
    call_id: str
    at: float
    priority: int = 0
    skills: dict[str, int] = {}
    caller_id: str = ""
    tenant: str = "default"


class CallerLeft(Msg, tag="caller_left", frozen=True, kw_only=True):
    """Call -> queue: the caller is gone (hung up while waiting or ringing)."""

    queue_id: str
    call_id: str
    at: float


class UpdateQueueConfig(Msg, tag="update_queue_config", frozen=True, kw_only=True):
    """Config -> queue: new parameters (strategy, timeouts, limits, skills relax steps, ...).

    ``config`` is an ``engine.fsm.queue.QueueConfig`` as builtins (msgspec.to_builtins), so this
    module does not depend on the machines; the queue validates it when it applies it.
    """

    queue_id: str
    at: float
    config: dict[str, Any]
    request_id: str = ""


class QueueOverflow(Msg, tag="queue_overflow", frozen=True, kw_only=True):
    """Queue -> call: max wait or max length reached; leave for ``target`` ("" = hang up)."""

    call_id: str
    at: float
    queue_id: str
    target: str = ""
    reason: Literal["max_wait", "max_length", "no_agents"] = "max_wait"


class AgentStatus(Msg, tag="agent_status", frozen=True, kw_only=True):
    """Agent -> each of its queues: what routing needs to know, sent whenever it changes."""

    queue_id: str
    agent_id: str
    at: float
    logged_in: bool
    available: bool
    extension: str = ""
    skills: dict[str, int] = {}
    idle_since: float = 0.0
    talk_time: float = 0.0
    calls_handled: int = 0
    #: the agent's status counter: a queue ignores a status older than one it already has, so
    #: reordering between the agent and a queue (e.g. across shards) cannot roll its view back;
    #: 0 = unknown (always applied)
    seq: int = 0


class ReserveAgent(Msg, tag="reserve_agent", frozen=True, kw_only=True):
    """Queue -> agent: may I offer you this call?"""

    agent_id: str
    at: float
    offer_id: str
    queue_id: str
    call_id: str
    #: how long the agent stays reserved at most (ring timeout plus grace)
    timeout_s: float = 30.0
    wrap_up_s: float = 0.0


class ReservationAccepted(Msg, tag="reservation_accepted", frozen=True, kw_only=True):
    queue_id: str
    agent_id: str
    at: float
    offer_id: str
    extension: str = ""


class ReservationRejected(Msg, tag="reservation_rejected", frozen=True, kw_only=True):
    queue_id: str
    agent_id: str
    at: float
    offer_id: str
    reason: str = "not_available"
    #: the agent's status counter when it said no (see AgentStatus.seq)
    status_seq: int = 0


class ReleaseReservation(Msg, tag="release_reservation", frozen=True, kw_only=True):
    """Queue or call -> agent: the reservation is void (caller gone, another agent won)."""

    agent_id: str
    at: float
    offer_id: str


class ConnectAgent(Msg, tag="connect_agent", frozen=True, kw_only=True):
    """Queue -> call: ring this reserved agent."""

    call_id: str
    at: float
    queue_id: str
    offer_id: str
    agent_id: str
    extension: str
    ring_timeout_s: float = 20.0
    #: the queue records every call (always-on); the announcement to play first ("" = none)
    record: bool = False
    record_consent: str = ""


class OfferAnswered(Msg, tag="offer_answered", frozen=True, kw_only=True):
    """Call -> queue and agent: the agent picked up."""

    at: float
    offer_id: str
    call_id: str
    agent_id: str
    queue_id: str


class OfferFailed(Msg, tag="offer_failed", frozen=True, kw_only=True):
    """Call -> queue and agent: the offer ended without a conversation."""

    at: float
    offer_id: str
    call_id: str
    agent_id: str
    queue_id: str
    reason: Literal["no_answer", "busy", "failed", "caller_gone", "answered_elsewhere"] = "no_answer"


class AgentCallEnded(Msg, tag="agent_call_ended", frozen=True, kw_only=True):
    """Call -> agent: the conversation ended (or the agent was transferred away)."""

    agent_id: str
    at: float
    call_id: str
    queue_id: str = ""


class RouteToPickup(Msg, tag="route_to_pickup", frozen=True, kw_only=True):
    """Router -> a call a phone made by dialling a pickup feature code (``engine.parking``
    ``pickup_router``; docs/parking.md): hand this call's channel to ``target_call`` (parked in
    ``slot``, or ringing ``target``), which connects its caller to it. The call waits ``timeout_s``
    for the answer (``PickupHandedOver``); ``target_call`` "" = nothing to pick up (hang up)."""

    call_id: str
    at: float
    target_call: str
    kind: Literal["slot", "directed", "group"]
    #: the picker's extension (the phone that dialled the code)
    extension: str
    slot: str = ""
    target: str = ""
    timeout_s: float = 5.0


class PickupChannel(Msg, tag="pickup_channel", frozen=True, kw_only=True):
    """Feature-code call -> the call it picks up: take my channel ``leg`` (its uuid, on media node
    ``node``) as your answered party. Answered with ``PickupHandedOver`` either way."""

    call_id: str
    at: float
    from_call: str
    leg: str
    node: str
    extension: str
    kind: Literal["slot", "directed", "group"]
    slot: str = ""
    target: str = ""
    #: the channel is answered already (no answer event will come)
    answered: bool = False


class PickupHandedOver(Msg, tag="pickup_handed_over", frozen=True, kw_only=True):
    """Picked-up call -> the feature-code call: ``ok``: your channel is mine now (end without hanging
    it up); else hang it up (``reason`` says why)."""

    call_id: str
    at: float
    ok: bool
    reason: str = ""


class ProbeCall(Msg, tag="probe_call", frozen=True, kw_only=True):
    """Agent -> call: am I still connected to you? (a liveness check while ON_CALL)."""

    call_id: str
    at: float
    agent_id: str


class ProbeReply(Msg, tag="probe_reply", frozen=True, kw_only=True):
    """Call -> agent: the answer to ``ProbeCall``."""

    agent_id: str
    at: float
    call_id: str
    connected: bool


class TimerFired(Msg, tag="timer_fired", frozen=True, kw_only=True):
    """Host -> the actor that started the timer."""

    key: str
    at: float


RoutingMessage = (
    EnterFlow
    | VoicemailBox
    | RouteToQueue
    | RouteToExtension
    | QueueCall
    | CallerLeft
    | QueueOverflow
    | UpdateQueueConfig
    | AgentStatus
    | ReserveAgent
    | ReservationAccepted
    | ReservationRejected
    | ReleaseReservation
    | ConnectAgent
    | OfferAnswered
    | OfferFailed
    | AgentCallEnded
    | ProbeCall
    | ProbeReply
    | RouteToPickup
    | PickupChannel
    | PickupHandedOver
    | TimerFired
)


# --------------------------------------------------------------------------------------------
# Media commands (engine -> FreeSWITCH), carried by the SendMedia effect
# --------------------------------------------------------------------------------------------


class MediaCommandBase(Msg, frozen=True, kw_only=True):
    call_id: str
    leg: str = "a"
    node: str = ""


class MediaAnswer(MediaCommandBase, tag="m_answer", frozen=True, kw_only=True):
    pass


class MediaHangup(MediaCommandBase, tag="m_hangup", frozen=True, kw_only=True):
    cause: str = HangupCause.NORMAL_CLEARING


class MediaOriginate(MediaCommandBase, tag="m_originate", frozen=True, kw_only=True):
    """Create leg ``leg`` of ``call_id`` by dialling ``destination`` (an extension or number)."""

    destination: str
    timeout_s: float = 30.0
    caller_id: str = ""
    variables: dict[str, str] = {}
    #: a trunk leg: dial ``destination`` (a number) through this SIP gateway
    gateway: str = ""


class MediaBridge(MediaCommandBase, tag="m_bridge", frozen=True, kw_only=True):
    """Bridge ``leg`` with ``other_leg`` (both of the same call)."""

    other_leg: str


class MediaHold(MediaCommandBase, tag="m_hold", frozen=True, kw_only=True):
    music: str = "local_stream://moh"


class MediaUnhold(MediaCommandBase, tag="m_unhold", frozen=True, kw_only=True):
    pass


class MediaPlay(MediaCommandBase, tag="m_play", frozen=True, kw_only=True):
    file: str
    loops: int = 1


class MediaStopPlayback(MediaCommandBase, tag="m_stop_playback", frozen=True, kw_only=True):
    pass


class MediaCollectDigits(MediaCommandBase, tag="m_collect_digits", frozen=True, kw_only=True):
    prompt: str
    min_digits: int = 1
    max_digits: int = 1
    timeout_s: float = 5.0
    terminators: str = "#"


class MediaTransfer(MediaCommandBase, tag="m_transfer", frozen=True, kw_only=True):
    destination: str


class MediaPark(MediaCommandBase, tag="m_park", frozen=True, kw_only=True):
    slot: str = ""


class MediaIntercept(MediaCommandBase, tag="m_intercept", frozen=True, kw_only=True):
    """Feature-code pickup: the picker's channel (``call_id``/``leg``) takes the call of leg
    ``other_leg`` of call ``other_call_id`` (FreeSWITCH ``intercept``: the target's partner is
    bridged to the picker and the target hung up with PICKED_OFF)."""

    other_call_id: str
    other_leg: str


class MediaAdopt(MediaCommandBase, tag="m_adopt", frozen=True, kw_only=True):
    """Feature-code pickup: the channel ``leg`` (its uuid; another call's until now) becomes leg
    ``leg`` of ``call_id``: its channel variables say so, so its events reach this call."""


class MediaConference(MediaCommandBase, tag="m_conference", frozen=True, kw_only=True):
    room: str
    #: mod_conference member flags, e.g. ("moderator",) -> ``+flags{moderator}``
    flags: tuple[str, ...] = ()


# ---- conferences (#10 part 3): the room machine's inputs and its one media effect ----------
#: the conference::maintenance actions the room machine acts on (others are not delivered)
ConferenceAction = Literal["conference-create", "conference-destroy", "add-member", "del-member",
                           "mute-member", "unmute-member", "kick-member", "floor-change", "dtmf"]


class ConferenceMaintenance(Msg, tag="conference_maintenance", frozen=True, kw_only=True):
    """One CUSTOM conference::maintenance event of mod_conference, as the adapter maps it."""

    room: str  #: Conference-Name
    action: ConferenceAction  #: Action
    at: float
    node: str = ""
    room_uuid: str = ""  #: Conference-Unique-ID
    member_id: int = 0  #: Member-ID (0: a room-level event)
    channel: str = ""  #: Unique-ID of the member's channel
    call_id: str = ""  #: the member's call (from callengine_call_id, or resolved by the host)
    caller_id: str = ""  #: Caller-Caller-ID-Number
    moderator: bool = False  #: Member-Type == "moderator"
    size: int = -1  #: Conference-Size after the event (-1: not reported)
    floor: int = 0  #: floor-change: New-ID (0 = nobody holds the floor)
    #: dtmf (a caller-control ``event`` action): DTMF-Key, the digits bound to it
    key: str = ""


class ConferenceControl(Msg, tag="conference_control", frozen=True, kw_only=True):
    """Mute, unmute or kick one member (API or a moderator's DTMF)."""

    room: str
    action: Literal["mute", "unmute", "kick"]
    member_id: int
    at: float
    #: the member asking (a moderator's DTMF, or an API caller who is a member); 0 = a
    #: supervisor/admin whose role the API already checked
    by_member: int = 0
    request_id: str = ""


class MediaConferenceMember(Msg, tag="m_conference_member", frozen=True, kw_only=True):
    """``api conference <room> mute|unmute|kick <member id>`` on the room's node."""

    room: str
    action: Literal["mute", "unmute", "kick"]
    member_id: int
    node: str = ""


class MediaSendDtmf(MediaCommandBase, tag="m_send_dtmf", frozen=True, kw_only=True):
    digits: str


class MediaRecordStart(MediaCommandBase, tag="m_record_start", frozen=True, kw_only=True):
    path: str
    #: > 0: a voicemail message: FreeSWITCH's ``record`` app on the channel, which ends by itself
    #: after ``limit_s`` or ``silence_hits`` seconds below ``silence_threshold`` (0 hits: no
    #: silence detection); 0: ``uuid_record`` of the call (ends when told or at hangup)
    limit_s: float = 0.0
    silence_threshold: int = 0
    silence_hits: int = 0


class MediaRecordStop(MediaCommandBase, tag="m_record_stop", frozen=True, kw_only=True):
    path: str = ""


class MediaRecordMask(MediaCommandBase, tag="m_record_mask", frozen=True, kw_only=True):
    """Pause (``mask``) or resume (not ``mask``) the recording ``path``: silence is written meanwhile."""

    path: str
    mask: bool = True


class MediaBroadcast(MediaCommandBase, tag="m_broadcast", frozen=True, kw_only=True):
    """Play ``file`` to the channel and, when bridged, to its partner too (a consent announcement)."""

    file: str


MediaCommand = (
    MediaAnswer
    | MediaHangup
    | MediaOriginate
    | MediaBridge
    | MediaHold
    | MediaUnhold
    | MediaPlay
    | MediaStopPlayback
    | MediaCollectDigits
    | MediaTransfer
    | MediaPark
    | MediaIntercept
    | MediaAdopt
    | MediaConference
    | MediaSendDtmf
    | MediaRecordStart
    | MediaRecordStop
    | MediaRecordMask
    | MediaBroadcast
)


# --------------------------------------------------------------------------------------------
# CTI events and CDRs (payloads of effects)
# --------------------------------------------------------------------------------------------

#: Scalar values allowed in a CTI event's ``data``.
Scalar = str | int | float | bool | None


class CtiEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A CTI event as the state machines emit it. ``seq`` is assigned by the publisher, per tenant."""

    name: str  #: CALL_CREATED, QUEUE_ENTERED, AGENT_STATE_CHANGED, ... (upper snake case)
    tenant: str
    at: float
    call_id: str = ""
    agent_id: str = ""
    queue_id: str = ""
    data: dict[str, Scalar] = {}
    seq: int = 0
    version: int = 1


class Cdr(msgspec.Struct, frozen=True, kw_only=True):
    """Call detail record: exactly one per call, written when the call reaches ENDED."""

    call_id: str
    tenant: str
    direction: str
    caller_id: str
    destination: str
    created_at: float
    answered_at: float | None
    ended_at: float
    disposition: Disposition
    hangup_cause: str
    queue_id: str = ""
    agent_id: str = ""
    wait_s: float = 0.0
    talk_s: float = 0.0
    hold_s: float = 0.0
    transfers: int = 0
    node: str = ""
    version: int = 1
    #: outbound calls: the trunk that carried the call (the last one tried when none answered)
    trunk: str = ""
    #: the conference room the call was last moved into ("" = never; docs/conferences.md)
    conference: str = ""

    @property
    def duration_s(self) -> float:
        return self.ended_at - self.created_at


# --------------------------------------------------------------------------------------------
# Effects (state machine -> host)
# --------------------------------------------------------------------------------------------


class StartTimer(Msg, tag="start_timer", frozen=True, kw_only=True):
    """Deliver ``TimerFired(key, at=deadline)`` to this actor at ``deadline`` unless cancelled.

    Starting a timer with a key that is already running replaces it.
    """

    key: str
    deadline: float


class CancelTimer(Msg, tag="cancel_timer", frozen=True, kw_only=True):
    key: str


class SendMedia(Msg, tag="send_media", frozen=True, kw_only=True):
    command: MediaCommand


class PublishCti(Msg, tag="publish_cti", frozen=True, kw_only=True):
    event: CtiEvent


class WriteCdr(Msg, tag="write_cdr", frozen=True, kw_only=True):
    cdr: Cdr


class Send(Msg, tag="send", frozen=True, kw_only=True):
    """Deliver ``message`` to the actor (``to``, ``to_id``)."""

    to: ActorKind
    to_id: str
    message: RoutingMessage


class Reply(Msg, tag="reply", frozen=True, kw_only=True):
    """Answer a command that carried a ``request_id``. ``code`` is a gRPC status name."""

    request_id: str
    ok: bool = True
    code: str = "OK"
    message: str = ""
    data: dict[str, Any] = {}


class Stop(Msg, tag="stop", frozen=True, kw_only=True):
    """The actor is done: the host may forget it once the other effects are performed."""

    reason: str = "normal"


Effect = StartTimer | CancelTimer | SendMedia | PublishCti | WriteCdr | Send | Reply | Stop

#: Everything an actor can receive.
Message = MediaEvent | CallCommand | AgentCommand | RoutingMessage

ALL_MESSAGE_TYPES: tuple[type[Msg], ...] = tuple(
    t
    for union in (MediaEvent, CallCommand, AgentCommand, RoutingMessage, MediaCommand, Effect)
    for t in union.__args__
)

# Decoders/encoders built once and reused (msgspec's recommended pattern).
json_encoder = msgspec.json.Encoder()
msgpack_encoder = msgspec.msgpack.Encoder()
message_json_decoder = msgspec.json.Decoder(Message)
message_msgpack_decoder = msgspec.msgpack.Decoder(Message)
effect_json_decoder = msgspec.json.Decoder(Effect)


def json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) for every message, media command, effect, CTI event and CDR."""

    roots = (Message, MediaCommand, Effect, CtiEvent, Cdr)
    (message, media, effect, cti, cdr), defs = msgspec.json.schema_components(roots)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "callengine messages",
        "anyOf": [message, media, effect, cti, cdr],
        "$defs": defs,
    }


__all__ = [name for name in dir() if not name.startswith("_")]
