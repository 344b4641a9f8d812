"""Stateful property test of the queue machine, against a simple model of who is waiting.

Invariants: FIFO within a priority (no caller ahead in line is left without an offer while the
agent given to a later caller would have qualified for it); never an offer to an agent lacking the
(relaxed) skills; never one caller offered twice at once (ring-all aside) and never one agent
holding two offers; dispatch is maximal (no waiting caller and qualified free agent left apart);
every caller leaves exactly once (answered, abandoned or overflowed) and the counts add up;
timers exist only for callers still waiting; a caller whose call refused an offer as "caller_gone"
is offered nobody until it rejoins, and then keeps its place.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine.fsm import queue as Q
from engine.messages import (
    AgentStatus,
    CallerLeft,
    CancelTimer,
    OfferAnswered,
    OfferFailed,
    PublishCti,
    QueueCall,
    ReservationAccepted,
    ReservationRejected,
    ReserveAgent,
    Send,
    StartTimer,
    TimerFired,
)

AGENTS = ["a1", "a2", "a3", "a4"]
SKILLS = st.dictionaries(st.sampled_from(["en", "de"]), st.integers(10, 90), max_size=2)


def order_key(w: Q.Waiter):
    return (-w.priority, w.seq)


class QueueMachine(RuleBasedStateMachine):
    @initialize(strategy=st.sampled_from(Q.STRATEGIES), max_wait=st.sampled_from([0.0, 60.0]),
                max_length=st.sampled_from([0, 3]),
                relax=st.sampled_from([(), (Q.RelaxStep(after_s=20, lower_by=30), Q.RelaxStep(after_s=50, drop=True))]))
    def setup(self, strategy, max_wait, max_length, relax):
        self.q = Q.new_queue(Q.QueueConfig(queue_id="q1", strategy=strategy, max_wait_s=max_wait,
                                           max_length=max_length, relax_steps=relax))
        self.t = 0.0
        self.n = 0
        self.timers: set[str] = set()
        self.left: dict[str, str] = {}
        self.joined: list[str] = []
        #: callers whose call refused an offer as "caller_gone" and has not rejoined (the model)
        self.unconfirmed: set[str] = set()

    def apply(self, event) -> None:
        before = self.q
        self.q, effects = Q.step(self.q, event)
        if isinstance(event, TimerFired):
            self.timers.discard(event.key)
        new_offers = []
        for e in effects:
            if isinstance(e, StartTimer):
                self.timers.add(e.key)
            elif isinstance(e, CancelTimer):
                assert e.key in self.timers
                self.timers.discard(e.key)
            elif isinstance(e, PublishCti) and e.event.name == "QUEUE_LEFT":
                cid = e.event.call_id
                assert cid not in self.left, f"{cid} left twice"
                self.left[cid] = str(e.event.data["outcome"])
            elif isinstance(e, Send) and isinstance(e.message, ReserveAgent):
                new_offers.append(e.message)
        self.check_offers(before, new_offers)

    def check_offers(self, before: Q.Queue, new_offers: list[ReserveAgent]) -> None:
        q = self.q
        for offer in new_offers:
            member = q.members.get(offer.agent_id) or before.members[offer.agent_id]
            waiter = q.waiter(offer.call_id)
            assert waiter is not None
            assert offer.call_id not in self.unconfirmed, f"{offer.call_id} offered though its call refused"
            required = Q.required_skills(q.config, waiter, self.t)
            assert all(member.skills.get(s, -1) >= lvl for s, lvl in required.items()), "unqualified agent offered"
            # nobody ahead in line, still without an offer, would have qualified for this agent
            for ahead in q.waiting:
                if (order_key(ahead) < order_key(waiter) and not q.offers_for(ahead.call_id) and not ahead.overdue
                        and not ahead.unconfirmed):
                    need = Q.required_skills(q.config, ahead, self.t)
                    assert not all(member.skills.get(s, -1) >= lvl for s, lvl in need.items()), (
                        f"{ahead.call_id} was skipped for {waiter.call_id}")

    def tick(self, dt: float) -> float:
        self.t += dt
        return self.t

    dt = st.floats(min_value=0.0, max_value=15.0, allow_nan=False)

    @rule(dt=dt, priority=st.integers(0, 2), skills=SKILLS)
    def caller_joins(self, dt, priority, skills):
        self.n += 1
        cid = f"c{self.n}"
        self.joined.append(cid)
        self.apply(QueueCall(queue_id="q1", call_id=cid, at=self.tick(dt), priority=priority, skills=skills))

    @precondition(lambda self: self.q.waiting)
    @rule(dt=dt, data=st.data())
    def caller_leaves(self, dt, data):
        waiter = data.draw(st.sampled_from(self.q.waiting))
        self.apply(CallerLeft(queue_id="q1", call_id=waiter.call_id, at=self.tick(dt)))

    @rule(dt=dt, agent=st.sampled_from(AGENTS), available=st.booleans(), logged_in=st.booleans(), skills=SKILLS,
          idle=st.floats(0, 100), calls=st.integers(0, 5))
    def agent_status(self, dt, agent, available, logged_in, skills, idle, calls):
        self.apply(AgentStatus(queue_id="q1", agent_id=agent, at=self.tick(dt), logged_in=logged_in,
                               available=available, skills=skills, idle_since=idle, calls_handled=calls,
                               extension=f"x-{agent}"))

    def offers(self, phase):
        return sorted(o.offer_id for o in self.q.offers.values() if o.phase == phase)

    @precondition(lambda self: any(o.phase == "reserving" for o in self.q.offers.values()))
    @rule(dt=dt, data=st.data(), accept=st.booleans())
    def agent_answers_reservation(self, dt, data, accept):
        offer = self.q.offers[data.draw(st.sampled_from(self.offers("reserving")))]
        kind = ReservationAccepted if accept else ReservationRejected
        self.apply(kind(queue_id="q1", agent_id=offer.agent_id, at=self.tick(dt), offer_id=offer.offer_id))

    @precondition(lambda self: any(o.phase == "ringing" for o in self.q.offers.values()))
    @rule(dt=dt, data=st.data(), answered=st.booleans())
    def ring_outcome(self, dt, data, answered):
        offer = self.q.offers[data.draw(st.sampled_from(self.offers("ringing")))]
        kw = dict(at=self.tick(dt), offer_id=offer.offer_id, call_id=offer.call_id, agent_id=offer.agent_id,
                  queue_id="q1")
        self.apply(OfferAnswered(**kw) if answered else OfferFailed(**kw, reason="no_answer"))
        if answered:
            self.unconfirmed.discard(offer.call_id)

    @precondition(lambda self: any(o.phase == "ringing" for o in self.q.offers.values()))
    @rule(dt=dt, data=st.data())
    def call_refuses_offer(self, dt, data):
        """The call is not waiting here (ended, or rebuilt by a restarted shard and not routed yet)."""
        offer = self.q.offers[data.draw(st.sampled_from(self.offers("ringing")))]
        self.unconfirmed.add(offer.call_id)  # before the step: its own dispatch must not offer it
        self.apply(OfferFailed(at=self.tick(dt), offer_id=offer.offer_id, call_id=offer.call_id,
                               agent_id=offer.agent_id, queue_id="q1", reason="caller_gone"))

    @precondition(lambda self: self.q.waiting)
    @rule(dt=dt, data=st.data())
    def caller_rejoins(self, dt, data):
        """The call announces itself again (routed again after a restart, or a peer's resync)."""
        waiter = data.draw(st.sampled_from(self.q.waiting))
        self.unconfirmed.discard(waiter.call_id)  # before the step: its own dispatch may offer it
        self.apply(QueueCall(queue_id="q1", call_id=waiter.call_id, at=self.tick(dt), priority=waiter.priority,
                             skills=waiter.skills))
        assert self.q.waiter(waiter.call_id).seq == waiter.seq, "a rejoining caller lost its place"

    @precondition(lambda self: self.timers)
    @rule(data=st.data())
    def timer_fires(self, data):
        key = data.draw(st.sampled_from(sorted(self.timers)))
        self.apply(TimerFired(key=key, at=self.tick(data.draw(self.dt))))

    @invariant()
    def offers_are_exclusive(self):
        agents = [o.agent_id for o in self.q.offers.values()]
        assert len(agents) == len(set(agents)), "an agent holds two offers"
        if self.q.config.strategy != "ring-all":
            calls = [o.call_id for o in self.q.offers.values()]
            assert len(calls) == len(set(calls)), "a caller is offered twice at once"
        waiting = {w.call_id for w in self.q.waiting}
        assert all(o.call_id in waiting for o in self.q.offers.values())

    @invariant()
    def dispatch_is_maximal(self):
        q = self.q
        busy = {o.agent_id for o in q.offers.values()}
        free = [m for m in q.members.values() if m.available and m.agent_id not in busy]
        for w in q.waiting:
            if q.offers_for(w.call_id) or w.overdue or w.unconfirmed:
                continue
            need = Q.required_skills(q.config, w, q.now)
            for m in free:
                assert not all(m.skills.get(s, -1) >= lvl for s, lvl in need.items()), (
                    f"{w.call_id} waits while {m.agent_id} is free and qualified")

    @invariant()
    def every_caller_leaves_exactly_once(self):
        waiting = {w.call_id for w in self.q.waiting}
        assert waiting.isdisjoint(self.left)
        assert waiting | set(self.left) == set(self.joined)
        s = self.q.stats
        assert s.offered == len(self.joined)
        assert s.answered + s.abandoned + s.overflowed == len(self.left)
        assert s.answered_within_sl <= s.answered and s.short_abandoned <= s.abandoned
        assert self.q.state is (Q.QueueState.WAITING if waiting else Q.QueueState.IDLE)

    @invariant()
    def refused_callers_are_held_back(self):
        held = {w.call_id for w in self.q.waiting if w.unconfirmed}
        assert held == self.unconfirmed & {w.call_id for w in self.q.waiting}

    @invariant()
    def availability_index_matches_members(self):
        expected = {a for a, m in self.q.members.items() if m.available}
        assert set(self.q.available) == expected, "the availability index drifted from the members"

    @invariant()
    def timers_belong_to_waiting_callers_and_pending_reservations(self):
        assert set(self.q.timers) == self.timers
        waiting = {w.call_id for w in self.q.waiting}
        reserving = {o.offer_id for o in self.q.offers.values() if o.phase == "reserving"}
        for key in self.timers:
            kind, ident = key.split(":", 1)
            assert ident in (reserving if kind == "offer" else waiting), key
        assert {f"offer:{o}" for o in reserving} <= self.timers, "a reservation nobody would time out"


TestQueueMachine = QueueMachine.TestCase
TestQueueMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)

