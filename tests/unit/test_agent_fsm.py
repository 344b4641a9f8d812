"""Table-driven tests of the agent machine."""

from __future__ import annotations

import pytest

from engine.fsm import agent as A
from engine.messages import (
    AgentCallEnded,
    AgentEndWrapUp,
    AgentLogin,
    AgentLogout,
    AgentNotReady,
    AgentReady,
    AgentStatus,
    OfferAnswered,
    OfferFailed,
    PublishCti,
    ReleaseReservation,
    ReservationAccepted,
    ReservationRejected,
    ReserveAgent,
    Send,
    StartTimer,
    TimerFired,
)
from tests.support.builders import agent_in, steps

S = A.AgentState


def drive(agent, *events):
    return steps(A.step, agent, *events)


def reserve(offer="q1-o1", at=1.0, timeout=30.0, wrap=10.0, call="c1"):
    return ReserveAgent(agent_id="a1", at=at, offer_id=offer, queue_id="q1", call_id=call, timeout_s=timeout,
                        wrap_up_s=wrap)


def failed(reason, offer="q1-o1", at=2.0):
    return OfferFailed(at=at, offer_id=offer, call_id="c1", agent_id="a1", queue_id="q1", reason=reason)


def statuses(effects):
    return [e.message for e in effects if isinstance(e, Send) and isinstance(e.message, AgentStatus)]


def test_login_not_ready_by_default_and_tells_every_queue():
    agent, effects = drive(A.new_agent("a1"), AgentLogin(agent_id="a1", at=0.0, extension="1001",
                                                         queues=("q1", "q2"), request_id="r"))
    assert agent.state is S.NOT_READY and agent.reason == "login"
    assert [(s.queue_id, s.logged_in, s.available) for s in statuses(effects)] == [
        ("q1", True, False), ("q2", True, False)]
    assert any(isinstance(e, PublishCti) and e.event.name == "AGENT_STATE_CHANGED" for e in effects)


def test_login_without_extension_is_invalid():
    agent, effects = drive(A.new_agent("a1"), AgentLogin(agent_id="a1", at=0.0, extension="", request_id="r"))
    assert agent.state is S.LOGGED_OUT and effects[0].code == "INVALID_ARGUMENT"


def test_reservation_accepted_only_when_available():
    agent, effects = drive(agent_in(S.AVAILABLE), reserve())
    assert agent.state is S.RESERVED and agent.offer_id == "q1-o1"
    accepted = [e.message for e in effects if isinstance(e, Send) and isinstance(e.message, ReservationAccepted)]
    assert accepted and accepted[0].extension == "1001"
    assert [e for e in effects if isinstance(e, StartTimer)][0].deadline == 31.0
    for state in (S.LOGGED_OUT, S.RESERVED, S.ON_CALL, S.WRAP_UP, S.NOT_READY):
        before = agent_in(state)
        after, effects = A.step(before, reserve(offer="q1-o9"))
        assert after.state is state and after.offer_id == before.offer_id
        [rej] = [e.message for e in effects if isinstance(e, Send)]
        assert isinstance(rej, ReservationRejected) and rej.offer_id == "q1-o9"


def test_answered_call_then_wrap_up_timer_then_available():
    agent, _ = drive(agent_in(S.RESERVED), OfferAnswered(at=5.0, offer_id="q1-o1", call_id="c1", agent_id="a1",
                                                         queue_id="q1"))
    assert agent.state is S.ON_CALL and agent.call_id == "c1"
    agent, effects = drive(agent, AgentCallEnded(agent_id="a1", at=65.0, call_id="c1", queue_id="q1"))
    assert agent.state is S.WRAP_UP and agent.talk_time == 60.0 and agent.calls_handled == 1
    assert [e for e in effects if isinstance(e, StartTimer)][0].deadline == 75.0
    agent, _ = drive(agent, TimerFired(key="wrap", at=75.0))
    assert agent.state is S.AVAILABLE and agent.idle_since == 75.0 and agent.timers == frozenset()


@pytest.mark.parametrize("reason, missed", [("no_answer", 1), ("busy", 1), ("caller_gone", 0),
                                            ("answered_elsewhere", 0), ("failed", 0)])
def test_failed_offer_returns_to_available_and_counts_misses(reason, missed):
    agent, _ = drive(agent_in(S.RESERVED), failed(reason))
    assert agent.state is S.AVAILABLE and agent.missed_offers == missed and agent.timers == frozenset()


def test_three_missed_offers_make_the_agent_not_ready():
    agent = agent_in(S.AVAILABLE)
    for i in range(3):
        agent, _ = drive(agent, reserve(offer=f"o{i}", at=10.0 * i), failed("no_answer", offer=f"o{i}", at=10.0 * i + 5))
    assert agent.state is S.NOT_READY and agent.reason == "missed_offers"


def test_offer_timer_is_a_safety_net_that_frees_the_agent():
    agent, effects = drive(agent_in(S.RESERVED), TimerFired(key="offer", at=31.0))
    assert agent.state is S.AVAILABLE and agent.missed_offers == 1
    rejected = [e.message for e in effects if isinstance(e, Send) and isinstance(e.message, ReservationRejected)]
    assert rejected and rejected[0].reason == "expired"


def test_release_of_another_offer_is_ignored():
    agent = agent_in(S.RESERVED)
    assert A.step(agent, ReleaseReservation(agent_id="a1", at=2.0, offer_id="other")) == (agent, [])
    released, _ = A.step(agent, ReleaseReservation(agent_id="a1", at=2.0, offer_id="q1-o1"))
    assert released.state is S.AVAILABLE and released.missed_offers == 0


def test_logout_during_call_takes_effect_when_call_ends():
    agent, effects = drive(agent_in(S.ON_CALL), AgentLogout(agent_id="a1", at=5.0, request_id="r"))
    assert agent.state is S.ON_CALL and agent.pending_logout and effects[0].ok
    agent, effects = drive(agent, AgentCallEnded(agent_id="a1", at=9.0, call_id="c1"))
    assert agent.state is S.LOGGED_OUT and agent.timers == frozenset()
    assert statuses(effects)[-1].logged_in is False


def test_not_ready_during_call_applies_after_the_call():
    agent, _ = drive(agent_in(S.ON_CALL), AgentNotReady(agent_id="a1", at=5.0, reason="training"),
                     AgentCallEnded(agent_id="a1", at=9.0, call_id="c1"), TimerFired(key="wrap", at=19.0))
    assert agent.state is S.NOT_READY and agent.reason == "training"


def test_end_wrap_up_early_and_ready_from_wrap_up():
    agent, effects = drive(agent_in(S.WRAP_UP), AgentEndWrapUp(agent_id="a1", at=4.0))
    assert agent.state is S.AVAILABLE and agent.timers == frozenset()
    agent, _ = drive(agent_in(S.WRAP_UP), AgentReady(agent_id="a1", at=4.0))
    assert agent.state is S.AVAILABLE


@pytest.mark.parametrize("state", [S.AVAILABLE, S.RESERVED, S.ON_CALL, S.NOT_READY])
def test_end_wrap_up_outside_wrap_up_is_refused(state):
    before = agent_in(state)
    after, effects = A.step(before, AgentEndWrapUp(agent_id="a1", at=9.0, request_id="r"))
    assert after == before and effects[0].code == "FAILED_PRECONDITION"


def test_late_protocol_messages_are_no_ops():
    for state in (S.AVAILABLE, S.WRAP_UP, S.NOT_READY, S.LOGGED_OUT):
        agent = agent_in(state)
        for msg in (failed("no_answer"), OfferAnswered(at=2.0, offer_id="x", call_id="c1", agent_id="a1",
                                                       queue_id="q1"),
                    ReleaseReservation(agent_id="a1", at=2.0, offer_id="x"), TimerFired(key="offer", at=99.0)):
            assert A.step(agent, msg) == (agent, []), (state, msg)


def test_idle_since_survives_a_voided_reservation():
    agent = agent_in(S.AVAILABLE)
    idle = agent.idle_since
    agent, _ = drive(agent, reserve(at=50.0), failed("caller_gone", at=51.0))
    assert agent.idle_since == idle


def test_unregistered_phone_is_never_offered_and_queues_are_told():
    from engine.messages import DeviceState

    agent, effects = drive(agent_in(S.AVAILABLE), DeviceState(agent_id="a1", at=2.0, registered=False))
    assert agent.state is S.AVAILABLE and not agent.offerable
    assert statuses(effects)[-1].available is False
    agent, effects = drive(agent, reserve(at=3.0))
    assert agent.state is S.AVAILABLE
    [rej] = [e.message for e in effects if isinstance(e, Send)]
    assert isinstance(rej, ReservationRejected) and rej.reason == "phone_unregistered"
    agent, effects = drive(agent, DeviceState(agent_id="a1", at=4.0, registered=True))
    assert agent.offerable and statuses(effects)[-1].available is True
    assert A.step(agent, DeviceState(agent_id="a1", at=5.0, registered=True)) == (agent, [])


def test_an_answer_arriving_after_the_safety_timer_still_puts_the_agent_on_the_call():
    expired, _ = drive(agent_in(S.RESERVED), TimerFired(key="offer", at=31.0))
    assert expired.state is S.AVAILABLE and expired.expired_offer == "q1-o1"
    late = OfferAnswered(at=31.5, offer_id="q1-o1", call_id="c1", agent_id="a1", queue_id="q1")
    agent, effects = drive(expired, late)
    assert agent.state is S.ON_CALL and agent.call_id == "c1" and agent.missed_offers == 0
    assert statuses(effects)[-1].available is False
    # once another offer was taken, the old answer is no longer this agent's truth
    reserved, _ = drive(expired, reserve(offer="q1-o2", at=32.0, call="c2"))
    assert A.step(reserved, late) == (reserved, [])
    # and an unrelated answer is ignored
    assert A.step(expired, OfferAnswered(at=31.5, offer_id="x", call_id="c9", agent_id="a1", queue_id="q1")) == (
        expired, [])


def test_join_and_leave_queues_at_run_time():
    from engine.messages import AgentJoinQueue, AgentLeaveQueue

    agent, effects = drive(agent_in(S.AVAILABLE), AgentJoinQueue(agent_id="a1", at=5.0, queue_id="q9", request_id="r"))
    assert agent.queues == ("q1", "q9")
    [st] = statuses(effects)
    assert (st.queue_id, st.logged_in, st.available) == ("q9", True, True)
    again, effects = drive(agent, AgentJoinQueue(agent_id="a1", at=6.0, queue_id="q9", request_id="r"))
    assert again == agent and effects[0].ok
    agent, effects = drive(agent, AgentLeaveQueue(agent_id="a1", at=7.0, queue_id="q1", request_id="r"))
    assert agent.queues == ("q9",)
    [st] = statuses(effects)
    assert (st.queue_id, st.logged_in) == ("q1", False)
    _, effects = drive(agent, AgentLeaveQueue(agent_id="a1", at=8.0, queue_id="q1", request_id="r"))
    assert effects[0].code == "NOT_FOUND"


def test_memberships_set_while_logged_out_survive_a_login_without_queues():
    from engine.messages import AgentJoinQueue

    agent, effects = drive(A.new_agent("a1"), AgentJoinQueue(agent_id="a1", at=0.0, queue_id="sales"))
    assert statuses(effects) == []
    agent, effects = drive(agent, AgentLogin(agent_id="a1", at=1.0, extension="1001", ready=True))
    assert agent.queues == ("sales",) and statuses(effects)[0].queue_id == "sales"


def test_probe_keeps_a_live_call_and_ends_a_lost_one():
    from engine.messages import ProbeCall, ProbeReply

    agent = agent_in(S.ON_CALL)
    assert "probe" in agent.timers
    probing, effects = drive(agent, TimerFired(key="probe", at=302.0))
    [probe] = [e.message for e in effects if isinstance(e, Send)]
    assert isinstance(probe, ProbeCall) and probe.call_id == "c1"
    assert probing.timers == {"probe_timeout"}
    alive, _ = drive(probing, ProbeReply(agent_id="a1", at=302.5, call_id="c1", connected=True))
    assert alive.state is S.ON_CALL and alive.timers == {"probe"}
    gone, effects = drive(probing, ProbeReply(agent_id="a1", at=302.5, call_id="c1", connected=False))
    assert gone.state is S.WRAP_UP and gone.calls_handled == 1 and "probe" not in gone.timers
    assert any(isinstance(e, PublishCti) and e.event.name == "AGENT_CALL_LOST" for e in effects)
    silent, _ = drive(probing, TimerFired(key="probe_timeout", at=332.0))
    assert silent.state is S.WRAP_UP
    # a reply nobody asked for changes nothing
    assert A.step(agent, ProbeReply(agent_id="a1", at=5.0, call_id="c1", connected=False)) == (agent, [])


def test_call_answers_probes_truthfully():
    from engine.fsm import call as C
    from engine.messages import ProbeCall, ProbeReply
    from tests.support.builders import call_in

    for state, agent_id, expected in ((C.CallState.ACTIVE, "a1", True), (C.CallState.ACTIVE, "a2", False),
                                      (C.CallState.HELD, "a1", True), (C.CallState.ENDED, "a1", False)):
        call = call_in(state)
        same, effects = C.step(call, ProbeCall(call_id="c1", at=9.0, agent_id=agent_id))
        [reply] = [e.message for e in effects]
        assert same == call and isinstance(reply, ProbeReply) and reply.connected is expected, (state, agent_id)
