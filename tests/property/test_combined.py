"""Calls, agents and a queue interacting through their effects (sim.walkthrough.World).

Messages wait in per-actor mailboxes and hypothesis chooses which actor runs next, so every
interleaving the actor runtime could produce (FIFO per recipient) is fair game: a caller hanging
up while the queue is reserving an agent, an acceptance arriving after the caller left, ...

The headline invariant: no agent is ever rung for a caller who already hung up, and when a call
ends none of its legs is left ringing. Also: no agent on two calls; no agent reserved twice; every
ended call wrote exactly one CDR; and once every caller is gone and the mail is delivered, nobody
is stuck -- released by the protocol itself, before any safety timer runs out.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine.fsm import agent as A
from engine.fsm import call as C
from engine.fsm import queue as Q
from engine.messages import (
    AgentLogout,
    AgentNotReady,
    AgentReady,
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    Hold,
    MediaHangup,
    MediaOriginate,
    Retrieve,
    RouteToQueue,
    SendMedia,
)
from sim.walkthrough import Transition, World

AGENTS = ["a1", "a2", "a3"]


class Combined(RuleBasedStateMachine):
    @initialize(strategy=st.sampled_from(Q.STRATEGIES), wrap=st.sampled_from([0.0, 10.0]),
                max_wait=st.sampled_from([0.0, 90.0]))
    def setup(self, strategy, wrap, max_wait):
        self.world = World(keep_transitions=False, auto_drain=False)
        self.world.add_queue(Q.QueueConfig(queue_id="q1", strategy=strategy, wrap_up_s=wrap, max_wait_s=max_wait,
                                           ring_timeout_s=15.0))
        for i, agent in enumerate(AGENTS):
            self.world.add_agent(agent, max_missed_offers=2)
            self.world.login(agent, extension=f"10{i}", queues=("q1",), ready=True)
        self.world.drain_all()
        self.n = 0
        self.hung_up: set[str] = set()
        #: calls that have processed their end (the caller's hangup reached them)
        self.processed_hangup: set[str] = set()
        #: legs the engine originated and media has not ended yet: leg -> call
        self.ringing: dict[str, str] = {}
        self.connected: dict[str, str] = {}
        self.world.observers.append(self.check_transition)

    def check_transition(self, world: World, tr: Transition) -> None:
        for effect in tr.effects:
            if isinstance(effect, SendMedia) and isinstance(effect.command, MediaOriginate):
                cmd = effect.command
                assert tr.before != "ENDED", f"a leg was originated for ended call {cmd.call_id}"
                assert tr.before in ("QUEUED", "RINGING"), f"agent leg rung for a call in {tr.before}"
                assert cmd.call_id not in self.processed_hangup, f"agent rung for {cmd.call_id} after the caller hung up"
                self.ringing[cmd.leg] = cmd.call_id
            elif isinstance(effect, SendMedia) and isinstance(effect.command, MediaHangup):
                self.ringing.pop(effect.command.leg, None)
                self.connected.pop(effect.command.leg, None)
        if tr.kind == "call" and tr.after == "ENDED" and tr.before != "ENDED":
            self.processed_hangup.add(tr.id)
            left = [leg for leg, cid in {**self.ringing, **self.connected}.items() if cid == tr.id]
            assert left == [], f"call {tr.id} ended leaving legs up: {left}"

    def now(self, dt: float) -> float:
        # Mail in flight is delivered (in any order the test chose so far) before the clock moves:
        # the model assumes message latency below the machines' grace periods (seconds); within
        # one instant every interleaving is still explored.
        if dt > 0:
            self.world.drain_all()
        self.world.advance(self.world.now + dt)
        return self.world.now

    dt = st.floats(min_value=0.0, max_value=12.0, allow_nan=False)

    @rule(dt=dt)
    def caller_arrives(self, dt):
        self.n += 1
        cid = f"c{self.n}"
        t = self.now(dt)
        self.world.new_call(ChannelCreated(call_id=cid, at=t, caller_id=f"+{self.n}"))
        self.world.deliver("call", cid, RouteToQueue(call_id=cid, at=t, queue_id="q1"))

    def live_calls(self):
        return sorted(cid for cid, c in self.world.calls.items() if c.state is not C.CallState.ENDED)

    @precondition(lambda self: self.live_calls())
    @rule(dt=dt, data=st.data())
    def caller_hangs_up(self, dt, data):
        cid = data.draw(st.sampled_from(self.live_calls()))
        t = self.now(dt)
        if self.world.calls[cid].state is C.CallState.ENDED:
            return  # a timer ended it while time advanced
        self.hung_up.add(cid)
        self.world.deliver("call", cid, ChannelHangup(call_id=cid, at=t, leg="a", cause="ORIGINATOR_CANCEL"))

    @precondition(lambda self: self.ringing)
    @rule(dt=dt, data=st.data(), answer=st.booleans(), cause=st.sampled_from(["USER_BUSY", "NO_ANSWER"]))
    def phone_reacts(self, dt, data, answer, cause):
        leg = data.draw(st.sampled_from(sorted(self.ringing)))
        t = self.now(dt)
        cid = self.ringing.pop(leg, None)
        if cid is None:
            return
        if answer:
            self.connected[leg] = cid
            self.world.deliver("call", cid, ChannelAnswered(call_id=cid, at=t, leg=leg))
        else:
            self.world.deliver("call", cid, ChannelHangup(call_id=cid, at=t, leg=leg, cause=cause))

    @precondition(lambda self: self.connected)
    @rule(dt=dt, data=st.data())
    def agent_hangs_up(self, dt, data):
        leg = data.draw(st.sampled_from(sorted(self.connected)))
        t = self.now(dt)
        cid = self.connected.pop(leg, None)
        if cid is not None:
            self.world.deliver("call", cid, ChannelHangup(call_id=cid, at=t, leg=leg))

    @precondition(lambda self: self.live_calls())
    @rule(dt=dt, data=st.data(), hold=st.booleans())
    def hold_or_retrieve(self, dt, data, hold):
        cid = data.draw(st.sampled_from(self.live_calls()))
        t = self.now(dt)
        if self.world.calls[cid].state is not C.CallState.ENDED:
            self.world.deliver("call", cid, (Hold if hold else Retrieve)(call_id=cid, at=t, request_id="r"))

    @rule(dt=dt, agent=st.sampled_from(AGENTS), which=st.integers(0, 2))
    def agent_command(self, dt, agent, which):
        t = self.now(dt)
        if which == 2 and self.world.agents[agent].state is A.AgentState.LOGGED_OUT:
            self.world.login(agent, extension=f"1{agent}", queues=("q1",), ready=True)
            return
        cmd = [AgentReady(agent_id=agent, at=t), AgentNotReady(agent_id=agent, at=t, reason="break"),
               AgentLogout(agent_id=agent, at=t)][which]
        self.world.deliver("agent", agent, cmd)

    @rule(dt=st.floats(min_value=0.0, max_value=60.0, allow_nan=False))
    def time_passes(self, dt):
        self.now(dt)

    @precondition(lambda self: self.world.pending())
    @rule(data=st.data(), count=st.integers(1, 6))
    def actors_run(self, data, count):
        for _ in range(count):
            pending = self.world.pending()
            if not pending:
                return
            kind, actor_id = data.draw(st.sampled_from(pending))
            self.world.deliver_next(kind, actor_id)

    @invariant()
    def agents_are_exclusive(self):
        on_calls = [a.call_id for a in self.world.agents.values() if a.state is A.AgentState.ON_CALL]
        assert len(on_calls) == len(set(on_calls)), "two agents on one call"
        reserved = [a.offer_id for a in self.world.agents.values() if a.state is A.AgentState.RESERVED]
        assert len(reserved) == len(set(reserved))
        offers = [o.agent_id for q in self.world.queues.values() for o in q.offers.values()]
        assert len(offers) == len(set(offers)), "an agent reserved twice"
        for a in self.world.agents.values():
            if a.state is A.AgentState.ON_CALL and not self.world.mailboxes.get(("agent", a.agent_id)):
                # with its mail delivered, an agent is never left on a call that has ended
                call = self.world.calls[a.call_id]
                assert call.state is not C.CallState.ENDED, f"{a.agent_id} on ended call {a.call_id}"

    @invariant()
    def talking_callers_have_their_agent(self):
        for cid, call in self.world.calls.items():
            if call.state in (C.CallState.ACTIVE, C.CallState.HELD) and call.agent_id:
                agent = self.world.agents[call.agent_id]
                if not self.world.mailboxes.get(("agent", agent.agent_id)):
                    assert agent.state is A.AgentState.ON_CALL and agent.call_id == cid, (
                        f"{cid} talks to {agent.agent_id}, who is {agent.state.name} for {agent.call_id!r}")

    @invariant()
    def one_cdr_per_ended_call(self):
        ended = sorted(cid for cid, c in self.world.calls.items() if c.state is C.CallState.ENDED)
        assert sorted(cdr.call_id for cdr in self.world.cdrs) == ended

    @rule()
    def everyone_leaves_and_nobody_is_stuck(self):
        w = self.world
        w.drain_all()
        for cid in self.live_calls():
            self.hung_up.add(cid)
            w.deliver("call", cid, ChannelHangup(call_id=cid, at=w.now, leg="a"))
        w.drain_all()
        assert self.live_calls() == []
        assert self.ringing == {} and self.connected == {}, "legs left up after every caller hung up"
        # released by the protocol itself, not by the agents' safety timers
        for a in w.agents.values():
            assert a.state not in (A.AgentState.RESERVED, A.AgentState.ON_CALL), (a.agent_id, a.state)
        w.advance(w.now + 3600.0)
        w.drain_all()
        for a in w.agents.values():
            assert a.state in (A.AgentState.AVAILABLE, A.AgentState.NOT_READY, A.AgentState.LOGGED_OUT), (
                a.agent_id, a.state)
        q = w.queues["q1"]
        assert q.waiting == () and q.offers == {}
        assert w.next_timer() is None


TestCombined = Combined.TestCase
TestCombined.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
