"""Queue state machine: who waits, in what order, and which agent is offered whom.

Rule 1: every routing decision lives in this file; it is deterministic for a given state (ties are
        broken by a stable key), so simulations replay exactly.
Rule 2: no I/O, no trio, no clock reads: time arrives inside events.
Rule 3: the queue never owns an agent. It *reserves* one (``ReserveAgent``), and only on
        ``ReservationAccepted`` asks the call to ring it (``ConnectAgent``).

Theory of operation
Waiting callers are ordered by priority (higher first), then arrival. After every event the queue
dispatches: for each waiting caller without a pending offer, in that order, it picks among the
members that are logged in, available (as their last ``AgentStatus`` says), not already holding an
offer from this queue, and qualified for the caller's skills as relaxed by the time waited. The
strategy orders the candidates; ring-all offers to all of them at once.

A call that refuses an offer as "caller_gone" while the queue still holds it is not waiting here
(it ended and its ``CallerLeft`` follows, or a restarted shard rebuilt it and has not routed it
again): its waiter is left out of dispatch until the call rejoins with ``QueueCall`` (it keeps its
place) or leaves. Offering it again at once would trade offers with the call at message speed.

Skills: a caller requires ``{skill: minimum proficiency}``. ``relax_steps`` lower the minimums (and
finally drop the requirement) as the wait grows; a ``relax:<call>`` timer re-dispatches when the
next step is due. Max wait (``maxwait:<call>``) and max length overflow to ``overflow_target``.
A caller leaves exactly once: answered, abandoned or overflowed, each counted; abandons within
``short_abandon_s`` are counted apart, and answers within ``sl_threshold_s`` make the service level.

The machine has two states: IDLE (nobody waiting) and WAITING (at least one caller waiting).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from engine.fsm.base import Machine, Out, cancel_timer, cancel_timers, start_timer
from engine.messages import (
    AgentStatus,
    CallerLeft,
    ConnectAgent,
    Effect,
    Message,
    OfferAnswered,
    OfferFailed,
    QueueCall,
    QueueOverflow,
    ReleaseReservation,
    ReservationAccepted,
    ReservationRejected,
    ReserveAgent,
    TimerFired,
    UpdateQueueConfig,
)

__all__ = [
    "QueueState", "Queue", "QueueConfig", "RelaxStep", "Waiter", "Member", "Offer", "QueueStats",
    "new_queue", "step", "MACHINE", "QUEUE_EVENTS", "STRATEGIES", "required_skills",
]

Strategy = Literal["ring-all", "longest-idle", "least-talk-time", "round-robin", "fewest-calls", "skills-based"]
STRATEGIES: tuple[str, ...] = Strategy.__args__  # type: ignore[attr-defined]


class QueueState(enum.Enum):
    #: nobody is waiting
    IDLE = "idle"
    #: at least one caller is waiting (or being offered)
    WAITING = "waiting"


class RelaxStep(msgspec.Struct, frozen=True, kw_only=True):
    """After ``after_s`` seconds of waiting, lower every minimum by ``lower_by``; ``drop`` removes them all."""

    after_s: float
    lower_by: int = 0
    drop: bool = False


class QueueConfig(msgspec.Struct, frozen=True, kw_only=True):
    queue_id: str
    tenant: str = "default"
    strategy: Strategy = "longest-idle"
    ring_timeout_s: float = 20.0
    #: how much longer than the ring timeout an agent stays reserved at most
    offer_grace_s: float = 10.0
    wrap_up_s: float = 0.0
    #: 0 = no limit
    max_wait_s: float = 0.0
    #: 0 = no limit
    max_length: int = 0
    #: "" hangs up; "queue:<id>" moves to another queue; anything else is dialled
    overflow_target: str = ""
    sl_threshold_s: float = 20.0
    short_abandon_s: float = 5.0
    relax_steps: tuple[RelaxStep, ...] = ()
    #: always-on recording (docs/recordings.md): every call an agent answers from this queue is
    #: recorded, after the announcement ``record_consent`` ("" = none)
    record: bool = False
    record_consent: str = ""


class Waiter(msgspec.Struct, frozen=True, kw_only=True):
    call_id: str
    priority: int
    seq: int
    enqueued_at: float
    skills: dict[str, int] = {}
    caller_id: str = ""
    #: waited past max wait while an offer was pending: overflow once the offer fails
    overdue: bool = False
    #: the call refused an offer as "caller_gone" (it is not waiting here: ended, or rebuilt by a
    #: restarted shard and not routed yet): not offered again until it rejoins (``QueueCall``) or
    #: leaves, so a queue and a call that disagree do not trade offers at message speed
    unconfirmed: bool = False


class Member(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    extension: str = ""
    available: bool = False
    skills: dict[str, int] = {}
    idle_since: float = 0.0
    talk_time: float = 0.0
    calls_handled: int = 0
    #: AgentStatus.seq of the status this view comes from (0: unknown)
    seq: int = 0


class Offer(msgspec.Struct, frozen=True, kw_only=True):
    offer_id: str
    call_id: str
    agent_id: str
    phase: Literal["reserving", "ringing"] = "reserving"


class QueueStats(msgspec.Struct, frozen=True, kw_only=True):
    offered: int = 0
    answered: int = 0
    answered_within_sl: int = 0
    abandoned: int = 0
    short_abandoned: int = 0
    overflowed: int = 0
    total_wait_answered: float = 0.0
    max_length: int = 0


class Queue(msgspec.Struct, frozen=True, kw_only=True):
    config: QueueConfig
    state: QueueState = QueueState.IDLE
    now: float = 0.0
    waiting: tuple[Waiter, ...] = ()
    members: dict[str, Member] = {}
    #: ids of the members whose last status says available (an index over ``members``, kept in
    #: step by every handler that changes availability: dispatch scans this, not every member)
    available: frozenset[str] = frozenset()
    offers: dict[str, Offer] = {}
    seq: int = 0
    offer_seq: int = 0
    rr_cursor: str = ""
    timers: frozenset[str] = frozenset()
    stats: QueueStats = QueueStats()

    @property
    def queue_id(self) -> str:
        return self.config.queue_id

    def waiter(self, call_id: str) -> Waiter | None:
        for w in self.waiting:
            if w.call_id == call_id:
                return w
        return None

    def offers_for(self, call_id: str) -> list[Offer]:
        return [o for o in self.offers.values() if o.call_id == call_id]


replace = msgspec.structs.replace
S = QueueState

MACHINE: Machine[Queue, Message] = Machine("queue", lambda q: q.state)
on = MACHINE.on

QUEUE_EVENTS: tuple[type, ...] = (
    QueueCall, CallerLeft, AgentStatus, ReservationAccepted, ReservationRejected, OfferAnswered,
    OfferFailed, UpdateQueueConfig, TimerFired,
)


def new_queue(config: QueueConfig) -> Queue:
    return Queue(config=config)


def required_skills(config: QueueConfig, waiter: Waiter, now: float) -> dict[str, int]:
    """The caller's skill requirements relaxed by the time waited."""
    waited = now - waiter.enqueued_at
    lower = 0
    for relax in config.relax_steps:
        if waited + 1e-9 >= relax.after_s:
            if relax.drop:
                return {}
            lower += relax.lower_by
    if not lower:
        return waiter.skills
    return {skill: max(0, level - lower) for skill, level in waiter.skills.items()}


def _qualifies(member: Member, required: dict[str, int]) -> bool:
    return all(member.skills.get(skill, -1) >= level for skill, level in required.items())


def _next_relax(config: QueueConfig, waiter: Waiter, now: float) -> float | None:
    for relax in config.relax_steps:
        due = waiter.enqueued_at + relax.after_s
        if due > now + 1e-9:
            return due
    return None


def _rank_key(strategy: str, required: dict[str, int], rr_cursor: str) -> Callable[[Member], tuple[Any, ...]]:
    """The sort key that puts the best candidate first for ``strategy`` (ties: by agent id)."""
    if strategy == "skills-based":
        return lambda m: (-sum(m.skills.get(s, 0) for s in required), m.idle_since, m.agent_id)
    if strategy == "least-talk-time":
        return lambda m: (m.talk_time, m.idle_since, m.agent_id)
    if strategy == "fewest-calls":
        return lambda m: (m.calls_handled, m.idle_since, m.agent_id)
    if strategy == "round-robin":
        # the next id after the last one offered, wrapping around
        return lambda m: (m.agent_id <= rr_cursor, m.agent_id)
    # longest-idle and ring-all: who has waited longest for a call first
    return lambda m: (m.idle_since, m.agent_id)


def _order(q: Queue, candidates: list[Member], required: dict[str, int], rr_cursor: str) -> list[Member]:
    """Candidates best first: all of them for ring-all, else just the best (a linear ``min``,
    not a sort: this runs on every dispatch over every free agent)."""
    key = _rank_key(q.config.strategy, required, rr_cursor)
    if q.config.strategy == "ring-all":
        return sorted(candidates, key=key)
    return [min(candidates, key=key)]


def _settle(q: Queue) -> Queue:
    new = S.WAITING if q.waiting else S.IDLE
    return q if q.state is new else replace(q, state=new)


def _dispatch(q: Queue, out: Out, t: float) -> Queue:
    """Offer waiting callers to free, qualified agents, best first. Deterministic."""
    if not q.waiting:
        return _settle(q)
    if not q.available:
        return _settle(q)
    pending_calls = {o.call_id for o in q.offers.values()}
    if len(pending_calls) >= len(q.waiting):
        return _settle(q)  # every waiting caller already has an offer out
    busy = {o.agent_id for o in q.offers.values()}
    members = q.members
    # no sort here: every rank key ends with the agent id, so ``_order`` picks the same agent
    # whatever the order of ``free`` (sorting every free agent on every dispatch was ~2% of the
    # engine's CPU in bench/e2e.py with 200 agents)
    free = [members[a] for a in q.available if a not in busy]
    if not free:
        return _settle(q)
    offers = dict(q.offers)
    offer_seq, rr, timers = q.offer_seq, q.rr_cursor, q.timers
    cfg = q.config
    for waiter in sorted(q.waiting, key=lambda w: (-w.priority, w.seq)):
        if not free:
            break
        if waiter.call_id in pending_calls or waiter.overdue or waiter.unconfirmed:
            continue
        required = required_skills(cfg, waiter, t)
        candidates = [m for m in free if _qualifies(m, required)] if required else free
        if not candidates:
            continue
        chosen = _order(q, candidates, required, rr)
        for member in chosen:
            offer_seq += 1
            offer_id = f"{cfg.queue_id}-o{offer_seq}"
            offers[offer_id] = Offer(offer_id=offer_id, call_id=waiter.call_id, agent_id=member.agent_id)
            timeout = cfg.ring_timeout_s + cfg.offer_grace_s
            out.send("agent", member.agent_id, ReserveAgent(
                agent_id=member.agent_id, at=t, offer_id=offer_id, queue_id=cfg.queue_id,
                call_id=waiter.call_id, timeout_s=timeout, wrap_up_s=cfg.wrap_up_s))
            # until the agent answers the reservation, only this queue can notice that it never will
            timers = start_timer(timers, out, f"offer:{offer_id}", t + timeout)
            rr = member.agent_id
        chosen_ids = {m.agent_id for m in chosen}
        free = [m for m in free if m.agent_id not in chosen_ids]
    return _settle(replace(q, offers=offers, offer_seq=offer_seq, rr_cursor=rr, timers=timers))


def _t(q: Queue, at: float) -> tuple[Queue, float]:
    t = max(q.now, at)
    return replace(q, now=t), t


def _leave(q: Queue, waiter: Waiter, out: Out, t: float, outcome: str) -> Queue:
    """The caller leaves the queue: cancel its timers, void its offers, count it once."""
    keys = [f"maxwait:{waiter.call_id}", f"relax:{waiter.call_id}"]
    keys += [f"offer:{o.offer_id}" for o in q.offers_for(waiter.call_id)]
    timers = cancel_timers(q.timers, out, keys)
    offers = dict(q.offers)
    for offer in q.offers_for(waiter.call_id):
        # free every agent still held for this caller. A rung agent is also freed by the call, but
        # the call may have ended before our ConnectAgent reached it; a second release of the same
        # offer is a no-op at the agent, a missing one would leave it RESERVED until its timer.
        out.send("agent", offer.agent_id, ReleaseReservation(agent_id=offer.agent_id, at=t, offer_id=offer.offer_id))
        del offers[offer.offer_id]
    waited = max(0.0, t - waiter.enqueued_at)
    st = q.stats
    if outcome == "answered":
        st = replace(st, answered=st.answered + 1, total_wait_answered=st.total_wait_answered + waited,
                     answered_within_sl=st.answered_within_sl + (waited <= q.config.sl_threshold_s))
    elif outcome == "abandoned":
        st = replace(st, abandoned=st.abandoned + 1,
                     short_abandoned=st.short_abandoned + (waited < q.config.short_abandon_s))
    else:
        st = replace(st, overflowed=st.overflowed + 1)
    out.cti("QUEUE_LEFT", q.config.tenant, t, queue_id=q.queue_id, call_id=waiter.call_id, outcome=outcome,
            wait_s=round(waited, 3))
    waiting = tuple(w for w in q.waiting if w.call_id != waiter.call_id)
    return replace(q, waiting=waiting, offers=offers, timers=timers, stats=st)


def _overflow(q: Queue, waiter: Waiter, out: Out, t: float, reason: str) -> Queue:
    q = _leave(q, waiter, out, t, "overflowed")
    out.send("call", waiter.call_id, QueueOverflow(call_id=waiter.call_id, at=t, queue_id=q.queue_id,
                                                   target=q.config.overflow_target, reason=reason))  # type: ignore[arg-type]
    return q


@on(list(S), QueueCall)
def _enqueue(q: Queue, msg: QueueCall, out: Out) -> Queue:
    known = q.waiter(msg.call_id)
    if known is not None:
        if known.unconfirmed:  # the call is back: it keeps its place and is offered again
            q, _ = _t(q, msg.at)
            return replace(q, waiting=tuple(replace(w, unconfirmed=False) if w is known else w for w in q.waiting))
        return q  # duplicate
    q, t = _t(q, msg.at)
    cfg = q.config
    waiter = Waiter(call_id=msg.call_id, priority=msg.priority, seq=q.seq + 1, enqueued_at=t,
                    skills=dict(msg.skills), caller_id=msg.caller_id)
    q = replace(q, seq=waiter.seq, waiting=q.waiting + (waiter,),
                stats=replace(q.stats, offered=q.stats.offered + 1))
    out.cti("QUEUE_ENTERED", cfg.tenant, t, queue_id=q.queue_id, call_id=msg.call_id, priority=msg.priority,
            position=len(q.waiting))
    if cfg.max_length and len(q.waiting) > cfg.max_length:
        return _overflow(q, waiter, out, t, "max_length")
    q = replace(q, stats=replace(q.stats, max_length=max(q.stats.max_length, len(q.waiting))))
    timers = q.timers
    if cfg.max_wait_s > 0:
        timers = start_timer(timers, out, f"maxwait:{msg.call_id}", t + cfg.max_wait_s)
    due = _next_relax(cfg, waiter, t)
    if due is not None and waiter.skills:
        timers = start_timer(timers, out, f"relax:{msg.call_id}", due)
    return replace(q, timers=timers)


@on(list(S), CallerLeft)
def _caller_left(q: Queue, msg: CallerLeft, out: Out) -> Queue:
    waiter = q.waiter(msg.call_id)
    if waiter is None:
        return q  # already answered / overflowed / duplicate
    q, t = _t(q, msg.at)
    return _leave(q, waiter, out, t, "abandoned")


@on(list(S), AgentStatus)
def _agent_status(q: Queue, msg: AgentStatus, out: Out) -> Queue:
    q, t = _t(q, msg.at)
    known = q.members.get(msg.agent_id)
    if known is not None and msg.seq and msg.seq < known.seq:
        return q  # an older status overtaken by a newer one: keep the newer view
    members = dict(q.members)
    available = q.available
    if msg.logged_in and msg.available:
        if msg.agent_id not in available:
            available = available | {msg.agent_id}
    elif msg.agent_id in available:
        available = available - {msg.agent_id}
    if not msg.logged_in:
        members.pop(msg.agent_id, None)
    else:
        members[msg.agent_id] = Member(agent_id=msg.agent_id, extension=msg.extension, available=msg.available,
                                       skills=dict(msg.skills), idle_since=msg.idle_since,
                                       talk_time=msg.talk_time, calls_handled=msg.calls_handled, seq=msg.seq)
    return replace(q, members=members, available=available)


@on(list(S), ReservationAccepted)
def _accepted(q: Queue, msg: ReservationAccepted, out: Out) -> Queue:
    q, t = _t(q, msg.at)
    offer = q.offers.get(msg.offer_id)
    if offer is None or offer.phase != "reserving":
        # the caller left (or overflowed) while we were reserving: free the agent
        out.send("agent", msg.agent_id, ReleaseReservation(agent_id=msg.agent_id, at=t, offer_id=msg.offer_id))
        return q
    offers = dict(q.offers)
    offers[msg.offer_id] = replace(offer, phase="ringing")
    # from here the agent's own safety timer covers the offer (it rejects it as "expired")
    q = replace(q, timers=cancel_timer(q.timers, out, f"offer:{msg.offer_id}"))
    member = q.members.get(msg.agent_id)
    extension = msg.extension or (member.extension if member else "")
    out.send("call", offer.call_id, ConnectAgent(call_id=offer.call_id, at=t, queue_id=q.queue_id,
                                                 offer_id=offer.offer_id, agent_id=msg.agent_id,
                                                 extension=extension, ring_timeout_s=q.config.ring_timeout_s,
                                                 record=q.config.record, record_consent=q.config.record_consent))
    return replace(q, offers=offers)


@on(list(S), ReservationRejected)
def _rejected(q: Queue, msg: ReservationRejected, out: Out) -> Queue:
    q, t = _t(q, msg.at)
    offer = q.offers.get(msg.offer_id)
    if offer is None:
        return q
    offers = dict(q.offers)
    del offers[msg.offer_id]
    q = replace(q, timers=cancel_timer(q.timers, out, f"offer:{msg.offer_id}"))
    members = dict(q.members)
    # the agent said no: our view of it is stale until its next AgentStatus. Unless that status is
    # already here (links may reorder, e.g. across shards): a status newer than the rejection wins.
    member = members.get(msg.agent_id)
    if member is not None and not (msg.status_seq and member.seq > msg.status_seq):
        members[msg.agent_id] = replace(member, available=False)
        q = replace(q, offers=offers, members=members, available=q.available - {msg.agent_id})
    else:
        q = replace(q, offers=offers, members=members)
    return _retry_or_overflow(q, offer.call_id, out, t)


def _retry_or_overflow(q: Queue, call_id: str, out: Out, t: float) -> Queue:
    waiter = q.waiter(call_id)
    if waiter is not None and waiter.overdue and not q.offers_for(call_id):
        q = _overflow(q, waiter, out, t, "max_wait")
    return q


@on(list(S), OfferAnswered)
def _answered(q: Queue, msg: OfferAnswered, out: Out) -> Queue:
    waiter = q.waiter(msg.call_id)
    if waiter is None:
        return q
    q, t = _t(q, msg.at)
    offers = dict(q.offers)
    offers.pop(msg.offer_id, None)
    timers = cancel_timer(q.timers, out, f"offer:{msg.offer_id}")
    return _leave(replace(q, offers=offers, timers=timers), waiter, out, t, "answered")


@on(list(S), OfferFailed)
def _failed(q: Queue, msg: OfferFailed, out: Out) -> Queue:
    if msg.offer_id not in q.offers:
        return q
    q, t = _t(q, msg.at)
    offers = dict(q.offers)
    del offers[msg.offer_id]
    timers = cancel_timer(q.timers, out, f"offer:{msg.offer_id}")
    waiting = q.waiting
    if msg.reason == "caller_gone":
        waiting = tuple(replace(w, unconfirmed=True) if w.call_id == msg.call_id else w for w in waiting)
    return _retry_or_overflow(replace(q, offers=offers, timers=timers, waiting=waiting), msg.call_id, out, t)


@on(list(S), TimerFired)
def _timer(q: Queue, msg: TimerFired, out: Out) -> Queue:
    if msg.key not in q.timers:
        return q  # stale
    q, t = _t(q, msg.at)
    q = replace(q, timers=q.timers - {msg.key})
    kind, _, ident = msg.key.partition(":")
    if kind == "offer":
        return _reservation_lost(q, ident, out, t)
    call_id = ident
    waiter = q.waiter(call_id)
    if waiter is None:
        return q
    if kind == "maxwait":
        if q.offers_for(call_id):
            # an agent is being offered or rung: do not yank the caller; overflow if that fails
            waiting = tuple(replace(w, overdue=True) if w.call_id == call_id else w for w in q.waiting)
            return replace(q, waiting=waiting)
        return _overflow(q, waiter, out, t, "max_wait")
    if kind == "relax":
        due = _next_relax(q.config, waiter, t)
        if due is not None:
            q = replace(q, timers=start_timer(q.timers, out, msg.key, due))
        return q
    return q


@on(list(S), UpdateQueueConfig)
def _update_config(q: Queue, msg: UpdateQueueConfig, out: Out) -> Queue:
    """Apply new parameters to a running queue; waiting callers keep their place.

    Timers already running keep their deadlines (a caller's max wait is what it was promised at
    entry); new callers get the new limits. The id cannot change.
    """
    try:
        config = msgspec.convert(msg.config, type=QueueConfig)
    except msgspec.ValidationError as err:
        out.reply(msg.request_id, "INVALID_ARGUMENT", f"queue {q.queue_id}: {err}")
        return q
    if config.queue_id != q.queue_id:
        out.reply(msg.request_id, "INVALID_ARGUMENT",
                  f"queue {q.queue_id}: config is for queue {config.queue_id!r}")
        return q
    q, t = _t(q, msg.at)
    out.reply(msg.request_id)
    out.cti("QUEUE_CONFIG_CHANGED", config.tenant, t, queue_id=q.queue_id, strategy=config.strategy)
    return replace(q, config=config)  # step() re-dispatches under the new strategy


def _reservation_lost(q: Queue, offer_id: str, out: Out, t: float) -> Queue:
    """The agent never answered our ReserveAgent (lost, or its actor crashed on it).

    Void the offer so the caller can be offered again; tell the agent in case it is reserved after
    all. Its availability is left as its last status said: marking it busy here could leave a free
    agent invisible to this queue forever, and a wrong guess only costs one rejected reservation.
    """
    offer = q.offers.get(offer_id)
    if offer is None or offer.phase != "reserving":
        return q
    offers = dict(q.offers)
    del offers[offer_id]
    out.send("agent", offer.agent_id, ReleaseReservation(agent_id=offer.agent_id, at=t, offer_id=offer_id))
    out.cti("QUEUE_OFFER_LOST", q.config.tenant, t, queue_id=q.queue_id, call_id=offer.call_id,
            agent_id=offer.agent_id, offer_id=offer_id)
    return _retry_or_overflow(replace(q, offers=offers), offer.call_id, out, t)


def step(queue: Queue, event: Message) -> tuple[Queue, list[Effect]]:
    """Apply one event to a queue, then dispatch once if it changed anything.

    Dispatching here rather than in each handler means no path can forget it: after every event
    that moved the queue, no waiting caller is left beside a free agent it qualifies for (at the
    event's time, with skills relaxed to that time). Raises ``IllegalTransition`` for pairs
    outside the table.
    """
    new, effects = MACHINE.step(queue, event)
    if new is queue:
        return new, effects
    out = Out()
    out.effects = effects
    return _dispatch(new, out, new.now), out.effects
