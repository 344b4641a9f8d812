"""Call state machine.

Rule 1: every decision about a call's state lives in this file.
Rule 2: no I/O, no trio, no clock reads: time arrives inside events (``at``).
Rule 3: ``step(call, event) -> (call, effects)``; unknown (state, event type) pairs raise
        ``IllegalTransition``; duplicate and late media events are explicit no-ops in the table.

Theory of operation
A call has the caller's channel (leg ``"a"``) and the legs the engine originates (agents,
extensions, consult targets), each with an id derived from the call id and a counter, so a replay
produces the same ids. The call moves through::

    ROUTING -> IN_FLOW -> QUEUED <-> RINGING -> ACTIVE <-> HELD
                  \\________________/   \\        |   \\-> TRANSFERRING -> ACTIVE
                                        \\       \\-> PARKED -> RINGING (pickup)
                                         `-> ENDED  (from anywhere: exactly one CDR)

Ringing legs carry their own ring timer (``ring:<leg>``); leaving RINGING cancels them. When the
caller hangs up while a queue is reserving or ringing an agent, the call tells both the queue and
the agent (``CallerLeft``, ``OfferFailed(caller_gone)``) and hangs the agent's leg up: a caller who
is gone never rings an agent. Reaching ENDED cancels every timer and emits exactly one
``WriteCdr``; after that every event is a no-op and every command is refused.

Flows: ``EnterFlow`` carrying a flow graph starts the pure flow interpreter (``engine.flows``); while
the call is IN_FLOW, ``PlaybackFinished`` and ``DtmfReceived`` of leg "a" and the ``flow`` timer
are handed to it. Its media effects pass through, its timer joins the call's timers, and its
outcome becomes the ordinary routing below: RouteToQueue, RouteToExtension or the end of the call
(a flow that answered and then hung up, e.g. after voicemail, ends "answered" at the time the flow
answered; one that never answered ends "failed"). Without a graph, EnterFlow only marks the call
IN_FLOW and collects digits, as before, for an external flow driver.

Time accounting: each transition charges the time since ``state_since`` to a bucket: QUEUED and
RINGING count as wait, ACTIVE as talk, HELD / TRANSFERRING / PARKED as hold. Event times are
clamped to be monotonic so late events cannot make a bucket negative.
"""

from __future__ import annotations

import enum
from typing import Literal

import msgspec

from engine.flows import interpreter as flows
from engine.flows.interpreter import FlowRun, FlowStep, ToConference, ToHangup, ToQueue, ToTarget
from engine.flows.model import Flow as FlowGraph
from engine.flows.model import VoicemailNode
from engine.fsm.base import (
    IllegalTransition,
    Machine,
    Out,
    cancel_timer,
    cancel_timers,
    ignore,
    start_timer,
)
from engine.fsm.conference import switch_room
from engine.messages import (
    AgentCallEnded,
    Answer,
    ApplicationCompleted,
    ApplicationExecuted,
    AttendedTransferCancel,
    AttendedTransferComplete,
    AttendedTransferStart,
    BlindTransfer,
    CallCommand,
    CallerLeft,
    CancelTimer,
    Cdr,
    ChannelAnswered,
    ChannelBridged,
    ChannelCreated,
    ChannelDestroyed,
    ChannelHangup,
    ChannelHangupComplete,
    ChannelHeld,
    ChannelProgress,
    ChannelUnbridged,
    ChannelUnheld,
    ConnectAgent,
    Disposition,
    DtmfReceived,
    Effect,
    EnterFlow,
    Hangup,
    HangupCause,
    Hold,
    JoinConference,
    MediaAdopt,
    MediaAnswer,
    MediaBridge,
    MediaBroadcast,
    MediaConference,
    MediaEvent,
    MediaHangup,
    MediaHold,
    MediaOriginate,
    MediaPark,
    MediaRecordMask,
    MediaRecordStart,
    MediaRecordStop,
    MediaSendDtmf,
    MediaUnhold,
    Message,
    OfferAnswered,
    OfferFailed,
    Originate,
    Park,
    PauseRecording,
    Pickup,
    PickupChannel,
    PickupHandedOver,
    PlaybackFinished,
    PlaybackStarted,
    ProbeCall,
    ProbeReply,
    QueueCall,
    QueueOverflow,
    RecordingStarted,
    RecordingStopped,
    ResumeRecording,
    Retrieve,
    RouteToExtension,
    RouteToPickup,
    RouteToQueue,
    SendDtmf,
    SendMedia,
    StartRecording,
    StartTimer,
    Stop,
    StopRecording,
    TimerFired,
    TrunkDial,
    VoicemailBox,
    WriteCdr,
)
from engine.routing.outbound import FAILOVER_CAUSES
from engine.tracecontext import incoming_traceparent, parse_traceparent

__all__ = ["CallState", "Call", "Leg", "Recording", "new_call", "originate_call", "step", "MACHINE", "CALL_EVENTS"]


class CallState(enum.Enum):
    #: media reported a new channel; routing not decided yet
    ROUTING = "routing"
    #: an IVR flow drives the call (prompts, menus)
    IN_FLOW = "in_flow"
    #: waiting in a queue for an agent
    QUEUED = "queued"
    #: one or more legs (agent, extension, ring-all group) are ringing
    RINGING = "ringing"
    #: caller and the answering party are talking
    ACTIVE = "active"
    #: the caller is on hold
    HELD = "held"
    #: attended transfer: the caller is held while the agent consults a third party
    TRANSFERRING = "transferring"
    #: the caller is parked, waiting to be picked up
    PARKED = "parked"
    #: over; exactly one CDR has been written
    ENDED = "ended"


LegRole = Literal["agent", "extension", "consult"]


class Leg(msgspec.Struct, frozen=True, kw_only=True):
    """A leg the engine originated."""

    id: str
    destination: str
    role: LegRole
    agent_id: str = ""
    queue_id: str = ""
    offer_id: str = ""
    answered: bool = False
    #: a trunk leg of an outbound call: the trunk it was dialled through
    trunk_id: str = ""
    #: always-on recording once this leg answers (its queue or extension records), and the
    #: consent announcement played first ("" = none)
    record: bool = False
    record_consent: str = ""


class Recording(msgspec.Struct, frozen=True, kw_only=True):
    """The call's recording (at most one at a time; docs/recordings.md).

    ``stage`` "consent": the consent announcement plays and nothing is recorded yet; the
    ``uuid_record start`` goes out only on the announcement's PlaybackFinished. "recording": the
    media server records ``path``; ``paused`` while masked (silence in the file)."""

    id: str
    path: str
    by: str = ""
    compliance: bool = False
    stage: Literal["consent", "recording"] = "recording"
    consent: str = ""
    #: when the media server was told to start (after the announcement)
    started_at: float = 0.0
    paused: bool = False
    paused_at: float = 0.0
    #: masked time of the pauses already ended
    paused_s: float = 0.0


class Call(msgspec.Struct, frozen=True, kw_only=True):
    call_id: str
    tenant: str = "default"
    direction: str = "inbound"
    caller_id: str = ""
    destination: str = ""
    node: str = ""
    state: CallState = CallState.ROUTING
    created_at: float = 0.0
    #: when the current state was entered
    state_since: float = 0.0
    #: latest event time seen (times are clamped to it so they never go backwards)
    now: float = 0.0
    #: the caller's channel is up (False once it hung up, or while a click-to-call rings it)
    a_up: bool = True
    a_answered: bool = False
    #: click-to-call: the number to dial once leg "a" (the caller's own phone) answers
    pending_target: str = ""
    answered_at: float | None = None
    flow_id: str = ""
    digits: str = ""
    #: the running flow (graph and position) while IN_FLOW with a graph; None otherwise
    flow: FlowRun | None = None
    queue_id: str = ""
    priority: int = 0
    skills: dict[str, int] = {}
    #: the queue was told about this caller and has not been told it left
    in_queue: bool = False
    #: live originated legs (ringing or connected)
    legs: tuple[Leg, ...] = ()
    #: the leg in conversation with the caller ("" when none)
    connected: str = ""
    #: attended transfer: the consult leg
    consult: str = ""
    agent_id: str = ""
    leg_seq: int = 0
    wait_s: float = 0.0
    talk_s: float = 0.0
    hold_s: float = 0.0
    transfers: int = 0
    #: the path being recorded ("" when none; also "" while a consent announcement plays)
    recording: str = ""
    #: the recording (see ``Recording``) and how many this call has had (their ids and paths)
    rec: Recording | None = None
    rec_seq: int = 0
    conference: str = ""
    #: a feature-code pickup call: the call its channel is being handed to (docs/parking.md)
    handover: str = ""
    #: outbound: the trunk attempts not tried yet (failover order) and the trunk of the current
    #: (or, when none answered, the last) attempt; the CDR names it
    trunk_plan: tuple[TrunkDial, ...] = ()
    trunk: str = ""
    ring_timeout_s: float = 30.0
    #: parking: the slot while PARKED (and while the timed-out park rings back), who is rung when
    #: the park times out, and the fallback after that ("" = hang up); ``park_stage`` is
    #: "parked", "return" (ringing the parker), "fallback" (ringing the fallback) or ""
    park_slot: str = ""
    park_return_to: str = ""
    park_fallback: str = ""
    park_stage: str = ""
    #: the mailbox the caller is sent to when the extension it rings does not answer (busy, no
    #: answer, unreachable); "" = none (docs/voicemail.md)
    voicemail_box: str = ""
    timers: frozenset[str] = frozenset()
    disposition: str = ""
    hangup_cause: str = ""
    cdr_written: bool = False

    def leg(self, leg_id: str) -> Leg | None:
        for leg in self.legs:
            if leg.id == leg_id:
                return leg
        return None

    @property
    def ringing(self) -> tuple[Leg, ...]:
        return tuple(leg for leg in self.legs if not leg.answered and leg.id != self.consult)


replace = msgspec.structs.replace

_WAIT = (CallState.QUEUED, CallState.RINGING)
_HOLD = (CallState.HELD, CallState.TRANSFERRING, CallState.PARKED)
LIVE = tuple(s for s in CallState if s is not CallState.ENDED)
_TALKING = (CallState.ACTIVE, CallState.HELD)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _t(call: Call, at: float) -> tuple[Call, float]:
    """The event's time, clamped so it never runs behind what the call has already seen.

    ``now`` itself only moves when the call changes state (``_enter``), so a duplicate or late
    event leaves the call exactly as it was.
    """
    return call, max(call.now, at)


def _enter(call: Call, new: CallState, t: float) -> Call:
    """Charge the time spent in the current state to its bucket and enter ``new``."""
    spent = max(0.0, t - call.state_since)
    wait, talk, hold = call.wait_s, call.talk_s, call.hold_s
    if call.state in _WAIT:
        wait += spent
    elif call.state is CallState.ACTIVE:
        talk += spent
    elif call.state in _HOLD:
        hold += spent
    return replace(call, state=new, state_since=t, now=t, wait_s=wait, talk_s=talk, hold_s=hold)


def _new_leg_id(call: Call) -> tuple[Call, str]:
    seq = call.leg_seq + 1
    return replace(call, leg_seq=seq), f"{call.call_id}-{seq}"


def _media(out: Out, command: object) -> None:
    out.add(SendMedia(command=command))  # type: ignore[arg-type]


def _without_leg(call: Call, leg_id: str) -> Call:
    return replace(call, legs=tuple(leg for leg in call.legs if leg.id != leg_id))


def _offer_failed(out: Out, call: Call, leg: Leg, reason: str, t: float) -> None:
    if leg.role != "agent":
        return
    msg = dict(at=t, offer_id=leg.offer_id, call_id=call.call_id, agent_id=leg.agent_id,
               queue_id=leg.queue_id, reason=reason)
    out.send("queue", leg.queue_id, OfferFailed(**msg))  # type: ignore[arg-type]
    out.send("agent", leg.agent_id, OfferFailed(**msg))  # type: ignore[arg-type]


def _drop_leg(call: Call, leg: Leg, out: Out, cause: str, t: float, *, hangup: bool, reason: str) -> Call:
    """Forget a ringing leg: stop its timer, optionally hang it up, tell queue and agent."""
    timers = cancel_timer(call.timers, out, f"ring:{leg.id}")
    if hangup:
        _media(out, MediaHangup(call_id=call.call_id, leg=leg.id, node=call.node, cause=cause))
    _offer_failed(out, call, leg, reason, t)
    return replace(_without_leg(call, leg.id), timers=timers)


def _ring(call: Call, out: Out, t: float, destination: str, timeout_s: float, role: str, *,
          gateway: str = "", caller_id: str = "", **ids: str) -> Call:
    call, leg_id = _new_leg_id(call)
    leg = Leg(id=leg_id, destination=destination, role=role, **ids)  # type: ignore[arg-type]
    # the leg carries who and why it rings as channel variables, so after a restart the switch's own
    # channel list tells which agent is on which leg (recovery rebuilds from it)
    variables = {"callengine_role": role, **{f"callengine_{k}": v for k, v in sorted(ids.items()) if v}}
    _media(out, MediaOriginate(call_id=call.call_id, leg=leg_id, node=call.node, destination=destination,
                               timeout_s=timeout_s, caller_id=caller_id or call.caller_id, variables=variables,
                               gateway=gateway))
    timers = start_timer(call.timers, out, f"ring:{leg_id}", t + timeout_s)
    return replace(call, legs=call.legs + (leg,), timers=timers)


def _mark_record(call: Call, record: bool, consent: str) -> Call:
    """The leg just rung records the call once it answers (always-on queue or extension)."""
    if not record:
        return call
    leg = replace(call.legs[-1], record=True, record_consent=consent)
    return replace(call, legs=call.legs[:-1] + (leg,))


def _ring_trunk(call: Call, out: Out, t: float, timeout_s: float) -> Call:
    """Dial the next attempt of the outbound plan (the caller hears ringback meanwhile)."""
    attempt, rest = call.trunk_plan[0], call.trunk_plan[1:]
    call = replace(call, trunk_plan=rest, trunk=attempt.trunk_id)
    call = _ring(call, out, t, attempt.number, timeout_s, "extension", gateway=attempt.gateway,
                 caller_id=attempt.caller_id, trunk_id=attempt.trunk_id)
    # trunk usage is counted from this event and CALL_ENDED (engine.routing.usage)
    out.cti("CALL_TRUNK_SEIZED", call.tenant, t, call_id=call.call_id, trunk=attempt.trunk_id,
            number=attempt.number)
    return call


def _trunk_failover(call: Call, leg: Leg, out: Out, t: float, cause: str) -> Call | None:
    """A trunk leg failed before answering: dial the next trunk when the cause allows it and one is
    left (returns the call), else None (the ordinary ring failure follows)."""
    if not leg.trunk_id or cause not in FAILOVER_CAUSES or not call.trunk_plan or call.state is not S.RINGING:
        return None
    nxt = call.trunk_plan[0]
    out.cti("CALL_TRUNK_FAILOVER", call.tenant, t, call_id=call.call_id, from_trunk=leg.trunk_id,
            to_trunk=nxt.trunk_id, cause=cause)
    timeout_s = max(1.0, call.ring_timeout_s)
    return _ring_trunk(call, out, t, timeout_s)


def _cause_reason(cause: str) -> Literal["busy", "no_answer", "failed"]:
    if cause in (HangupCause.USER_BUSY, HangupCause.CALL_REJECTED):
        return "busy"
    if cause in (HangupCause.NO_ANSWER, HangupCause.NO_USER_RESPONSE, HangupCause.ORIGINATOR_CANCEL):
        return "no_answer"
    return "failed"


def _end(call: Call, out: Out, t: float, disposition: Disposition, cause: str, *, hang_up_a: bool) -> Call:
    """Leave whatever state the call is in for ENDED: release everyone, one CDR, stop."""
    for leg in call.legs:
        if not leg.answered:
            reason = "caller_gone" if not call.a_up or disposition in ("abandoned",) else "failed"
            call = _drop_leg(call, leg, out, HangupCause.ORIGINATOR_CANCEL, t, hangup=True, reason=reason)
        else:
            _media(out, MediaHangup(call_id=call.call_id, leg=leg.id, node=call.node, cause=HangupCause.NORMAL_CLEARING))
            call = _without_leg(call, leg.id)
    if call.in_queue:
        out.send("queue", call.queue_id, CallerLeft(queue_id=call.queue_id, call_id=call.call_id, at=t))
    if call.agent_id and call.connected:
        out.send("agent", call.agent_id, AgentCallEnded(agent_id=call.agent_id, at=t, call_id=call.call_id,
                                                         queue_id=call.queue_id))
    if hang_up_a and call.a_up:
        _media(out, MediaHangup(call_id=call.call_id, leg="a", node=call.node, cause=cause))
    call = _finish_recording(call, out, t, "call_ended", command=False)
    timers = cancel_timers(call.timers, out)
    call = _enter(call, CallState.ENDED, t)
    call = replace(call, timers=timers, a_up=False, in_queue=False, connected="", consult="",
                   disposition=disposition, hangup_cause=cause, cdr_written=True)
    out.add(WriteCdr(cdr=Cdr(
        call_id=call.call_id, tenant=call.tenant, direction=call.direction, caller_id=call.caller_id,
        destination=call.destination, created_at=call.created_at, answered_at=call.answered_at,
        ended_at=t, disposition=disposition, hangup_cause=cause, queue_id=call.queue_id,
        agent_id=call.agent_id, wait_s=round(call.wait_s, 6), talk_s=round(call.talk_s, 6),
        hold_s=round(call.hold_s, 6), transfers=call.transfers, node=call.node, trunk=call.trunk,
        conference=call.conference)))
    out.cti("CALL_ENDED", call.tenant, t, call_id=call.call_id, disposition=disposition, cause=cause,
            queue_id=call.queue_id, agent_id=call.agent_id)
    out.add(Stop(reason=disposition))
    return call


def _unanswered_disposition(call: Call) -> Disposition:
    return "answered" if call.answered_at is not None else "abandoned"


# --------------------------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------------------------


def new_call(event: ChannelCreated) -> tuple[Call, list[Effect]]:
    """A new inbound channel: the call starts in ROUTING."""
    out = Out()
    call = Call(call_id=event.call_id, tenant=event.tenant, direction=event.direction,
                caller_id=event.caller_id, destination=event.destination, node=event.node,
                created_at=event.at, state_since=event.at, now=event.at)
    _created(out, call, event.at, incoming_traceparent(event.variables))
    return call, out.effects


def _created(out: Out, call: Call, t: float, traceparent: str) -> None:
    """CALL_CREATED; an incoming trace context rides on it, so the publisher and the tracer resume
    that trace for the whole call (engine.tracecontext)."""
    extra = {"traceparent": traceparent} if traceparent else {}
    out.cti("CALL_CREATED", call.tenant, t, call_id=call.call_id, caller_id=call.caller_id,
            destination=call.destination, direction=call.direction, **extra)


def originate_call(cmd: Originate) -> tuple[Call, list[Effect]]:
    """Click-to-call: ring the user's own phone (leg "a") first; dial ``to`` once it answers."""
    out = Out()
    t = cmd.at
    call = Call(call_id=cmd.call_id, tenant=cmd.tenant, direction="outbound",
                caller_id=cmd.caller_id or cmd.from_extension, destination=cmd.to, created_at=t,
                state=CallState.RINGING, state_since=t, now=t, a_up=False, pending_target=cmd.to,
                trunk_plan=cmd.trunks)
    _media(out, MediaOriginate(call_id=call.call_id, leg="a", destination=cmd.from_extension,
                               timeout_s=cmd.timeout_s, caller_id=cmd.to))
    timers = start_timer(call.timers, out, "ring:a", t + cmd.timeout_s)
    _created(out, call, t, cmd.traceparent if parse_traceparent(cmd.traceparent) else "")
    out.reply(cmd.request_id, call_id=call.call_id)
    return replace(call, timers=timers), out.effects


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------

MACHINE: Machine[Call, Message] = Machine("call", lambda c: c.state)
on = MACHINE.on
S = CallState

#: every event type the call machine understands in at least one state
CALL_EVENTS: tuple[type, ...] = (
    *MediaEvent.__args__,
    *CallCommand.__args__,
    EnterFlow, RouteToQueue, RouteToExtension, QueueOverflow, ConnectAgent, ProbeCall, TimerFired,
    RouteToPickup, PickupChannel, PickupHandedOver, VoicemailBox,
)

# informational media events: the engine drove them or they change nothing here
on(LIVE, ChannelCreated, ChannelBridged, ChannelUnbridged, ChannelProgress, PlaybackStarted,
   ApplicationExecuted, ApplicationCompleted)(ignore)
# after the end every event is late: a deliberate no-op
on([S.ENDED], *MediaEvent.__args__, EnterFlow, RouteToQueue, RouteToExtension, QueueOverflow,
   TimerFired, RouteToPickup, PickupHandedOver)(ignore)


@on(LIVE, ChannelHangup, ChannelHangupComplete, ChannelDestroyed)
def _on_leg_gone(call: Call, ev: ChannelHangup, out: Out) -> Call:
    call, t = _t(call, ev.at)
    cause = getattr(ev, "cause", HangupCause.NORMAL_CLEARING)
    if ev.leg == "a":
        if not call.a_up and call.pending_target:
            # click-to-call: the user's own phone never answered
            return _end(call, out, t, _disposition_for(cause), cause, hang_up_a=False)
        if not call.a_up:
            return call  # duplicate
        call = replace(call, a_up=False)
        if call.flow is not None and call.flow.graph is not None:
            # the flow learns the caller left (a voicemail being recorded is still a message)
            call = replace(_apply_flow(call, flows.hangup(call.flow.graph, call.flow, t), out, t), flow=None)
        return _end(call, out, t, _unanswered_disposition(call), cause, hang_up_a=False)
    leg = call.leg(ev.leg)
    if leg is None:
        return call  # late or duplicate: that leg is already gone
    if leg.id == call.consult:
        return _consult_gone(call, out, t)
    if not leg.answered:
        call = _drop_leg(call, leg, out, cause, t, hangup=False, reason=_cause_reason(cause))
        failed_over = _trunk_failover(call, leg, out, t, cause)
        if failed_over is not None:
            return failed_over
        return _after_ring_failure(call, out, t, cause)
    # the answering party hung up
    call = _without_leg(call, leg.id)
    if call.state is S.TRANSFERRING and call.consult:
        return _agent_left_during_consult(call, out, t)
    return _end(call, out, t, "answered", cause, hang_up_a=True)


def _disposition_for(cause: str) -> Disposition:
    reason = _cause_reason(cause)
    return "busy" if reason == "busy" else "no_answer" if reason == "no_answer" else "failed"


def _after_ring_failure(call: Call, out: Out, t: float, cause: str) -> Call:
    """A ringing leg is gone; decide where the caller goes."""
    if call.state is not S.RINGING or call.ringing:
        return call
    if call.in_queue:
        return _enter(call, S.QUEUED, t)  # back in line; the queue offers again
    if call.park_stage == "return" and call.park_fallback:
        # a timed-out park: the parker did not answer either; ring the fallback once
        out.cti("CALL_PARK_TIMEOUT", call.tenant, t, call_id=call.call_id, slot=call.park_slot,
                target=call.park_fallback)
        call = replace(call, park_stage="fallback")
        return _ring(call, out, t, call.park_fallback, call.ring_timeout_s, "extension")
    if call.voicemail_box and call.answered_at is None:
        return _to_voicemail(call, out, t, cause)
    # a caller who already talked to someone (then was transferred) still had an answered call
    disposition = "answered" if call.answered_at is not None else _disposition_for(cause)
    return _end(call, out, t, disposition, cause, hang_up_a=True)


def _to_voicemail(call: Call, out: Out, t: float, cause: str) -> Call:
    """The extension did not answer: the caller leaves a message in its mailbox (a one-node flow
    of the ``voicemail`` node with the mailbox's greeting and max length; docs/voicemail.md)."""
    box = call.voicemail_box
    graph = FlowGraph(id=f"voicemail:{box}", start="vm", nodes={"vm": VoicemailNode(box=box, from_mailbox=True)})
    out.cti("CALL_IN_FLOW", call.tenant, t, call_id=call.call_id, flow_id=graph.id, reason=_cause_reason(cause))
    call = replace(_enter(call, S.IN_FLOW, t), flow_id=graph.id, digits="", voicemail_box="")
    step = flows.start(graph, call_id=call.call_id, at=t, did=call.destination, caller_id=call.caller_id,
                       media_node=call.node, answered=call.a_answered)
    return _apply_flow(call, step, out, t)


@on(LIVE, ChannelAnswered)
def _on_answered(call: Call, ev: ChannelAnswered, out: Out) -> Call:
    call, t = _t(call, ev.at)
    if ev.leg == "a":
        if call.a_answered:
            return call
        call = replace(call, a_answered=True)
        if call.pending_target and not call.a_up:
            # click-to-call: the user's phone answered; now dial the destination
            timers = cancel_timer(call.timers, out, "ring:a")
            call = replace(call, a_up=True, timers=timers)
            target, call = call.pending_target, replace(call, pending_target="")
            if call.trunk_plan:
                # an outside number: its dial plan's first trunk (failover as any outbound call)
                return _ring_trunk(call, out, t, call.ring_timeout_s)
            return _ring(call, out, t, target, 30.0, "extension")
        return call
    leg = call.leg(ev.leg)
    if leg is None:
        # an answer after we cancelled that leg: hang it up so it does not become a ghost
        _media(out, MediaHangup(call_id=call.call_id, leg=ev.leg, node=call.node, cause=HangupCause.LOSE_RACE))
        return call
    if leg.answered:
        return call
    if leg.id == call.consult:
        timers = cancel_timer(call.timers, out, f"ring:{leg.id}")
        legs = tuple(replace(x, answered=True) if x.id == leg.id else x for x in call.legs)
        out.cti("CALL_CONSULT_ANSWERED", call.tenant, t, call_id=call.call_id, target=leg.destination)
        return replace(call, legs=legs, timers=timers)
    if call.state is not S.RINGING:
        _media(out, MediaHangup(call_id=call.call_id, leg=leg.id, node=call.node, cause=HangupCause.LOSE_RACE))
        return call
    return _connect(call, leg, out, t)


def _connect(call: Call, leg: Leg, out: Out, t: float) -> Call:
    timers = cancel_timer(call.timers, out, f"ring:{leg.id}")
    call = replace(call, timers=timers)
    for other in call.ringing:
        if other.id != leg.id:
            call = _drop_leg(call, other, out, HangupCause.LOSE_RACE, t, hangup=True, reason="answered_elsewhere")
    legs = tuple(replace(x, answered=True) if x.id == leg.id else x for x in call.legs)
    call = replace(call, legs=legs, connected=leg.id, trunk_plan=(), park_slot="", park_stage="",
                   park_return_to="", park_fallback="", voicemail_box="",
                   answered_at=call.answered_at if call.answered_at is not None else t)
    _media(out, MediaBridge(call_id=call.call_id, leg="a", node=call.node, other_leg=leg.id))
    if leg.role == "agent":
        msg = dict(at=t, offer_id=leg.offer_id, call_id=call.call_id, agent_id=leg.agent_id, queue_id=leg.queue_id)
        out.send("queue", leg.queue_id, OfferAnswered(**msg))  # type: ignore[arg-type]
        out.send("agent", leg.agent_id, OfferAnswered(**msg))  # type: ignore[arg-type]
        call = replace(call, agent_id=leg.agent_id, in_queue=False)
    out.cti("CALL_ANSWERED", call.tenant, t, call_id=call.call_id, agent_id=leg.agent_id,
            queue_id=leg.queue_id, answered_by=leg.destination)
    call = _enter(call, S.ACTIVE, t)
    if leg.record and call.rec is None:
        # always-on: the queue or extension that answered records every call
        by = f"auto:queue:{leg.queue_id}" if leg.role == "agent" else f"auto:extension:{leg.destination}"
        call = _begin_recording(call, out, t, by=by, consent=leg.record_consent, compliance=True)
    return call


@on(LIVE, ChannelHeld)
def _on_held(call: Call, ev: ChannelHeld, out: Out) -> Call:
    # a phone put the call on hold by itself; follow it
    if call.state is S.ACTIVE:
        call, t = _t(call, ev.at)
        out.cti("CALL_HELD", call.tenant, t, call_id=call.call_id, by="phone")
        return _enter(call, S.HELD, t)
    return call


@on(LIVE, ChannelUnheld)
def _on_unheld(call: Call, ev: ChannelUnheld, out: Out) -> Call:
    if call.state is S.HELD:
        call, t = _t(call, ev.at)
        out.cti("CALL_RETRIEVED", call.tenant, t, call_id=call.call_id, by="phone")
        return _enter(call, S.ACTIVE, t)
    return call


@on(LIVE, DtmfReceived)
def _on_dtmf(call: Call, ev: DtmfReceived, out: Out) -> Call:
    if call.state is S.IN_FLOW and ev.leg == "a":
        call = replace(call, digits=call.digits + ev.digit)
        if call.flow is not None:
            return _flow_event(call, ev, out)
    return call


@on([S.IN_FLOW], PlaybackFinished)
def _on_playback_finished(call: Call, ev: PlaybackFinished, out: Out) -> Call:
    if call.flow is not None and ev.leg == "a":
        return _flow_event(call, ev, out)
    return call  # an external flow driver listens to the switch itself


@on(_TALKING + (S.TRANSFERRING, S.ROUTING, S.QUEUED, S.RINGING, S.PARKED), PlaybackFinished)
def _on_playback_done(call: Call, ev: PlaybackFinished, out: Out) -> Call:
    """Outside a flow a finished prompt changes nothing, except the end of a consent announcement:
    the recording waiting for it starts now."""
    rec = call.rec
    if rec is None or rec.stage != "consent" or ev.leg != "a" or (ev.file and ev.file != rec.consent):
        return call
    call, t = _t(call, ev.at)
    call = replace(call, timers=cancel_timer(call.timers, out, CONSENT_TIMER))
    return _record_now(call, rec, out, t)


# RECORD_START confirms what the engine asked (the engine's CTI event already went out)
on(LIVE, RecordingStarted)(ignore)


@on(LIVE, RecordingStopped)
def _on_rec_stopped(call: Call, ev: RecordingStopped, out: Out) -> Call:
    """The media server stopped the recording by itself (limit, error, the leg went): only a
    RECORD_STOP of the current recording's file counts (a late one of an earlier recording does not)."""
    if call.flow is not None and ev.leg == "a" and call.state is S.IN_FLOW:
        return _flow_event(call, ev, out)  # a voicemail message ended (docs/voicemail.md)
    rec = call.rec
    if rec is None or rec.stage != "recording" or (ev.path and ev.path != rec.path):
        return call
    call, t = _t(call, ev.at)
    return _finish_recording(call, out, t, ev.cause or "media", command=False)


# ---- routing ---------------------------------------------------------------------------------


@on([S.ROUTING], EnterFlow)
def _enter_flow(call: Call, ev: EnterFlow, out: Out) -> Call:
    call, t = _t(call, ev.at)
    out.cti("CALL_IN_FLOW", call.tenant, t, call_id=call.call_id, flow_id=ev.flow_id)
    call = replace(_enter(call, S.IN_FLOW, t), flow_id=ev.flow_id, digits="")
    if ev.flow is None:
        return call  # an external driver runs the flow (it sends RouteTo* when done)
    step = flows.start(ev.flow, call_id=call.call_id, at=t, did=call.destination, caller_id=call.caller_id,
                       media_node=call.node, clock_offset=ev.clock_offset, answered=call.a_answered,
                       variables=ev.variables)
    return _apply_flow(call, step, out, t)


def _flow_event(call: Call, ev: object, out: Out) -> Call:
    """Hand a media event or the flow timer to the interpreter (call is IN_FLOW with a flow)."""
    call, t = _t(call, ev.at)  # type: ignore[attr-defined]
    run = call.flow
    assert run is not None and run.graph is not None
    graph = run.graph
    if run.answered != call.a_answered:
        run = replace(run, answered=call.a_answered)  # answered by a command meanwhile
    return _apply_flow(call, flows.handle(graph, run, ev), out, t)


def _apply_flow(call: Call, step: FlowStep, out: Out, t: float) -> Call:
    """Perform what the flow asked: media, its timer, and its outcome as ordinary routing."""
    timers = call.timers
    for effect in step.effects:
        if isinstance(effect, StartTimer):
            timers = start_timer(timers, out, effect.key, effect.deadline)
        elif isinstance(effect, CancelTimer):
            timers = cancel_timer(timers, out, effect.key)
        else:
            out.add(effect)
    call = replace(call, timers=timers, flow=step.run, a_answered=call.a_answered or step.run.answered)
    for event in step.events:  # what the flow reports (VOICEMAIL_NEW, ...), as the call's tenant
        out.cti(event.name, call.tenant, t, call_id=call.call_id, **event.data)
    outcome = step.outcome
    if outcome is None:
        return call
    out.cti("CALL_FLOW_ENDED", call.tenant, t, call_id=call.call_id, flow_id=call.flow_id,
            node=step.run.node, outcome=type(outcome).__name__)
    call = replace(call, flow=None)
    if isinstance(outcome, ToQueue):
        return _route_to_queue(call, RouteToQueue(call_id=call.call_id, at=t, queue_id=outcome.queue,
                                                  priority=outcome.priority, skills=outcome.skills), out)
    if isinstance(outcome, ToTarget):
        return _route_to_extension(call, RouteToExtension(
            call_id=call.call_id, at=t, target=outcome.target, timeout_s=outcome.timeout_s, record=outcome.record,
            record_consent=outcome.record_consent, voicemail=outcome.voicemail), out)
    if isinstance(outcome, ToConference):
        return _flow_conference(call, outcome, out, t, step.run.answered_at)
    assert isinstance(outcome, ToHangup)
    if step.run.answered_at is not None and call.answered_at is None:
        call = replace(call, answered_at=step.run.answered_at)
    disposition: Disposition = "answered" if call.answered_at is not None else "failed"
    return _end(call, out, t, disposition, outcome.cause, hang_up_a=True)


on([S.QUEUED, S.RINGING, S.ACTIVE, S.HELD, S.TRANSFERRING, S.PARKED, S.IN_FLOW], EnterFlow)(ignore)


def _flow_conference(call: Call, outcome: ToConference, out: Out, t: float, answered_at: float | None) -> Call:
    """A flow's conference node (docs/conferences.md): the caller's leg alone goes into the
    tenant's room; the call is ACTIVE (answered) with nobody connected until it hangs up or is kicked."""
    room = switch_room(call.tenant, outcome.room)
    if not call.a_answered:
        _media(out, MediaAnswer(call_id=call.call_id, leg="a", node=call.node))
    _media(out, MediaConference(call_id=call.call_id, leg="a", node=call.node, room=room, flags=outcome.flags))
    out.cti("CALL_CONFERENCED", call.tenant, t, call_id=call.call_id, room=room,
            moderator=outcome.moderator)
    call = replace(call, a_answered=True, conference=room,
                   answered_at=call.answered_at if call.answered_at is not None else (answered_at or t))
    return _enter(call, S.ACTIVE, t)


@on([S.IN_FLOW], VoicemailBox)
def _on_voicemail_box(call: Call, ev: VoicemailBox, out: Out) -> Call:
    """The mailbox a voicemail_access node asked for (docs/voicemail.md)."""
    if call.flow is not None:
        return _flow_event(call, ev, out)
    return call


# late: the caller left the flow (or hung up) before the mailbox came
on([s for s in CallState if s is not S.IN_FLOW], VoicemailBox)(ignore)


@on([S.ROUTING, S.IN_FLOW], RouteToQueue)
def _route_to_queue(call: Call, ev: RouteToQueue, out: Out) -> Call:
    call, t = _t(call, ev.at)
    if not call.a_answered:
        _media(out, MediaAnswer(call_id=call.call_id, leg="a", node=call.node))
    out.send("queue", ev.queue_id, QueueCall(queue_id=ev.queue_id, call_id=call.call_id, at=t,
                                             priority=ev.priority, skills=ev.skills,
                                             caller_id=call.caller_id, tenant=call.tenant))
    call = replace(call, a_answered=True, queue_id=ev.queue_id, priority=ev.priority,
                   skills=ev.skills, in_queue=True)
    return _enter(call, S.QUEUED, t)


@on([S.ROUTING, S.IN_FLOW, S.PARKED], RouteToExtension)
def _route_to_extension(call: Call, ev: RouteToExtension, out: Out) -> Call:
    call, t = _t(call, ev.at)
    if ev.trunks:
        # outbound: the dial plan's first trunk; the rest are the failover order
        call = replace(call, trunk_plan=ev.trunks, ring_timeout_s=ev.timeout_s)
        call = _ring_trunk(call, out, t, ev.timeout_s)
        out.cti("CALL_RINGING", call.tenant, t, call_id=call.call_id, target=ev.target, trunk=call.trunk)
        return _enter(call, S.RINGING, t)
    call = _mark_record(_ring(call, out, t, ev.target, ev.timeout_s, "extension"), ev.record, ev.record_consent)
    call = replace(call, voicemail_box=ev.voicemail)
    out.cti("CALL_RINGING", call.tenant, t, call_id=call.call_id, target=ev.target)
    return _enter(call, S.RINGING, t)


# a decision that arrives after the call moved on is stale
on([S.QUEUED, S.RINGING, S.ACTIVE, S.HELD, S.TRANSFERRING], RouteToQueue, RouteToExtension)(ignore)
on([S.PARKED], RouteToQueue)(ignore)


@on([S.QUEUED, S.RINGING], QueueOverflow)
def _overflow(call: Call, ev: QueueOverflow, out: Out) -> Call:
    call, t = _t(call, ev.at)
    if not call.in_queue or ev.queue_id != call.queue_id:
        return call
    for leg in call.ringing:
        call = _drop_leg(call, leg, out, HangupCause.ORIGINATOR_CANCEL, t, hangup=True, reason="caller_gone")
    call = replace(call, in_queue=False)
    out.cti("CALL_OVERFLOWED", call.tenant, t, call_id=call.call_id, queue_id=ev.queue_id,
            target=ev.target, reason=ev.reason)
    if ev.target.startswith("queue:"):
        call = _enter(call, S.ROUTING, t)
        return _route_to_queue(call, RouteToQueue(call_id=call.call_id, at=t, queue_id=ev.target[6:],
                                                  priority=call.priority, skills=call.skills), out)
    if ev.target:
        call = _ring(call, out, t, ev.target, 30.0, "extension")
        return _enter(call, S.RINGING, t)
    return _end(call, out, t, "overflowed", HangupCause.NORMAL_CLEARING, hang_up_a=True)


on([S.ROUTING, S.IN_FLOW, S.ACTIVE, S.HELD, S.TRANSFERRING, S.PARKED], QueueOverflow)(ignore)


@on(list(CallState), ConnectAgent)
def _connect_agent(call: Call, ev: ConnectAgent, out: Out) -> Call:
    call, t = _t(call, ev.at)
    if call.state in _WAIT and call.in_queue and ev.queue_id == call.queue_id:
        call = _ring(call, out, t, ev.extension, ev.ring_timeout_s, "agent", agent_id=ev.agent_id,
                     queue_id=ev.queue_id, offer_id=ev.offer_id)
        call = _mark_record(call, ev.record, ev.record_consent)
        out.cti("CALL_RINGING", call.tenant, t, call_id=call.call_id, agent_id=ev.agent_id,
                queue_id=ev.queue_id, target=ev.extension)
        return _enter(call, S.RINGING, t) if call.state is S.QUEUED else call
    # the caller is gone or already talking to someone: release the reservation at once
    reason = "answered_elsewhere" if call.state in (S.ACTIVE, S.HELD, S.TRANSFERRING) else "caller_gone"
    leg = Leg(id="", destination=ev.extension, role="agent", agent_id=ev.agent_id, queue_id=ev.queue_id,
              offer_id=ev.offer_id)
    _offer_failed(out, call, leg, reason, t)
    return call


@on(list(CallState), ProbeCall)
def _probe(call: Call, msg: ProbeCall, out: Out) -> Call:
    """An agent asks whether it is still connected to this call (it never is once ENDED)."""
    connected = call.state is not S.ENDED and bool(call.connected) and call.agent_id == msg.agent_id
    out.send("agent", msg.agent_id, ProbeReply(agent_id=msg.agent_id, at=max(call.now, msg.at),
                                               call_id=call.call_id, connected=connected))
    return call


@on(LIVE, TimerFired)
def _timer(call: Call, ev: TimerFired, out: Out) -> Call:
    if ev.key not in call.timers:
        return call  # stale: the timer was cancelled after it fired
    call, t = _t(call, ev.at)
    call = replace(call, timers=call.timers - {ev.key})
    if ev.key == "ring:a":
        # click-to-call: the user's own phone did not answer; cancel that leg
        _media(out, MediaHangup(call_id=call.call_id, leg="a", node=call.node, cause=HangupCause.ORIGINATOR_CANCEL))
        return _end(call, out, t, "no_answer", HangupCause.NO_ANSWER, hang_up_a=False)
    if ev.key.startswith("ring:"):
        leg = call.leg(ev.key[5:])
        if leg is None:
            return call
        if leg.id == call.consult:
            return _consult_gone(call, out, t, hang_up=True)
        call = _drop_leg(call, leg, out, HangupCause.ORIGINATOR_CANCEL, t, hangup=True, reason="no_answer")
        return _after_ring_failure(call, out, t, HangupCause.NO_ANSWER)
    if ev.key == PARK_TIMER and call.state is S.PARKED:
        return _park_timeout(call, out, t)
    if ev.key == HANDOVER_TIMER and call.handover:
        # the picked-up call never answered (gone meanwhile): the picker's phone hears the failure
        return _end(call, out, t, "failed", HangupCause.NO_ROUTE_DESTINATION, hang_up_a=True)
    if ev.key == flows.FLOW_TIMER and call.state is S.IN_FLOW and call.flow is not None:
        return _flow_event(call, ev, out)
    if ev.key == CONSENT_TIMER and call.rec is not None and call.rec.stage == "consent":
        # the switch never reported the announcement's end: give the recording up (never record
        # without it)
        out.cti("CALL_RECORDING_FAILED", call.tenant, t, **_rec_data(call, call.rec), reason="consent_timeout")
        return replace(call, rec=None)
    return call


# ---- commands --------------------------------------------------------------------------------


def _refuse(call: Call, cmd: CallCommand, out: Out) -> Call:
    out.reply(cmd.request_id, "FAILED_PRECONDITION",
              f"call {call.call_id} is {call.state.name}: cannot {type(cmd).__name__}")
    return call


on([S.ENDED], *CallCommand.__args__)(_refuse)
on(LIVE, Originate)(_refuse)  # the call exists already


@on([S.ROUTING, S.IN_FLOW, S.QUEUED], Answer)
def _answer(call: Call, cmd: Answer, out: Out) -> Call:
    if not call.a_answered:
        _media(out, MediaAnswer(call_id=call.call_id, leg="a", node=call.node))
    out.reply(cmd.request_id)
    return replace(call, a_answered=True)


on([S.RINGING, S.ACTIVE, S.HELD, S.TRANSFERRING, S.PARKED], Answer)(_refuse)


@on(LIVE, Hangup)
def _hangup(call: Call, cmd: Hangup, out: Out) -> Call:
    call, t = _t(call, cmd.at)
    out.reply(cmd.request_id)
    disposition: Disposition = "answered" if call.answered_at is not None else "abandoned"
    if call.state is S.RINGING and not call.in_queue and call.answered_at is None:
        disposition = "no_answer"
    return _end(call, out, t, disposition, cmd.cause, hang_up_a=True)


@on([S.ACTIVE], Hold)
def _hold(call: Call, cmd: Hold, out: Out) -> Call:
    call, t = _t(call, cmd.at)
    _media(out, MediaHold(call_id=call.call_id, leg="a", node=call.node))
    out.cti("CALL_HELD", call.tenant, t, call_id=call.call_id, agent_id=call.agent_id)
    out.reply(cmd.request_id)
    return _enter(call, S.HELD, t)


on([s for s in LIVE if s is not S.ACTIVE], Hold)(_refuse)


@on([S.HELD], Retrieve)
def _retrieve(call: Call, cmd: Retrieve, out: Out) -> Call:
    call, t = _t(call, cmd.at)
    _media(out, MediaUnhold(call_id=call.call_id, leg="a", node=call.node))
    out.cti("CALL_RETRIEVED", call.tenant, t, call_id=call.call_id, agent_id=call.agent_id)
    out.reply(cmd.request_id)
    return _enter(call, S.ACTIVE, t)


on([s for s in LIVE if s is not S.HELD], Retrieve)(_refuse)


def _release_connected(call: Call, out: Out, t: float, cause: str) -> Call:
    """Hang up the party the caller was talking to and free its agent."""
    if call.connected:
        _media(out, MediaHangup(call_id=call.call_id, leg=call.connected, node=call.node, cause=cause))
        call = _without_leg(call, call.connected)
    if call.agent_id:
        out.send("agent", call.agent_id, AgentCallEnded(agent_id=call.agent_id, at=t, call_id=call.call_id,
                                                         queue_id=call.queue_id))
    return replace(call, connected="", agent_id="")


@on(_TALKING, BlindTransfer)
def _blind_transfer(call: Call, cmd: BlindTransfer, out: Out) -> Call:
    call, t = _t(call, cmd.at)
    if call.state is S.HELD:
        _media(out, MediaUnhold(call_id=call.call_id, leg="a", node=call.node))
    if call.connected:
        # out of the bridge first: hanging the party up while bridged lets the switch end the
        # caller with it (hangup_after_bridge); parked, the caller waits for the target's leg
        _media(out, MediaPark(call_id=call.call_id, leg="a", node=call.node))
    call = _release_connected(call, out, t, HangupCause.BLIND_TRANSFER)
    call = replace(call, transfers=call.transfers + 1)
    if cmd.trunks:
        # to an outside number: through its dial plan, with failover
        call = replace(call, trunk_plan=cmd.trunks, ring_timeout_s=30.0)
        call = _ring_trunk(call, out, t, 30.0)
    else:
        call = _mark_record(_ring(call, out, t, cmd.target, 30.0, "extension"), cmd.record, cmd.record_consent)
    out.cti("CALL_TRANSFERRED", call.tenant, t, call_id=call.call_id, target=cmd.target, kind="blind")
    out.reply(cmd.request_id)
    return _enter(call, S.RINGING, t)


on([s for s in LIVE if s not in _TALKING], BlindTransfer)(_refuse)


@on(_TALKING, AttendedTransferStart)
def _att_start(call: Call, cmd: AttendedTransferStart, out: Out) -> Call:
    call, t = _t(call, cmd.at)
    if call.state is S.ACTIVE:
        _media(out, MediaHold(call_id=call.call_id, leg="a", node=call.node))
    call = _ring(call, out, t, cmd.target, cmd.timeout_s, "consult")
    call = replace(call, consult=call.legs[-1].id)
    out.cti("CALL_CONSULT_STARTED", call.tenant, t, call_id=call.call_id, target=cmd.target)
    out.reply(cmd.request_id, consult_leg=call.consult)
    return _enter(call, S.TRANSFERRING, t)


on([s for s in LIVE if s not in _TALKING], AttendedTransferStart)(_refuse)


@on([S.TRANSFERRING], AttendedTransferComplete)
def _att_complete(call: Call, cmd: AttendedTransferComplete, out: Out) -> Call:
    consult = call.leg(call.consult)
    if consult is None or not consult.answered:
        out.reply(cmd.request_id, "FAILED_PRECONDITION", "the transfer target has not answered yet")
        return call
    call, t = _t(call, cmd.at)
    if call.connected:
        # out of the agent's bridge before its leg is hung up (see _blind_transfer)
        _media(out, MediaPark(call_id=call.call_id, leg="a", node=call.node))
    call = _release_connected(call, out, t, HangupCause.ATTENDED_TRANSFER)
    return _complete_transfer(call, consult, out, t, cmd.request_id)


def _complete_transfer(call: Call, consult: Leg, out: Out, t: float, request_id: str = "") -> Call:
    _media(out, MediaUnhold(call_id=call.call_id, leg="a", node=call.node))
    _media(out, MediaBridge(call_id=call.call_id, leg="a", node=call.node, other_leg=consult.id))
    call = replace(call, connected=consult.id, consult="", transfers=call.transfers + 1)
    out.cti("CALL_TRANSFERRED", call.tenant, t, call_id=call.call_id, target=consult.destination, kind="attended")
    out.reply(request_id)
    return _enter(call, S.ACTIVE, t)


def _agent_left_during_consult(call: Call, out: Out, t: float) -> Call:
    """The agent hung up while consulting: the transfer completes (as on a desk phone)."""
    if call.agent_id:
        out.send("agent", call.agent_id, AgentCallEnded(agent_id=call.agent_id, at=t, call_id=call.call_id,
                                                         queue_id=call.queue_id))
    call = replace(call, connected="", agent_id="")
    consult = call.leg(call.consult)
    assert consult is not None
    if consult.answered:
        return _complete_transfer(call, consult, out, t)
    # still ringing: the caller now waits for the target as for any extension
    _media(out, MediaUnhold(call_id=call.call_id, leg="a", node=call.node))
    call = replace(call, consult="", transfers=call.transfers + 1)
    return _enter(call, S.RINGING, t)


@on([S.TRANSFERRING], AttendedTransferCancel)
def _att_cancel(call: Call, cmd: AttendedTransferCancel, out: Out) -> Call:
    call, t = _t(call, cmd.at)
    out.reply(cmd.request_id)
    return _consult_gone(call, out, t, hang_up=True)


on([s for s in LIVE if s is not S.TRANSFERRING], AttendedTransferComplete, AttendedTransferCancel)(_refuse)


def _consult_gone(call: Call, out: Out, t: float, *, hang_up: bool = False) -> Call:
    """The consult leg failed, was cancelled or hung up: back to the caller."""
    leg_id = call.consult
    timers = cancel_timer(call.timers, out, f"ring:{leg_id}")
    if hang_up:
        _media(out, MediaHangup(call_id=call.call_id, leg=leg_id, node=call.node, cause=HangupCause.ORIGINATOR_CANCEL))
    call = replace(_without_leg(call, leg_id), consult="", timers=timers)
    _media(out, MediaUnhold(call_id=call.call_id, leg="a", node=call.node))
    out.cti("CALL_CONSULT_ENDED", call.tenant, t, call_id=call.call_id)
    return _enter(call, S.ACTIVE, t)


#: the park timeout's timer key
PARK_TIMER = "park"


@on(_TALKING, Park)
def _park(call: Call, cmd: Park, out: Out) -> Call:
    if not cmd.timeout_s > 0:
        out.reply(cmd.request_id, "INVALID_ARGUMENT", f"park timeout must be > 0 s, not {cmd.timeout_s!r}")
        return call
    call, t = _t(call, cmd.at)
    connected = call.leg(call.connected)
    # the park times out back to whoever parked it: the party the caller was talking to
    return_to = cmd.return_to or (connected.destination if connected is not None else "")
    slot = cmd.slot or call.call_id
    # move the caller into the slot first (that unbridges it), then hang the parker's leg up: the
    # other order lets the switch end the caller with its bridged partner
    _media(out, MediaPark(call_id=call.call_id, leg="a", node=call.node, slot=slot))
    call = _release_connected(call, out, t, HangupCause.NORMAL_CLEARING)
    timers = start_timer(call.timers, out, PARK_TIMER, t + cmd.timeout_s)
    out.cti("CALL_PARKED", call.tenant, t, call_id=call.call_id, slot=slot)
    out.reply(cmd.request_id, slot=slot)
    call = replace(call, timers=timers, park_slot=slot, park_return_to=return_to, park_fallback=cmd.fallback,
                   park_stage="parked")
    return _enter(call, S.PARKED, t)


on([s for s in LIVE if s not in _TALKING], Park)(_refuse)


def _park_timeout(call: Call, out: Out, t: float) -> Call:
    """Nobody picked the call up: ring the parker (once); if there is none, the fallback; else hang up."""
    target, stage = call.park_return_to, "return"
    if not target:
        target, stage = call.park_fallback, "fallback"
    if not target:
        out.cti("CALL_PARK_TIMEOUT", call.tenant, t, call_id=call.call_id, slot=call.park_slot, target="")
        return _end(call, out, t, _unanswered_disposition(call), HangupCause.NO_ANSWER, hang_up_a=True)
    out.cti("CALL_PARK_TIMEOUT", call.tenant, t, call_id=call.call_id, slot=call.park_slot, target=target)
    call = _ring(replace(call, park_stage=stage), out, t, target, call.ring_timeout_s, "extension")
    out.cti("CALL_RINGING", call.tenant, t, call_id=call.call_id, target=target)
    return _enter(call, S.RINGING, t)


@on([S.PARKED], Pickup)
def _pickup(call: Call, cmd: Pickup, out: Out) -> Call:
    if cmd.kind != "slot":
        out.reply(cmd.request_id, "FAILED_PRECONDITION",
                  f"call {call.call_id} is PARKED: pick it up by slot, not {cmd.kind}")
        return call
    call, t = _t(call, cmd.at)
    timers = cancel_timer(call.timers, out, PARK_TIMER)
    slot = call.park_slot
    call = replace(call, timers=timers, park_slot="", park_stage="", park_return_to="", park_fallback="")
    call = _ring(call, out, t, cmd.extension, call.ring_timeout_s, "extension")
    out.cti("CALL_PICKED_UP", call.tenant, t, call_id=call.call_id, extension=cmd.extension, slot=slot,
            kind="slot")
    out.reply(cmd.request_id, slot=slot)
    return _enter(call, S.RINGING, t)


@on([S.RINGING], Pickup)
def _pickup_ringing(call: Call, cmd: Pickup, out: Out) -> Call:
    """Directed or group pickup: the picker takes a call that rings someone else. The ringing legs
    are cancelled (agents told ``answered_elsewhere``) and the picker's extension is rung instead,
    like a click-to-call to the picker's own phone. Which call to take (who rings where, pickup
    groups) is decided outside the machine, by ``engine.parking.RingingView``."""
    ringing = call.ringing
    if cmd.kind == "slot" or not ringing or (cmd.target and all(leg.destination != cmd.target for leg in ringing)):
        out.reply(cmd.request_id, "FAILED_PRECONDITION",
                  f"call {call.call_id} is not ringing {cmd.target or 'anyone'} for a {cmd.kind} pickup")
        return call
    if any(leg.destination == cmd.extension for leg in ringing):
        out.reply(cmd.request_id, "FAILED_PRECONDITION", f"call {call.call_id} already rings {cmd.extension}")
        return call
    call, t = _t(call, cmd.at)
    taken = ringing[0].destination if not cmd.target else cmd.target
    for leg in ringing:
        call = _drop_leg(call, leg, out, HangupCause.PICKED_OFF, t, hangup=True, reason="answered_elsewhere")
    if call.in_queue:
        # a queued caller taken by a pickup leaves its queue (the agents were released above)
        out.send("queue", call.queue_id, CallerLeft(queue_id=call.queue_id, call_id=call.call_id, at=t))
        call = replace(call, in_queue=False)
    call = _ring(call, out, t, cmd.extension, call.ring_timeout_s, "extension")
    out.cti("CALL_PICKED_UP", call.tenant, t, call_id=call.call_id, extension=cmd.extension, slot="",
            kind=cmd.kind, picked_from=taken)
    out.reply(cmd.request_id)
    return call


on([s for s in LIVE if s not in (S.PARKED, S.RINGING)], Pickup)(_refuse)


# ---- feature-code pickup (docs/parking.md) ------------------------------------------------------
# A phone dials a code (``**1001``, ``*8``, a park slot): its channel arrives as a call of its own
# (the feature call), which the router sends ``RouteToPickup``. The feature call offers its channel
# to the call it picks up (``PickupChannel``) and waits; that call adopts the channel as a leg
# (the channel's variables are rewritten, so its events follow it), answers ``PickupHandedOver``
# and connects its caller when the channel's answer comes back. The feature call then ends without hanging the channel up (one CDR,
# "answered"); refused or unanswered, it hangs its phone up.

HANDOVER_TIMER = "handover"
#: how long a picked-up call waits for the picker's adopted channel to answer
PICKUP_ANSWER_S = 5.0


@on([S.ROUTING], RouteToPickup)
def _route_to_pickup(call: Call, ev: RouteToPickup, out: Out) -> Call:
    call, t = _t(call, ev.at)
    if call.handover:
        return call  # a duplicate decision
    if not ev.target_call or ev.target_call == call.call_id:
        # nothing to pick up: the phone hears the failure at once
        return _end(call, out, t, "failed", HangupCause.NO_ROUTE_DESTINATION, hang_up_a=True)
    out.send("call", ev.target_call, PickupChannel(
        call_id=ev.target_call, at=t, from_call=call.call_id, leg=call.call_id, node=call.node,
        extension=ev.extension, kind=ev.kind, slot=ev.slot, target=ev.target, answered=call.a_answered))
    timers = start_timer(call.timers, out, HANDOVER_TIMER, t + ev.timeout_s)
    return replace(call, handover=ev.target_call, timers=timers)


on([s for s in LIVE if s is not S.ROUTING], RouteToPickup)(ignore)


@on([S.ROUTING], PickupHandedOver)
def _handed_over(call: Call, ev: PickupHandedOver, out: Out) -> Call:
    if not call.handover:
        return call
    call, t = _t(call, ev.at)
    timers = cancel_timer(call.timers, out, HANDOVER_TIMER)
    call = replace(call, timers=timers, handover="")
    if not ev.ok:
        return _end(call, out, t, "failed", HangupCause.NO_ROUTE_DESTINATION, hang_up_a=True)
    # the channel belongs to the picked-up call now: never hang it up from here
    call = replace(call, a_up=False, answered_at=t)
    return _end(call, out, t, "answered", HangupCause.NORMAL_CLEARING, hang_up_a=False)


on([s for s in LIVE if s is not S.ROUTING], PickupHandedOver)(ignore)


def _refuse_channel(call: Call, ev: PickupChannel, out: Out, reason: str) -> Call:
    out.send("call", ev.from_call, PickupHandedOver(call_id=ev.from_call, at=ev.at, ok=False, reason=reason))
    return call


@on([S.PARKED, S.RINGING], PickupChannel)
def _pickup_channel(call: Call, ev: PickupChannel, out: Out) -> Call:
    """Adopt the picker's channel: a parked call by slot, or a call ringing ``target``
    (directed) or a member of the picker's group (the router chose the call and the target)."""
    ringing = call.ringing
    if ev.node != call.node:
        return _refuse_channel(call, ev, out, "the picker's phone is on another media node")
    if call.state is S.PARKED and ev.kind != "slot":
        return _refuse_channel(call, ev, out, f"parked: pick it up by slot, not {ev.kind}")
    if call.state is S.RINGING and (ev.kind == "slot" or not ringing
                                    or (ev.target and all(leg.destination != ev.target for leg in ringing))):
        return _refuse_channel(call, ev, out, f"not ringing {ev.target or 'anyone'}")
    if call.leg(ev.leg) is not None or ev.leg == "a":
        return _refuse_channel(call, ev, out, "that channel is already a leg of this call")
    call, t = _t(call, ev.at)
    slot = call.park_slot
    taken = (ev.target or ringing[0].destination) if call.state is S.RINGING else ""
    timers = cancel_timer(call.timers, out, PARK_TIMER)
    call = replace(call, timers=timers, park_slot="", park_stage="", park_return_to="", park_fallback="")
    for leg in ringing:
        call = _drop_leg(call, leg, out, HangupCause.PICKED_OFF, t, hangup=True, reason="answered_elsewhere")
    if call.in_queue:
        out.send("queue", call.queue_id, CallerLeft(queue_id=call.queue_id, call_id=call.call_id, at=t))
        call = replace(call, in_queue=False)
    _media(out, MediaAdopt(call_id=call.call_id, leg=ev.leg, node=call.node))
    leg = Leg(id=ev.leg, destination=ev.extension, role="extension")
    if taken:
        out.cti("CALL_PICKED_UP", call.tenant, t, call_id=call.call_id, extension=ev.extension, slot="",
                kind=ev.kind, picked_from=taken)
    else:
        out.cti("CALL_PICKED_UP", call.tenant, t, call_id=call.call_id, extension=ev.extension, slot=slot,
                kind="slot")
    out.send("call", ev.from_call, PickupHandedOver(call_id=ev.from_call, at=t, ok=True))
    if ev.answered:
        # the phone's channel is up already: no answer event will come
        return _connect(replace(call, legs=call.legs + (leg,)), leg, out, t)
    # the channel is this call's leg now, connected when its answer comes back from the switch: a
    # channel that died meanwhile (the feature call gave up) never answers, and the leg's ring timer
    # then lets the caller go on as after any unanswered ring, instead of talking to nobody
    _media(out, MediaAnswer(call_id=call.call_id, leg=ev.leg, node=call.node))
    timers = start_timer(call.timers, out, f"ring:{ev.leg}", t + PICKUP_ANSWER_S)
    call = replace(call, legs=call.legs + (leg,), timers=timers)
    return _enter(call, S.RINGING, t)


@on([s for s in LIVE if s not in (S.PARKED, S.RINGING)], PickupChannel)
def _pickup_channel_refused(call: Call, ev: PickupChannel, out: Out) -> Call:
    return _refuse_channel(call, ev, out, f"the call is {call.state.name}")


on([S.ENDED], PickupChannel)(_pickup_channel_refused)


@on(_TALKING, JoinConference)
def _conference(call: Call, cmd: JoinConference, out: Out) -> Call:
    call, t = _t(call, cmd.at)
    if cmd.caller_only and call.state is S.HELD:
        _media(out, MediaUnhold(call_id=call.call_id, leg="a", node=call.node))
    # the caller's leg first: the transfer takes it out of its bridge, so releasing the party it
    # talked to (a blind transfer into the room) cannot end it with that party
    _media(out, MediaConference(call_id=call.call_id, leg="a", node=call.node, room=cmd.room,
                                flags=cmd.flags))
    if cmd.caller_only:
        call = _release_connected(call, out, t, HangupCause.BLIND_TRANSFER)
        call = replace(call, transfers=call.transfers + 1, conference=cmd.room)
        out.cti("CALL_TRANSFERRED", call.tenant, t, call_id=call.call_id, target=cmd.room, kind="blind")
        out.cti("CALL_CONFERENCED", call.tenant, t, call_id=call.call_id, room=cmd.room)
        out.reply(cmd.request_id)
        return _enter(call, S.ACTIVE, t)
    if call.connected:
        _media(out, MediaConference(call_id=call.call_id, leg=call.connected, node=call.node,
                                    room=cmd.room, flags=cmd.connected_flags))
    out.cti("CALL_CONFERENCED", call.tenant, t, call_id=call.call_id, room=cmd.room)
    out.reply(cmd.request_id)
    return replace(call, conference=cmd.room)


on([s for s in LIVE if s not in _TALKING], JoinConference)(_refuse)


@on([S.IN_FLOW, S.ACTIVE, S.HELD], SendDtmf)
def _send_dtmf(call: Call, cmd: SendDtmf, out: Out) -> Call:
    if not cmd.digits or any(d not in "0123456789*#ABCDabcd" for d in cmd.digits):
        out.reply(cmd.request_id, "INVALID_ARGUMENT", f"not DTMF digits: {cmd.digits!r}")
        return call
    _media(out, MediaSendDtmf(call_id=call.call_id, leg=call.connected or "a", node=call.node, digits=cmd.digits))
    out.reply(cmd.request_id)
    return call


on([s for s in LIVE if s not in (S.IN_FLOW, S.ACTIVE, S.HELD)], SendDtmf)(_refuse)


# ---- recordings (docs/recordings.md) -----------------------------------------------------------
#
# At most one recording at a time. Consent: with an announcement the recording waits in stage
# "consent" until the announcement's PlaybackFinished on leg "a"; only then does ``uuid_record
# start`` go out, so nothing is recorded before the parties heard it. Pause/resume mask the media
# bug (silence in the file) and are allowed only while recording. A compliance (always-on)
# recording is paused or stopped only with ``override`` (the API sets it when the tenant's policy
# allows). The call's end ends the recording (the media server closes the file with the channel):
# CALL_RECORDING_STOPPED(reason="call_ended") is the last word on it, and every recording that
# started gets exactly one CALL_RECORDING_STOPPED (the metadata row's end).

_REC_STATES = [S.ACTIVE, S.HELD, S.TRANSFERRING]
#: the consent announcement's end must be seen within this long, else the recording is given up
#: (CALL_RECORDING_FAILED): a recording never waits forever for an announcement the switch lost
CONSENT_TIMER = "rec:consent"
CONSENT_TIMEOUT_S = 120.0


def _rec_data(call: Call, rec: Recording) -> dict[str, str | bool | float]:
    connected = call.leg(call.connected)
    return dict(call_id=call.call_id, recording_id=rec.id, path=rec.path, by=rec.by,
                compliance=rec.compliance, queue_id=call.queue_id, agent_id=call.agent_id,
                extension=connected.destination if connected is not None else "")


def _begin_recording(call: Call, out: Out, t: float, *, by: str, consent: str, compliance: bool,
                     path: str = "") -> Call:
    seq = call.rec_seq + 1
    path = path or (f"{call.call_id}.wav" if seq == 1 else f"{call.call_id}-{seq}.wav")
    rec = Recording(id=f"{call.call_id}-r{seq}", path=path, by=by, compliance=compliance, consent=consent,
                    stage="consent" if consent else "recording")
    call = replace(call, rec=rec, rec_seq=seq)
    if consent:
        _media(out, MediaBroadcast(call_id=call.call_id, leg="a", node=call.node, file=consent))
        out.cti("CALL_RECORDING_CONSENT", call.tenant, t, **_rec_data(call, rec), file=consent)
        return replace(call, timers=start_timer(call.timers, out, CONSENT_TIMER, t + CONSENT_TIMEOUT_S))
    return _record_now(call, rec, out, t)


def _record_now(call: Call, rec: Recording, out: Out, t: float) -> Call:
    rec = replace(rec, stage="recording", started_at=t)
    _media(out, MediaRecordStart(call_id=call.call_id, leg="a", node=call.node, path=rec.path))
    out.cti("CALL_RECORDING_STARTED", call.tenant, t, **_rec_data(call, rec))
    return replace(call, rec=rec, recording=rec.path)


def _finish_recording(call: Call, out: Out, t: float, reason: str, *, command: bool) -> Call:
    """The recording ends: tell the media server (``command``) and CTI; a recording still waiting
    for its consent announcement never started and simply goes."""
    rec = call.rec
    if rec is None:
        return call
    if rec.stage == "consent":
        call = replace(call, timers=cancel_timer(call.timers, out, CONSENT_TIMER))
    if rec.stage == "recording":
        if command:
            _media(out, MediaRecordStop(call_id=call.call_id, leg="a", node=call.node, path=rec.path))
        paused_s = rec.paused_s + (max(0.0, t - rec.paused_at) if rec.paused else 0.0)
        out.cti("CALL_RECORDING_STOPPED", call.tenant, t, **_rec_data(call, rec), reason=reason,
                started_at=rec.started_at, duration_s=round(max(0.0, t - rec.started_at), 6),
                paused_s=round(paused_s, 6))
    return replace(call, rec=None, recording="")


@on(_REC_STATES, StartRecording)
def _start_rec(call: Call, cmd: StartRecording, out: Out) -> Call:
    if call.rec is not None:
        out.reply(cmd.request_id, "FAILED_PRECONDITION", f"call {call.call_id} is already recording")
        return call
    call, t = _t(call, cmd.at)
    call = _begin_recording(call, out, t, by=cmd.by, consent=cmd.consent, compliance=cmd.compliance,
                            path=cmd.path)
    assert call.rec is not None
    out.reply(cmd.request_id, path=call.rec.path, recording_id=call.rec.id, stage=call.rec.stage)
    return call


def _compliance_refused(call: Call, cmd: StopRecording | PauseRecording, out: Out, what: str) -> bool:
    if call.rec is not None and call.rec.compliance and not cmd.override:
        out.reply(cmd.request_id, "PERMISSION_DENIED",
                  f"call {call.call_id} has an always-on recording: the policy does not allow to {what} it")
        return True
    return False


@on(_REC_STATES, StopRecording)
def _stop_rec(call: Call, cmd: StopRecording, out: Out) -> Call:
    rec = call.rec
    if rec is None:
        out.reply(cmd.request_id, "FAILED_PRECONDITION", f"call {call.call_id} is not recording")
        return call
    if _compliance_refused(call, cmd, out, "stop"):
        return call
    call, t = _t(call, cmd.at)
    call = _finish_recording(call, out, t, "stopped", command=True)
    out.reply(cmd.request_id, recording_id=rec.id, started=rec.stage == "recording")
    return call


@on(_REC_STATES, PauseRecording)
def _pause_rec(call: Call, cmd: PauseRecording, out: Out) -> Call:
    rec = call.rec
    if rec is None or rec.stage != "recording" or rec.paused:
        state = "paused" if rec is not None and rec.paused else "not recording"
        out.reply(cmd.request_id, "FAILED_PRECONDITION", f"call {call.call_id} is {state}")
        return call
    if _compliance_refused(call, cmd, out, "pause"):
        return call
    call, t = _t(call, cmd.at)
    rec = replace(rec, paused=True, paused_at=t)
    _media(out, MediaRecordMask(call_id=call.call_id, leg="a", node=call.node, path=rec.path, mask=True))
    out.cti("CALL_RECORDING_PAUSED", call.tenant, t, **_rec_data(call, rec))
    out.reply(cmd.request_id, recording_id=rec.id)
    return replace(call, rec=rec)


@on(_REC_STATES, ResumeRecording)
def _resume_rec(call: Call, cmd: ResumeRecording, out: Out) -> Call:
    rec = call.rec
    if rec is None or not rec.paused:
        out.reply(cmd.request_id, "FAILED_PRECONDITION", f"call {call.call_id} has no paused recording")
        return call
    call, t = _t(call, cmd.at)
    rec = replace(rec, paused=False, paused_at=0.0, paused_s=rec.paused_s + max(0.0, t - rec.paused_at))
    _media(out, MediaRecordMask(call_id=call.call_id, leg="a", node=call.node, path=rec.path, mask=False))
    out.cti("CALL_RECORDING_RESUMED", call.tenant, t, **_rec_data(call, rec), paused_s=round(rec.paused_s, 6))
    out.reply(cmd.request_id, recording_id=rec.id)
    return replace(call, rec=rec)


on([S.ROUTING, S.IN_FLOW, S.QUEUED, S.RINGING, S.PARKED], StartRecording, StopRecording, PauseRecording,
   ResumeRecording)(_refuse)


def step(call: Call, event: Message) -> tuple[Call, list[Effect]]:
    """Apply one event to a call. Raises ``IllegalTransition`` for pairs outside the table."""
    return MACHINE.step(call, event)


__all__ += ["IllegalTransition"]
