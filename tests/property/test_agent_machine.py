"""Stateful property test of the agent machine.

Invariants: an agent is on at most one call and reserved by at most one offer; a reservation is
accepted only in AVAILABLE; WRAP_UP always has its timer running (wrap-up always ends); RESERVED
always has its safety timer (an agent is never stuck reserved); LOGGED_OUT holds no timers; the
machine's timers are exactly those its effects started and did not cancel.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.fsm import agent as A
from engine.messages import (
    AgentCallEnded,
    AgentEndWrapUp,
    AgentLogin,
    AgentLogout,
    AgentNotReady,
    AgentReady,
    CancelTimer,
    OfferAnswered,
    OfferFailed,
    ReleaseReservation,
    ReservationAccepted,
    ReserveAgent,
    Send,
    StartTimer,
    TimerFired,
)

S = A.AgentState
REASONS = st.sampled_from(["no_answer", "busy", "failed", "caller_gone", "answered_elsewhere"])


class AgentMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.agent = A.new_agent("a1", max_missed_offers=2)
        self.t = 0.0
        self.timers: set[str] = set()
        self.offers = 0
        self.accepted: list[str] = []

    def apply(self, event) -> None:
        before = self.agent
        self.agent, effects = A.step(self.agent, event)
        if isinstance(event, TimerFired):
            self.timers.discard(event.key)
        for e in effects:
            if isinstance(e, StartTimer):
                self.timers.add(e.key)
            elif isinstance(e, CancelTimer):
                assert e.key in self.timers
                self.timers.discard(e.key)
            elif isinstance(e, Send) and isinstance(e.message, ReservationAccepted):
                assert before.state is S.AVAILABLE, f"accepted an offer in {before.state.name}"
                self.accepted.append(e.message.offer_id)

    def tick(self, dt: float) -> float:
        self.t += dt
        return self.t

    dt = st.floats(min_value=0.0, max_value=20.0, allow_nan=False)

    @rule(dt=dt, ready=st.booleans())
    def login(self, dt, ready):
        self.apply(AgentLogin(agent_id="a1", at=self.tick(dt), extension="1001", queues=("q1", "q2"), ready=ready))

    @rule(dt=dt, which=st.integers(0, 3), reason=st.sampled_from(["lunch", "break"]))
    def command(self, dt, which, reason):
        t = self.tick(dt)
        self.apply([AgentLogout(agent_id="a1", at=t), AgentReady(agent_id="a1", at=t),
                    AgentNotReady(agent_id="a1", at=t, reason=reason), AgentEndWrapUp(agent_id="a1", at=t)][which])

    @rule(dt=dt, wrap=st.sampled_from([0.0, 5.0, 30.0]), queue=st.sampled_from(["q1", "q2"]))
    def reserve(self, dt, wrap, queue):
        self.offers += 1
        self.apply(ReserveAgent(agent_id="a1", at=self.tick(dt), offer_id=f"o{self.offers}", queue_id=queue,
                                call_id=f"c{self.offers}", timeout_s=30.0, wrap_up_s=wrap))

    def _offer(self, current: bool) -> tuple[str, str]:
        if current and self.agent.offer_id:
            return self.agent.offer_id, self.agent.call_id
        return f"o{self.offers}", f"c{self.offers}"

    @rule(dt=dt, current=st.booleans())
    def answered(self, dt, current):
        offer, call = self._offer(current)
        self.apply(OfferAnswered(at=self.tick(dt), offer_id=offer, call_id=call, agent_id="a1", queue_id="q1"))

    @rule(dt=dt, current=st.booleans(), reason=REASONS)
    def failed(self, dt, current, reason):
        offer, call = self._offer(current)
        self.apply(OfferFailed(at=self.tick(dt), offer_id=offer, call_id=call, agent_id="a1", queue_id="q1",
                               reason=reason))

    @rule(dt=dt, current=st.booleans())
    def released(self, dt, current):
        offer, _ = self._offer(current)
        self.apply(ReleaseReservation(agent_id="a1", at=self.tick(dt), offer_id=offer))

    @rule(dt=dt, current=st.booleans())
    def call_ended(self, dt, current):
        call = self.agent.call_id if current and self.agent.call_id else "c-other"
        self.apply(AgentCallEnded(agent_id="a1", at=self.tick(dt), call_id=call))

    @precondition(lambda self: self.timers)
    @rule(data=st.data())
    def timer_fires(self, data):
        key = data.draw(st.sampled_from(sorted(self.timers)))
        self.apply(TimerFired(key=key, at=self.tick(data.draw(self.dt))))

    @invariant()
    def one_call_one_offer(self):
        a = self.agent
        if a.state is S.RESERVED:
            assert a.offer_id and a.call_id
        elif a.state is S.ON_CALL:
            assert a.call_id and not a.offer_id
        else:
            assert not a.offer_id and not a.call_id

    @invariant()
    def nobody_is_stuck(self):
        a = self.agent
        assert set(a.timers) == self.timers
        if a.state is S.WRAP_UP:
            assert "wrap" in a.timers, "wrap-up without its timer never ends"
        if a.state is S.RESERVED:
            assert "offer" in a.timers, "reserved without a safety timer"
        if a.state is S.LOGGED_OUT:
            assert a.timers == frozenset()
        assert a.talk_time >= 0 and a.missed_offers <= a.max_missed_offers

    @invariant()
    def accepted_offers_are_unique(self):
        assert len(self.accepted) == len(set(self.accepted))


TestAgentMachine = AgentMachine.TestCase
TestAgentMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
