"""Table-driven tests of the call machine: each row is a script of events and what must follow."""

from __future__ import annotations

import pytest

from engine.fsm import IllegalTransition
from engine.fsm import call as C
from engine.messages import (
    AgentCallEnded,
    Answer,
    AttendedTransferCancel,
    AttendedTransferComplete,
    AttendedTransferStart,
    BlindTransfer,
    CallerLeft,
    CancelTimer,
    ChannelAnswered,
    ChannelCreated,
    ChannelDestroyed,
    ChannelHangup,
    ChannelHangupComplete,
    ChannelHeld,
    ConnectAgent,
    DtmfReceived,
    EnterFlow,
    Hangup,
    Hold,
    MediaBridge,
    MediaHangup,
    MediaHold,
    MediaOriginate,
    MediaPark,
    MediaUnhold,
    OfferAnswered,
    OfferFailed,
    Originate,
    Park,
    Pickup,
    PublishCti,
    QueueCall,
    QueueOverflow,
    ReserveAgent,
    Retrieve,
    RouteToExtension,
    RouteToQueue,
    Send,
    SendDtmf,
    SendMedia,
    StartRecording,
    StartTimer,
    Stop,
    StopRecording,
    TimerFired,
    WriteCdr,
)
from tests.support.builders import call_in, steps

S = C.CallState


def drive(call, *events):
    return steps(C.step, call, *events)


def of(effects, kind):
    return [e for e in effects if isinstance(e, kind)]


def media(effects, kind=None):
    cmds = [e.command for e in effects if isinstance(e, SendMedia)]
    return [c for c in cmds if kind is None or isinstance(c, kind)]


def sends(effects, to=None, kind=None):
    return [e for e in effects if isinstance(e, Send) and (to is None or e.to == to)
            and (kind is None or isinstance(e.message, kind))]


def cdrs(effects):
    return [e.cdr for e in effects if isinstance(e, WriteCdr)]


def test_new_call_starts_routing_and_announces_itself():
    call, effects = C.new_call(ChannelCreated(call_id="c9", at=5.0, caller_id="+1", destination="200"))
    assert call.state is S.ROUTING and call.created_at == 5.0
    [cti] = of(effects, PublishCti)
    assert cti.event.name == "CALL_CREATED" and cti.event.call_id == "c9"


def test_queued_call_is_answered_and_told_to_the_queue():
    call, effects = drive(call_in(S.ROUTING), RouteToQueue(call_id="c1", at=1.0, queue_id="q1", priority=3,
                                                           skills={"de": 40}))
    assert call.state is S.QUEUED and call.in_queue
    [send] = sends(effects, "queue", QueueCall)
    assert send.to_id == "q1" and send.message.priority == 3 and send.message.skills == {"de": 40}
    assert media(effects)[0].__class__.__name__ == "MediaAnswer"


def test_connect_agent_rings_with_a_timer_and_deterministic_leg_id():
    call, effects = drive(call_in(S.QUEUED), ConnectAgent(call_id="c1", at=2.0, queue_id="q1", offer_id="o1",
                                                          agent_id="a1", extension="1001", ring_timeout_s=15))
    assert call.state is S.RINGING
    [orig] = media(effects, MediaOriginate)
    assert orig.leg == "c1-1" and orig.destination == "1001"
    [timer] = of(effects, StartTimer)
    assert timer.key == "ring:c1-1" and timer.deadline == 17.0
    assert call.timers == {"ring:c1-1"}


def test_agent_answer_bridges_and_reports_to_queue_and_agent():
    call, effects = drive(call_in(S.RINGING), ChannelAnswered(call_id="c1", at=3.0, leg="c1-1"))
    assert call.state is S.ACTIVE and call.answered_at == 3.0 and call.agent_id == "a1"
    assert media(effects, MediaBridge)[0].other_leg == "c1-1"
    assert {s.to for s in sends(effects, kind=OfferAnswered)} == {"queue", "agent"}
    assert of(effects, CancelTimer)[0].key == "ring:c1-1"
    assert call.timers == frozenset()


def test_ring_timeout_returns_caller_to_the_queue_and_frees_the_agent():
    call, effects = drive(call_in(S.RINGING), TimerFired(key="ring:c1-1", at=22.0))
    assert call.state is S.QUEUED and call.legs == ()
    assert media(effects, MediaHangup)[0].leg == "c1-1"
    failed = sends(effects, kind=OfferFailed)
    assert {s.to for s in failed} == {"queue", "agent"} and failed[0].message.reason == "no_answer"


def test_agent_busy_is_reported_as_busy():
    call, effects = drive(call_in(S.RINGING), ChannelHangup(call_id="c1", at=4.0, leg="c1-1", cause="USER_BUSY"))
    assert call.state is S.QUEUED
    assert sends(effects, kind=OfferFailed)[0].message.reason == "busy"
    assert media(effects, MediaHangup) == []  # the leg is already gone


@pytest.mark.parametrize("state", [S.QUEUED, S.RINGING])
def test_caller_abandons_while_waiting(state):
    call, effects = drive(call_in(state), ChannelHangup(call_id="c1", at=9.0, leg="a", cause="ORIGINATOR_CANCEL"))
    assert call.state is S.ENDED
    [cdr] = cdrs(effects)
    assert cdr.disposition == "abandoned" and cdr.answered_at is None and cdr.queue_id == "q1"
    assert sends(effects, "queue", CallerLeft)
    if state is S.RINGING:
        # no ghost: the agent's ringing leg is cancelled and both sides are told the caller is gone
        assert media(effects, MediaHangup)[0].leg == "c1-1"
        assert {s.message.reason for s in sends(effects, kind=OfferFailed)} == {"caller_gone"}
    assert of(effects, Stop)


def test_hold_and_retrieve_account_time():
    call, effects = drive(call_in(S.ACTIVE), Hold(call_id="c1", at=10.0, request_id="r1"),
                          Retrieve(call_id="c1", at=25.0, request_id="r2"),
                          ChannelHangup(call_id="c1", at=40.0, leg="a"))
    assert media(effects, MediaHold) and media(effects, MediaUnhold)
    [cdr] = cdrs(effects)
    assert cdr.disposition == "answered"
    assert (cdr.wait_s, cdr.talk_s, cdr.hold_s) == (2.0, 22.0, 15.0)
    assert [r.code for r in effects if type(r).__name__ == "Reply"] == ["OK", "OK"]


@pytest.mark.parametrize("state, command", [
    (S.QUEUED, Hold(call_id="c1", at=5.0, request_id="r")),
    (S.ACTIVE, Retrieve(call_id="c1", at=5.0, request_id="r")),
    (S.RINGING, Park(call_id="c1", at=5.0, request_id="r")),
    (S.ACTIVE, AttendedTransferComplete(call_id="c1", at=5.0, request_id="r")),
    (S.ACTIVE, Pickup(call_id="c1", at=5.0, request_id="r", extension="1")),
    (S.ENDED, Hangup(call_id="c1", at=5.0, request_id="r")),
    (S.QUEUED, StartRecording(call_id="c1", at=5.0, request_id="r")),
    (S.ACTIVE, Originate(call_id="c1", at=5.0, request_id="r", from_extension="1", to="2")),
])
def test_commands_in_the_wrong_state_are_refused_not_crashed(state, command):
    before = call_in(state)
    after, effects = C.step(before, command)
    assert after == before
    [reply] = effects
    assert reply.code == "FAILED_PRECONDITION" and not reply.ok
    assert state.name in reply.message and type(command).__name__ in reply.message


def test_duplicate_and_late_media_are_no_ops():
    call = call_in(S.ACTIVE)
    for ev in (ChannelAnswered(call_id="c1", at=5.0, leg="c1-1"), ChannelAnswered(call_id="c1", at=5.0, leg="a"),
               ChannelCreated(call_id="c1", at=5.0), ChannelHangup(call_id="c1", at=5.0, leg="c1-99")):
        assert C.step(call, ev) == (call, [])
    ended, first = drive(call, ChannelHangup(call_id="c1", at=9.0, leg="a"))
    assert len(cdrs(first)) == 1
    for late in (ChannelHangup(call_id="c1", at=10.0, leg="a"), ChannelHangupComplete(call_id="c1", at=10.0),
                 ChannelDestroyed(call_id="c1", at=11.0), ChannelAnswered(call_id="c1", at=12.0, leg="c1-1"),
                 TimerFired(key="ring:c1-1", at=13.0)):
        assert C.step(ended, late) == (ended, [])


def test_answer_of_a_cancelled_leg_is_hung_up_not_connected():
    call, _ = drive(call_in(S.RINGING), TimerFired(key="ring:c1-1", at=22.0))  # back in queue
    call, effects = drive(call, ChannelAnswered(call_id="c1", at=22.5, leg="c1-1"))
    assert call.state is S.QUEUED
    assert media(effects, MediaHangup)[0].leg == "c1-1"


def test_connect_agent_after_the_caller_left_releases_the_agent():
    ended = call_in(S.ENDED)
    same, effects = C.step(ended, ConnectAgent(call_id="c1", at=9.0, queue_id="q1", offer_id="o7", agent_id="a2",
                                               extension="1002"))
    assert same == ended and media(effects) == []
    assert {(s.to, s.message.reason) for s in sends(effects, kind=OfferFailed)} == {
        ("queue", "caller_gone"), ("agent", "caller_gone")}


def test_ring_all_first_answer_wins_and_others_are_cancelled():
    call = call_in(S.RINGING)
    call, _ = drive(call, ConnectAgent(call_id="c1", at=2.0, queue_id="q1", offer_id="q1-o2", agent_id="a2",
                                       extension="1002"))
    assert len(call.ringing) == 2
    call, effects = drive(call, ChannelAnswered(call_id="c1", at=3.0, leg="c1-2"))
    assert call.state is S.ACTIVE and call.agent_id == "a2"
    assert [c.leg for c in media(effects, MediaHangup)] == ["c1-1"]
    lost = sends(effects, kind=OfferFailed)
    assert {(s.to_id, s.message.reason) for s in lost} == {("q1", "answered_elsewhere"), ("a1", "answered_elsewhere")}
    assert call.timers == frozenset()


def test_blind_transfer_releases_agent_and_rings_target():
    call, effects = drive(call_in(S.ACTIVE), BlindTransfer(call_id="c1", at=10.0, target="2000", request_id="r"))
    assert call.state is S.RINGING and call.transfers == 1
    assert sends(effects, "agent", AgentCallEnded)
    assert media(effects, MediaOriginate)[0].destination == "2000"
    call, effects = drive(call, TimerFired(key="ring:c1-2", at=40.0))
    [cdr] = cdrs(effects)
    assert cdr.disposition == "answered" and cdr.transfers == 1  # the caller did talk to the agent


def test_attended_transfer_complete():
    call, effects = drive(call_in(S.ACTIVE), AttendedTransferStart(call_id="c1", at=10.0, target="2000"))
    assert call.state is S.TRANSFERRING and media(effects, MediaHold)
    consult = call.consult
    refused, eff = C.step(call, AttendedTransferComplete(call_id="c1", at=11.0, request_id="r"))
    assert refused == call and eff[0].code == "FAILED_PRECONDITION"
    call, _ = drive(call, ChannelAnswered(call_id="c1", at=12.0, leg=consult))
    call, effects = drive(call, AttendedTransferComplete(call_id="c1", at=20.0))
    assert call.state is S.ACTIVE and call.connected == consult and call.transfers == 1
    assert media(effects, MediaBridge)[0].other_leg == consult
    assert sends(effects, "agent", AgentCallEnded)
    _, effects = drive(call, ChannelHangup(call_id="c1", at=30.0, leg=consult))
    [cdr] = cdrs(effects)
    assert cdr.hold_s == 10.0 and cdr.talk_s == 7.0 + 10.0


def test_attended_transfer_cancel_and_consult_no_answer_return_to_the_caller():
    call, _ = drive(call_in(S.ACTIVE), AttendedTransferStart(call_id="c1", at=10.0, target="2000", timeout_s=5))
    cancelled, effects = drive(call, AttendedTransferCancel(call_id="c1", at=12.0))
    assert cancelled.state is S.ACTIVE and cancelled.consult == "" and media(effects, MediaUnhold)
    timed_out, effects = drive(call, TimerFired(key=f"ring:{call.consult}", at=15.0))
    assert timed_out.state is S.ACTIVE and media(effects, MediaHangup)[0].leg == call.consult


def test_agent_hanging_up_during_consult_completes_the_transfer():
    call, _ = drive(call_in(S.ACTIVE), AttendedTransferStart(call_id="c1", at=10.0, target="2000"))
    consult = call.consult
    call, _ = drive(call, ChannelAnswered(call_id="c1", at=11.0, leg=consult))
    call, effects = drive(call, ChannelHangup(call_id="c1", at=12.0, leg="c1-1"))
    assert call.state is S.ACTIVE and call.connected == consult
    assert sends(effects, "agent", AgentCallEnded) and not cdrs(effects)


def test_park_and_pickup():
    call, effects = drive(call_in(S.ACTIVE), Park(call_id="c1", at=10.0, slot="701"))
    assert call.state is S.PARKED and media(effects, MediaPark)[0].slot == "701"
    assert sends(effects, "agent", AgentCallEnded) and call.agent_id == ""
    call, effects = drive(call, Pickup(call_id="c1", at=30.0, extension="1005"))
    assert call.state is S.RINGING and media(effects, MediaOriginate)[0].destination == "1005"
    call, _ = drive(call, ChannelAnswered(call_id="c1", at=31.0, leg=call.legs[0].id))
    assert call.state is S.ACTIVE


def test_extension_no_answer_ends_call():
    call, _ = drive(call_in(S.ROUTING), RouteToExtension(call_id="c1", at=1.0, target="1001", timeout_s=10))
    call, effects = drive(call, TimerFired(key="ring:c1-1", at=11.0))
    [cdr] = cdrs(effects)
    assert call.state is S.ENDED and cdr.disposition == "no_answer"
    assert {c.leg for c in media(effects, MediaHangup)} == {"c1-1", "a"}


def test_queue_overflow_targets():
    hung, effects = drive(call_in(S.QUEUED), QueueOverflow(call_id="c1", at=60.0, queue_id="q1"))
    assert hung.state is S.ENDED and cdrs(effects)[0].disposition == "overflowed"
    moved, effects = drive(call_in(S.QUEUED), QueueOverflow(call_id="c1", at=60.0, queue_id="q1", target="queue:q2"))
    assert moved.state is S.QUEUED and moved.queue_id == "q2" and sends(effects, "queue", QueueCall)[0].to_id == "q2"
    rung, effects = drive(call_in(S.QUEUED), QueueOverflow(call_id="c1", at=60.0, queue_id="q1", target="9000"))
    assert rung.state is S.RINGING and not rung.in_queue
    # a caller moved elsewhere is not reported as having left the first queue twice
    _, effects = drive(rung, ChannelHangup(call_id="c1", at=70.0, leg="a"))
    assert not sends(effects, "queue", CallerLeft)


def test_click_to_call():
    call, effects = C.originate_call(Originate(call_id="k1", at=0.0, from_extension="1001", to="+4930", request_id="r"))
    assert call.state is S.RINGING and media(effects, MediaOriginate)[0].leg == "a"
    call, effects = drive(call, ChannelAnswered(call_id="k1", at=3.0, leg="a"))
    assert media(effects, MediaOriginate)[0].destination == "+4930"
    call, _ = drive(call, ChannelAnswered(call_id="k1", at=8.0, leg="k1-1"))
    call, effects = drive(call, ChannelHangup(call_id="k1", at=20.0, leg="k1-1"))
    [cdr] = cdrs(effects)
    assert cdr.direction == "outbound" and cdr.talk_s == 12.0 and cdr.disposition == "answered"


def test_click_to_call_own_phone_no_answer():
    call, _ = C.originate_call(Originate(call_id="k1", at=0.0, from_extension="1001", to="+4930", timeout_s=5))
    call, effects = drive(call, TimerFired(key="ring:a", at=5.0))
    assert cdrs(effects)[0].disposition == "no_answer" and media(effects, MediaHangup)[0].leg == "a"


def test_dtmf_and_recording_commands():
    call, _ = drive(call_in(S.ROUTING), EnterFlow(call_id="c1", at=1.0, flow_id="ivr"),
                    DtmfReceived(call_id="c1", at=2.0, digit="4"))
    assert call.state is S.IN_FLOW and call.digits == "4"
    active = call_in(S.ACTIVE)
    _, effects = C.step(active, SendDtmf(call_id="c1", at=5.0, digits="1x", request_id="r"))
    assert effects[0].code == "INVALID_ARGUMENT"
    rec, effects = C.step(active, StartRecording(call_id="c1", at=5.0, request_id="r"))
    assert rec.recording == "c1.wav"
    again, effects = C.step(rec, StartRecording(call_id="c1", at=6.0, request_id="r"))
    assert effects[0].code == "FAILED_PRECONDITION"
    stopped, effects = C.step(rec, StopRecording(call_id="c1", at=7.0, request_id="r"))
    assert stopped.recording == ""


def test_phone_hold_follows_the_phone():
    call, _ = drive(call_in(S.ACTIVE), ChannelHeld(call_id="c1", at=5.0, leg="c1-1"))
    assert call.state is S.HELD


def test_unknown_message_raises_typed_error_naming_state_and_event():
    with pytest.raises(IllegalTransition) as info:
        C.step(call_in(S.ACTIVE), ReserveAgent(agent_id="a", at=1.0, offer_id="o", queue_id="q", call_id="c1"))
    assert info.value.state is S.ACTIVE
    assert "ACTIVE" in str(info.value) and "ReserveAgent" in str(info.value)


def test_time_never_runs_backwards_in_accounting():
    call, effects = drive(call_in(S.ACTIVE), Hold(call_id="c1", at=1.0), ChannelHangup(call_id="c1", at=0.5, leg="a"))
    [cdr] = cdrs(effects)
    assert cdr.wait_s >= 0 and cdr.talk_s >= 0 and cdr.hold_s >= 0
    assert cdr.wait_s + cdr.talk_s + cdr.hold_s <= cdr.ended_at - cdr.created_at + 1e-9


def test_answer_command():
    call, effects = C.step(call_in(S.ROUTING), Answer(call_id="c1", at=1.0, request_id="r"))
    assert call.a_answered and effects[-1].ok


@pytest.mark.parametrize("state", [S.ACTIVE, S.HELD, S.TRANSFERRING, S.PARKED, S.ROUTING])
def test_connect_agent_outside_waiting_never_rings(state):
    before = call_in(state)
    after, effects = C.step(before, ConnectAgent(call_id="c1", at=9.0, queue_id="q1", offer_id="o8", agent_id="a3",
                                                 extension="1003"))
    assert after == before and media(effects) == []
    reasons = {s.message.reason for s in sends(effects, kind=OfferFailed)}
    assert reasons == ({"answered_elsewhere"} if state in (S.ACTIVE, S.HELD, S.TRANSFERRING) else {"caller_gone"})


def test_agent_legs_carry_who_and_why_as_channel_variables():
    _, effects = C.step(call_in(S.QUEUED), ConnectAgent(call_id="c1", at=2.0, queue_id="q1", offer_id="q1-o4",
                                                        agent_id="a7", extension="1007"))
    [orig] = media(effects, MediaOriginate)
    assert orig.variables == {"callengine_role": "agent", "callengine_agent_id": "a7", "callengine_queue_id": "q1",
                              "callengine_offer_id": "q1-o4"}
