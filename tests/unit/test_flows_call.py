"""Flows inside the call machine: EnterFlow with a graph runs the pure interpreter as part of
``engine.fsm.call.step``, and the flow's outcome becomes the call's ordinary routing."""

from __future__ import annotations

from engine.flows.loader import decode_document, parse_flows
from engine.fsm import call as C
from engine.fsm.call import CallState as S
from engine.messages import (
    CancelTimer,
    ChannelCreated,
    ChannelHangup,
    DtmfReceived,
    EnterFlow,
    MediaAnswer,
    MediaHangup,
    MediaOriginate,
    MediaPlay,
    MediaRecordStart,
    PlaybackFinished,
    QueueCall,
    Send,
    SendMedia,
    StartTimer,
    TimerFired,
    WriteCdr,
)

FLOW = parse_flows(decode_document(b"""
id: ivr
start: menu
nodes:
  menu:
    type: menu
    prompt: menu.wav
    options: {"1": sales, "2": operator, "3": vm}
    retries: 0
    timeout_s: 4
  sales: {type: queue, queue: sales, priority: 2, skills: {sales: 10}}
  operator: {type: transfer, target: "1000", timeout_s: 12}
  vm: {type: voicemail, box: b, max_length_s: 30}
""", "f.yaml"), "f.yaml")[0]


def created(at=0.0):
    call, _ = C.new_call(ChannelCreated(call_id="c1", at=at, caller_id="+4411", destination="+4420"))
    return call


def medias(effects):
    return [e.command for e in effects if isinstance(e, SendMedia)]


def enter(at=1.0):
    call, effects = C.step(created(), EnterFlow(call_id="c1", at=at, flow_id="ivr", flow=FLOW))
    return call, effects


def test_enter_flow_answers_and_plays_the_menu():
    call, effects = enter()
    assert call.state is S.IN_FLOW and call.flow is not None and call.a_answered
    assert medias(effects) == [MediaAnswer(call_id="c1"), MediaPlay(call_id="c1", file="menu.wav")]


def test_menu_choice_becomes_route_to_queue():
    call, _ = enter()
    call, effects = C.step(call, PlaybackFinished(call_id="c1", at=5.0, file="menu.wav"))
    assert StartTimer(key="flow", deadline=9.0) in effects and "flow" in call.timers
    call, effects = C.step(call, DtmfReceived(call_id="c1", at=6.0, digit="1"))
    assert call.state is S.QUEUED and call.flow is None and "flow" not in call.timers
    assert CancelTimer(key="flow") in effects
    sends = [e for e in effects if isinstance(e, Send)]
    assert sends == [Send(to="queue", to_id="sales", message=QueueCall(
        queue_id="sales", call_id="c1", at=6.0, priority=2, skills={"sales": 10}, caller_id="+4411"))]
    assert not [m for m in medias(effects) if isinstance(m, MediaAnswer)]  # already answered


def test_menu_choice_becomes_route_to_extension():
    call, _ = enter()
    call, _ = C.step(call, PlaybackFinished(call_id="c1", at=5.0, file="menu.wav"))
    call, effects = C.step(call, DtmfReceived(call_id="c1", at=6.0, digit="2"))
    assert call.state is S.RINGING
    assert MediaOriginate(call_id="c1", leg="c1-1", destination="1000", timeout_s=12.0, caller_id="+4411",
                          variables={"callengine_role": "extension"}) in medias(effects)


def test_menu_timeout_without_fallback_hangs_up_answered():
    call, _ = enter()
    call, _ = C.step(call, PlaybackFinished(call_id="c1", at=5.0, file="menu.wav"))
    call, effects = C.step(call, TimerFired(key="flow", at=9.0))
    assert call.state is S.ENDED
    cdr = [e.cdr for e in effects if isinstance(e, WriteCdr)][0]
    assert (cdr.disposition, cdr.answered_at) == ("answered", 1.0)
    assert MediaHangup(call_id="c1") in medias(effects)


def test_voicemail_records_until_max_length():
    call, _ = enter()
    call, _ = C.step(call, DtmfReceived(call_id="c1", at=2.0, digit="3"))  # barge-in
    call, _ = C.step(call, PlaybackFinished(call_id="c1", at=2.5, file="tone_stream://%(250,0,1000)"))  # beep
    assert MediaRecordStart(call_id="c1", path="voicemail/b/c1.wav", limit_s=30, silence_threshold=200,
                            silence_hits=3) in medias(_)
    call, effects = C.step(call, TimerFired(key="flow", at=37.5))
    assert call.state is S.ENDED


def test_caller_hanging_up_in_the_flow_cancels_the_flow_timer_and_abandons():
    call, _ = enter()
    call, _ = C.step(call, PlaybackFinished(call_id="c1", at=5.0, file="menu.wav"))
    call, effects = C.step(call, ChannelHangup(call_id="c1", at=6.0))
    assert call.state is S.ENDED and not call.timers
    assert CancelTimer(key="flow") in effects
    assert [e.cdr.disposition for e in effects if isinstance(e, WriteCdr)] == ["abandoned"]
    # late flow events after the end are no-ops
    for ev in (TimerFired(key="flow", at=9.0), PlaybackFinished(call_id="c1", at=7.0, file="menu.wav")):
        assert C.step(call, ev) == (call, [])


def test_stale_flow_timer_and_foreign_legs_are_ignored():
    call, _ = enter()
    assert C.step(call, TimerFired(key="flow", at=3.0)) == (call, [])  # not running
    same, effects = C.step(call, PlaybackFinished(call_id="c1", at=5.0, leg="c1-9", file="menu.wav"))
    assert effects == [] and same.flow == call.flow


def test_enter_flow_without_a_graph_keeps_the_external_driver_behaviour():
    call, effects = C.step(created(), EnterFlow(call_id="c1", at=1.0, flow_id="ivr"))
    assert call.state is S.IN_FLOW and call.flow is None and not medias(effects)
    call, effects = C.step(call, DtmfReceived(call_id="c1", at=2.0, digit="4"))
    assert call.digits == "4" and effects == []
    call, effects = C.step(call, PlaybackFinished(call_id="c1", at=3.0))
    assert effects == []


def test_business_hours_use_the_clock_offset_from_enter_flow():
    flow = parse_flows(decode_document(b"""
id: h
start: tc
nodes:
  tc: {type: time_condition, timezone: UTC, rules: [{days: [mon], start: "09:00", end: "10:00"}], open: o, closed: c}
  o: {type: queue, queue: open}
  c: {type: queue, queue: closed}
""", "h.yaml"), "h.yaml")[0]
    monday_0930 = 1767605400.0  # 2026-01-05T09:30:00Z
    for offset, queue in ((monday_0930 - 1.0, "open"), (monday_0930 + 3600 - 1.0, "closed")):
        call, _ = C.step(created(), EnterFlow(call_id="c1", at=1.0, flow_id="h", flow=flow, clock_offset=offset))
        assert call.state is S.QUEUED and call.queue_id == queue
