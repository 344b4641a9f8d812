"""Machine states reached through the real machines (never constructed by hand)."""

from __future__ import annotations

from engine.fsm import agent as A
from engine.fsm import call as C
from engine.fsm import queue as Q
from engine.messages import (
    AgentCallEnded,
    AgentLogin,
    AgentNotReady,
    AgentStatus,
    AttendedTransferStart,
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    ConnectAgent,
    EnterFlow,
    Hold,
    OfferAnswered,
    Park,
    QueueCall,
    ReserveAgent,
    RouteToQueue,
)


def run(step, state, *events):
    return steps(step, state, *events)[0]


def steps(step, state, *events):
    """Apply ``events`` in turn with the machine's ``step``: (the last state, every effect)."""
    effects = []
    for ev in events:
        state, out = step(state, ev)
        effects.extend(out)
    return state, effects


def call_in(state: C.CallState, call_id: str = "c1") -> C.Call:
    S = C.CallState
    call, _ = C.new_call(ChannelCreated(call_id=call_id, at=0.0, caller_id="+100", destination="5000"))
    if state is S.ROUTING:
        return call
    if state is S.IN_FLOW:
        return run(C.step, call, EnterFlow(call_id=call_id, at=1.0, flow_id="main"))
    call = run(C.step, call, RouteToQueue(call_id=call_id, at=1.0, queue_id="q1"))
    if state is S.QUEUED:
        return call
    call = run(C.step, call, ConnectAgent(call_id=call_id, at=2.0, queue_id="q1", offer_id="q1-o1",
                                          agent_id="a1", extension="1001"))
    if state is S.RINGING:
        return call
    call = run(C.step, call, ChannelAnswered(call_id=call_id, at=3.0, leg=f"{call_id}-1"))
    if state is S.ACTIVE:
        return call
    if state is S.HELD:
        return run(C.step, call, Hold(call_id=call_id, at=4.0))
    if state is S.TRANSFERRING:
        return run(C.step, call, AttendedTransferStart(call_id=call_id, at=4.0, target="2000"))
    if state is S.PARKED:
        return run(C.step, call, Park(call_id=call_id, at=4.0))
    if state is S.ENDED:
        return run(C.step, call, ChannelHangup(call_id=call_id, at=5.0, leg="a"))
    raise AssertionError(state)


def agent_in(state: A.AgentState, agent_id: str = "a1") -> A.Agent:
    S = A.AgentState
    agent = A.new_agent(agent_id)
    if state is S.LOGGED_OUT:
        return agent
    agent = run(A.step, agent, AgentLogin(agent_id=agent_id, at=0.0, extension="1001", queues=("q1",),
                                          ready=True, skills={"en": 50}))
    if state is S.AVAILABLE:
        return agent
    if state is S.NOT_READY:
        return run(A.step, agent, AgentNotReady(agent_id=agent_id, at=1.0, reason="lunch"))
    agent = run(A.step, agent, ReserveAgent(agent_id=agent_id, at=1.0, offer_id="q1-o1", queue_id="q1",
                                            call_id="c1", wrap_up_s=10.0))
    if state is S.RESERVED:
        return agent
    agent = run(A.step, agent, OfferAnswered(at=2.0, offer_id="q1-o1", call_id="c1", agent_id=agent_id,
                                             queue_id="q1"))
    if state is S.ON_CALL:
        return agent
    agent = run(A.step, agent, AgentCallEnded(agent_id=agent_id, at=3.0, call_id="c1", queue_id="q1"))
    assert state is S.WRAP_UP
    return agent


def queue_in(state: Q.QueueState, **config) -> Q.Queue:
    queue = Q.new_queue(Q.QueueConfig(queue_id="q1", **config))
    queue = run(Q.step, queue, AgentStatus(queue_id="q1", agent_id="a1", at=0.0, logged_in=True, available=True,
                                           extension="1001", skills={"en": 50}))
    if state is Q.QueueState.IDLE:
        return queue
    return run(Q.step, queue, QueueCall(queue_id="q1", call_id="c1", at=1.0))
