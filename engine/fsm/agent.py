"""Agent state machine.

Rule 1: every decision about an agent's availability lives in this file.
Rule 2: no I/O, no trio, no clock reads: time arrives inside events.
Rule 3: an agent is reserved by one offer at a time; a reservation is accepted only in AVAILABLE.

Theory of operation::

    LOGGED_OUT --login--> NOT_READY(login) | AVAILABLE
    AVAILABLE --ReserveAgent--> RESERVED --OfferAnswered--> ON_CALL --AgentCallEnded--> WRAP_UP --timer--> AVAILABLE
                                  |  \\--OfferFailed / ReleaseReservation / offer timer--> AVAILABLE
                                  |                       (NOT_READY(missed_offers) after N misses)
    AVAILABLE <--ready-- NOT_READY(reason) <--not ready-- AVAILABLE

Queues never see the agent's state directly: on every change the agent sends ``AgentStatus`` to
each of its queues (availability, idle since, talk time, calls handled, skills, extension). A queue
that offers on a stale view simply gets ``ReservationRejected``. The offer timer (``offer``) is a
safety net longer than the call's ring timeout, so an agent is never stuck in RESERVED if a message
is lost. Logout during a call or an offer is remembered and takes effect when it ends; "not ready"
asked during a call is applied after the call instead of wrap-up's return to AVAILABLE.
"""

from __future__ import annotations

import enum

import msgspec

from engine.fsm.base import Machine, Out, cancel_timer, cancel_timers, ignore, start_timer
from engine.messages import (
    AgentCallEnded,
    AgentCommand,
    AgentEndWrapUp,
    AgentJoinQueue,
    AgentLeaveQueue,
    AgentLogin,
    AgentLogout,
    AgentNotReady,
    AgentReady,
    AgentStatus,
    DeviceState,
    Effect,
    Message,
    OfferAnswered,
    OfferFailed,
    ProbeCall,
    ProbeReply,
    ReleaseReservation,
    ReservationAccepted,
    ReservationRejected,
    ReserveAgent,
    TimerFired,
)

__all__ = ["AgentState", "Agent", "new_agent", "step", "MACHINE", "AGENT_EVENTS"]


class AgentState(enum.Enum):
    #: not working; never offered a call
    LOGGED_OUT = "logged_out"
    #: idle and ready for an offer
    AVAILABLE = "available"
    #: one offer is pending (the call is being set up or is ringing the agent's phone)
    RESERVED = "reserved"
    #: talking (or holding) with exactly one caller
    ON_CALL = "on_call"
    #: after-call work; ends by timer or by the agent
    WRAP_UP = "wrap_up"
    #: logged in but not taking calls, with a reason code
    NOT_READY = "not_ready"


class Agent(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    tenant: str = "default"
    state: AgentState = AgentState.LOGGED_OUT
    extension: str = ""
    queues: tuple[str, ...] = ()
    skills: dict[str, int] = {}
    reason: str = ""
    state_since: float = 0.0
    now: float = 0.0
    idle_since: float = 0.0
    talk_time: float = 0.0
    calls_handled: int = 0
    offer_id: str = ""
    offer_queue: str = ""
    call_id: str = ""
    wrap_up_s: float = 0.0
    missed_offers: int = 0
    #: consecutive missed offers before the agent is set NOT_READY
    max_missed_offers: int = 3
    pending_logout: bool = False
    pending_not_ready: str = ""
    #: while ON_CALL, how often the agent asks its call whether it is still connected, and how long it
    #: waits for the answer: a lost AgentCallEnded (its message dead-lettered by a crash, or its
    #: call actor gone) cannot leave an agent on a call forever
    probe_interval_s: float = 300.0
    probe_timeout_s: float = 30.0
    #: the last offer whose safety timer ran out (its call may still report an answer, see below)
    expired_offer: str = ""
    #: counts the AgentStatus messages sent (carried as AgentStatus.seq)
    status_seq: int = 0
    #: the agent's phone is registered (unknown counts as registered until told otherwise)
    phone_registered: bool = True
    timers: frozenset[str] = frozenset()

    @property
    def offerable(self) -> bool:
        """AVAILABLE and reachable: the only condition under which a reservation is accepted."""
        return self.state is AgentState.AVAILABLE and self.phone_registered


replace = msgspec.structs.replace
S = AgentState
LOGGED_IN = tuple(s for s in S if s is not S.LOGGED_OUT)

MACHINE: Machine[Agent, Message] = Machine("agent", lambda a: a.state)
on = MACHINE.on

AGENT_EVENTS: tuple[type, ...] = (
    *AgentCommand.__args__,
    ReserveAgent, ReleaseReservation, OfferAnswered, OfferFailed, AgentCallEnded, ProbeReply, TimerFired,
)


def new_agent(agent_id: str, tenant: str = "default", max_missed_offers: int = 3) -> Agent:
    return Agent(agent_id=agent_id, tenant=tenant, max_missed_offers=max_missed_offers)


def _t(agent: Agent, at: float) -> tuple[Agent, float]:
    t = max(agent.now, at)
    return replace(agent, now=t), t


def _status(agent: Agent, out: Out, t: float) -> Agent:
    """Tell every queue of the agent its status; returns the agent with its counter advanced."""
    if not agent.queues:
        return agent
    agent = replace(agent, status_seq=agent.status_seq + 1)
    for queue_id in agent.queues:
        _status_to(agent, out, t, queue_id, logged_in=agent.state is not S.LOGGED_OUT)
    return agent


def _status_to(agent: Agent, out: Out, t: float, queue_id: str, *, logged_in: bool) -> None:
    out.send("queue", queue_id, AgentStatus(
        queue_id=queue_id, agent_id=agent.agent_id, at=t, logged_in=logged_in,
        available=logged_in and agent.offerable, extension=agent.extension, skills=agent.skills,
        idle_since=agent.idle_since, talk_time=agent.talk_time, calls_handled=agent.calls_handled,
        seq=agent.status_seq))


def _go(agent: Agent, new: AgentState, out: Out, t: float, reason: str = "") -> Agent:
    """Enter ``new``: account talk time, keep idle-since, tell CTI and the queues."""
    talk = agent.talk_time + (max(0.0, t - agent.state_since) if agent.state is S.ON_CALL else 0.0)
    idle_since = t if new is S.AVAILABLE and agent.state is not S.RESERVED else agent.idle_since
    old = agent.state
    agent = replace(agent, state=new, state_since=t, talk_time=talk, idle_since=idle_since,
                    reason=reason if new is S.NOT_READY else "")
    if new is not S.RESERVED:
        agent = replace(agent, offer_id="", offer_queue="")
    out.cti("AGENT_STATE_CHANGED", agent.tenant, t, agent_id=agent.agent_id, state=new.name,
            previous=old.name, reason=agent.reason or None)
    return _status(agent, out, t)


def _after_work(agent: Agent, out: Out, t: float) -> Agent:
    """Where an agent goes when a call, its wrap-up or an offer ends: a pending logout or "not
    ready" first, then NOT_READY after too many missed offers, else AVAILABLE."""
    if agent.pending_logout:
        return _logout_now(agent, out, t)
    if agent.pending_not_ready:
        reason = agent.pending_not_ready
        return _go(replace(agent, pending_not_ready=""), S.NOT_READY, out, t, reason)
    if agent.missed_offers >= agent.max_missed_offers:
        return _go(agent, S.NOT_READY, out, t, "missed_offers")
    return _go(agent, S.AVAILABLE, out, t)


def _logout_now(agent: Agent, out: Out, t: float) -> Agent:
    timers = cancel_timers(agent.timers, out)
    agent = replace(agent, timers=timers, pending_logout=False, pending_not_ready="", call_id="")
    return _go(agent, S.LOGGED_OUT, out, t)


def _refuse(agent: Agent, cmd: AgentCommand, out: Out) -> Agent:
    out.reply(cmd.request_id, "FAILED_PRECONDITION",
              f"agent {agent.agent_id} is {agent.state.name}: cannot {type(cmd).__name__}")
    return agent


# ---- commands --------------------------------------------------------------------------------


@on([S.LOGGED_OUT], AgentLogin)
def _login(agent: Agent, cmd: AgentLogin, out: Out) -> Agent:
    agent, t = _t(agent, cmd.at)
    if not cmd.extension:
        out.reply(cmd.request_id, "INVALID_ARGUMENT", "login needs an extension")
        return agent
    # no queues in the login: keep the memberships configured before (AgentJoinQueue while logged out)
    agent = replace(agent, extension=cmd.extension, queues=tuple(cmd.queues) or agent.queues,
                    skills=dict(cmd.skills),
                    tenant=cmd.tenant, missed_offers=0, idle_since=t)
    out.reply(cmd.request_id)
    return _go(agent, S.AVAILABLE if cmd.ready else S.NOT_READY, out, t, "" if cmd.ready else "login")


on(LOGGED_IN, AgentLogin)(_refuse)
on([S.LOGGED_OUT], AgentLogout, AgentReady, AgentNotReady, AgentEndWrapUp)(_refuse)


@on([S.AVAILABLE, S.NOT_READY, S.WRAP_UP], AgentLogout)
def _logout(agent: Agent, cmd: AgentLogout, out: Out) -> Agent:
    agent, t = _t(agent, cmd.at)
    out.reply(cmd.request_id)
    return _logout_now(agent, out, t)


@on([S.RESERVED, S.ON_CALL], AgentLogout)
def _logout_later(agent: Agent, cmd: AgentLogout, out: Out) -> Agent:
    out.reply(cmd.request_id, message="logout takes effect when the current call ends")
    return replace(agent, pending_logout=True)


@on([S.NOT_READY, S.WRAP_UP], AgentReady)
def _ready(agent: Agent, cmd: AgentReady, out: Out) -> Agent:
    agent, t = _t(agent, cmd.at)
    timers = cancel_timer(agent.timers, out, "wrap")
    out.reply(cmd.request_id)
    return _go(replace(agent, timers=timers, missed_offers=0, pending_not_ready=""), S.AVAILABLE, out, t)


@on([S.AVAILABLE], AgentReady)
def _already_ready(agent: Agent, cmd: AgentReady, out: Out) -> Agent:
    out.reply(cmd.request_id)
    return agent


@on([S.RESERVED, S.ON_CALL], AgentReady)
def _ready_after_call(agent: Agent, cmd: AgentReady, out: Out) -> Agent:
    out.reply(cmd.request_id, message="already taking calls")
    return replace(agent, pending_not_ready="")


@on([S.AVAILABLE, S.NOT_READY, S.WRAP_UP], AgentNotReady)
def _not_ready(agent: Agent, cmd: AgentNotReady, out: Out) -> Agent:
    agent, t = _t(agent, cmd.at)
    timers = cancel_timer(agent.timers, out, "wrap")
    out.reply(cmd.request_id)
    return _go(replace(agent, timers=timers), S.NOT_READY, out, t, cmd.reason or "break")


@on([S.RESERVED, S.ON_CALL], AgentNotReady)
def _not_ready_later(agent: Agent, cmd: AgentNotReady, out: Out) -> Agent:
    out.reply(cmd.request_id, message="not ready takes effect when the current call ends")
    return replace(agent, pending_not_ready=cmd.reason or "break")


@on([S.WRAP_UP], AgentEndWrapUp)
def _end_wrap(agent: Agent, cmd: AgentEndWrapUp, out: Out) -> Agent:
    agent, t = _t(agent, cmd.at)
    timers = cancel_timer(agent.timers, out, "wrap")
    out.reply(cmd.request_id)
    return _after_work(replace(agent, timers=timers), out, t)


on([S.AVAILABLE, S.RESERVED, S.ON_CALL, S.NOT_READY], AgentEndWrapUp)(_refuse)


# ---- the reservation protocol ----------------------------------------------------------------


@on(list(S), AgentJoinQueue)
def _join(agent: Agent, cmd: AgentJoinQueue, out: Out) -> Agent:
    if not cmd.queue_id:
        out.reply(cmd.request_id, "INVALID_ARGUMENT", "queue_id is required")
        return agent
    out.reply(cmd.request_id)
    if cmd.queue_id in agent.queues:
        return agent
    agent, t = _t(agent, cmd.at)
    agent = replace(agent, queues=agent.queues + (cmd.queue_id,), status_seq=agent.status_seq + 1)
    if agent.state is not S.LOGGED_OUT:
        _status_to(agent, out, t, cmd.queue_id, logged_in=True)
    return agent


@on(list(S), AgentLeaveQueue)
def _leave(agent: Agent, cmd: AgentLeaveQueue, out: Out) -> Agent:
    if cmd.queue_id not in agent.queues:
        out.reply(cmd.request_id, "NOT_FOUND", f"agent {agent.agent_id} is not in queue {cmd.queue_id}")
        return agent
    out.reply(cmd.request_id)
    agent, t = _t(agent, cmd.at)
    agent = replace(agent, status_seq=agent.status_seq + 1)
    if agent.state is not S.LOGGED_OUT:
        _status_to(agent, out, t, cmd.queue_id, logged_in=False)  # the queue forgets the member
    return replace(agent, queues=tuple(q for q in agent.queues if q != cmd.queue_id))


@on([S.AVAILABLE], ReserveAgent)
def _reserve(agent: Agent, msg: ReserveAgent, out: Out) -> Agent:
    if not agent.phone_registered:
        return _reject(agent, msg, out)
    agent, t = _t(agent, msg.at)
    out.send("queue", msg.queue_id, ReservationAccepted(queue_id=msg.queue_id, agent_id=agent.agent_id,
                                                        at=t, offer_id=msg.offer_id, extension=agent.extension))
    timers = start_timer(agent.timers, out, "offer", t + msg.timeout_s)
    agent = replace(agent, timers=timers, call_id=msg.call_id, wrap_up_s=msg.wrap_up_s, expired_offer="")
    agent = _go(agent, S.RESERVED, out, t)
    return replace(agent, offer_id=msg.offer_id, offer_queue=msg.queue_id)


@on([S.LOGGED_OUT, S.RESERVED, S.ON_CALL, S.WRAP_UP, S.NOT_READY], ReserveAgent)
def _reject(agent: Agent, msg: ReserveAgent, out: Out) -> Agent:
    agent, t = _t(agent, msg.at)
    reason = agent.state.value if agent.state is not S.AVAILABLE else "phone_unregistered"
    out.send("queue", msg.queue_id, ReservationRejected(queue_id=msg.queue_id, agent_id=agent.agent_id, at=t,
                                                        offer_id=msg.offer_id, reason=reason,
                                                        status_seq=agent.status_seq))
    return agent


@on(list(S), DeviceState)
def _device(agent: Agent, msg: DeviceState, out: Out) -> Agent:
    if msg.registered == agent.phone_registered:
        return agent
    agent, t = _t(agent, msg.at)
    agent = replace(agent, phone_registered=msg.registered)
    out.reply(msg.request_id)
    if agent.state is not S.LOGGED_OUT:
        out.cti("AGENT_DEVICE_CHANGED", agent.tenant, t, agent_id=agent.agent_id, registered=msg.registered,
                contact=msg.contact or None)
        agent = _status(agent, out, t)  # queues see the agent appear or disappear as offerable
    return agent


@on([S.RESERVED], ReleaseReservation)
def _release(agent: Agent, msg: ReleaseReservation, out: Out) -> Agent:
    if msg.offer_id != agent.offer_id:
        return agent
    agent, t = _t(agent, msg.at)
    timers = cancel_timer(agent.timers, out, "offer")
    return _after_work(replace(agent, timers=timers, call_id=""), out, t)


@on([S.RESERVED], OfferFailed)
def _offer_failed(agent: Agent, msg: OfferFailed, out: Out) -> Agent:
    if msg.offer_id != agent.offer_id:
        return agent
    agent, t = _t(agent, msg.at)
    timers = cancel_timer(agent.timers, out, "offer")
    missed = agent.missed_offers + (1 if msg.reason in ("no_answer", "busy") else 0)
    agent = replace(agent, timers=timers, call_id="", missed_offers=missed)
    if msg.reason in ("no_answer", "busy"):
        out.cti("AGENT_OFFER_MISSED", agent.tenant, t, agent_id=agent.agent_id, call_id=msg.call_id,
                queue_id=msg.queue_id, reason=msg.reason, missed=missed)
        agent = replace(agent, idle_since=t)  # a missed offer does not keep the agent first in line
    return _after_work(agent, out, t)


@on([S.RESERVED], OfferAnswered)
def _offer_answered(agent: Agent, msg: OfferAnswered, out: Out) -> Agent:
    if msg.offer_id != agent.offer_id:
        return agent
    agent, t = _t(agent, msg.at)
    timers = cancel_timer(agent.timers, out, "offer")
    timers = start_timer(timers, out, "probe", t + agent.probe_interval_s)
    return _go(replace(agent, timers=timers, call_id=msg.call_id, missed_offers=0), S.ON_CALL, out, t)


@on([S.ON_CALL], AgentCallEnded)
def _call_ended(agent: Agent, msg: AgentCallEnded, out: Out) -> Agent:
    if msg.call_id != agent.call_id:
        return agent
    agent, t = _t(agent, msg.at)
    return _leave_call(agent, out, t)


def _leave_call(agent: Agent, out: Out, t: float) -> Agent:
    """The conversation is over: account it, stop probing, then wrap up (or go on)."""
    talk = agent.talk_time + max(0.0, t - agent.state_since)
    timers = cancel_timers(agent.timers, out, ("probe", "probe_timeout"))
    agent = replace(agent, talk_time=talk, state_since=t, calls_handled=agent.calls_handled + 1, call_id="",
                    timers=timers)
    if agent.pending_logout or agent.wrap_up_s <= 0:
        return _after_work(agent, out, t)
    timers = start_timer(agent.timers, out, "wrap", t + agent.wrap_up_s)
    return _go(replace(agent, timers=timers), S.WRAP_UP, out, t)


@on(LOGGED_IN, TimerFired)
def _timer(agent: Agent, msg: TimerFired, out: Out) -> Agent:
    if msg.key not in agent.timers:
        return agent  # stale
    agent, t = _t(agent, msg.at)
    agent = replace(agent, timers=agent.timers - {msg.key})
    if msg.key == "wrap" and agent.state is S.WRAP_UP:
        return _after_work(agent, out, t)
    if msg.key == "offer" and agent.state is S.RESERVED:
        # nobody resolved the offer in time: count it as missed and free the agent
        out.send("queue", agent.offer_queue, ReservationRejected(
            queue_id=agent.offer_queue, agent_id=agent.agent_id, at=t, offer_id=agent.offer_id, reason="expired",
            status_seq=agent.status_seq))
        agent = replace(agent, missed_offers=agent.missed_offers + 1, call_id="", idle_since=t,
                        expired_offer=agent.offer_id)
        return _after_work(agent, out, t)
    if msg.key == "probe" and agent.state is S.ON_CALL:
        out.send("call", agent.call_id, ProbeCall(call_id=agent.call_id, at=t, agent_id=agent.agent_id))
        return replace(agent, timers=start_timer(agent.timers, out, "probe_timeout", t + agent.probe_timeout_s))
    if msg.key == "probe_timeout" and agent.state is S.ON_CALL:
        return _call_lost(agent, out, t, "no answer from the call")
    return agent


def _call_lost(agent: Agent, out: Out, t: float, why: str) -> Agent:
    out.cti("AGENT_CALL_LOST", agent.tenant, t, agent_id=agent.agent_id, call_id=agent.call_id, reason=why)
    return _leave_call(agent, out, t)


@on([S.ON_CALL], ProbeReply)
def _probe_reply(agent: Agent, msg: ProbeReply, out: Out) -> Agent:
    if msg.call_id != agent.call_id or "probe_timeout" not in agent.timers:
        return agent  # not the probe in flight
    agent, t = _t(agent, msg.at)
    timers = cancel_timer(agent.timers, out, "probe_timeout")
    if not msg.connected:
        return _call_lost(replace(agent, timers=timers), out, t, "the call no longer has this agent")
    return replace(agent, timers=start_timer(timers, out, "probe", t + agent.probe_interval_s))


@on([S.AVAILABLE, S.NOT_READY], OfferAnswered)
def _late_answer(agent: Agent, msg: OfferAnswered, out: Out) -> Agent:
    """The call reports an answer for an offer whose safety timer already freed the agent.

    Only reachable when a message took longer than the grace period. The agent's phone *is*
    connected to that caller, so reality wins: the agent goes ON_CALL (it has taken no other
    offer since, or it would be RESERVED / ON_CALL and this would not apply).
    """
    if not msg.offer_id or msg.offer_id != agent.expired_offer:
        return agent
    agent, t = _t(agent, msg.at)
    timers = start_timer(agent.timers, out, "probe", t + agent.probe_interval_s)
    agent = replace(agent, expired_offer="", call_id=msg.call_id, missed_offers=max(0, agent.missed_offers - 1),
                    timers=timers)
    out.cti("AGENT_LATE_ANSWER", agent.tenant, t, agent_id=agent.agent_id, call_id=msg.call_id,
            queue_id=msg.queue_id)
    return _go(agent, S.ON_CALL, out, t)


# late or foreign protocol messages: explicit no-ops
on([S.LOGGED_OUT, S.AVAILABLE, S.ON_CALL, S.WRAP_UP, S.NOT_READY], ReleaseReservation, OfferFailed)(ignore)
on([S.LOGGED_OUT, S.ON_CALL, S.WRAP_UP], OfferAnswered)(ignore)
on([S.LOGGED_OUT, S.AVAILABLE, S.RESERVED, S.WRAP_UP, S.NOT_READY], AgentCallEnded)(ignore)
on([S.LOGGED_OUT], TimerFired)(ignore)
on([S.LOGGED_OUT, S.AVAILABLE, S.RESERVED, S.WRAP_UP, S.NOT_READY], ProbeReply)(ignore)


def step(agent: Agent, event: Message) -> tuple[Agent, list[Effect]]:
    """Apply one event to an agent. Raises ``IllegalTransition`` for pairs outside the table."""
    return MACHINE.step(agent, event)
