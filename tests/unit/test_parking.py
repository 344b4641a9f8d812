"""Parking and pickup (#10 part 4): the call machine's park timeout, return and fallback, pickup by
slot, directed and group pickup; the pure ParkingLot and RingingView (engine.parking)."""

from __future__ import annotations

import pytest

from engine.fsm import call as C
from engine.messages import (
    CallerLeft,
    ChannelAnswered,
    ChannelHangup,
    ConnectAgent,
    HangupCause,
    MediaHangup,
    MediaOriginate,
    MediaPark,
    OfferFailed,
    Park,
    Pickup,
    PublishCti,
    Reply,
    RouteToExtension,
    TimerFired,
    WriteCdr,
)
from engine.parking import BadSlot, NoFreeSlot, ParkingLot, RingingView, SlotTaken
from tests.support.builders import call_in
from tests.unit.test_call_fsm import drive, media, sends

S = C.CallState


def cti(effects, name):
    return [e.event for e in effects if isinstance(e, PublishCti) and e.event.name == name]


def replies(effects):
    return [e for e in effects if isinstance(e, Reply)]


def parked(slot="701", **kw):
    """An agent call (agent a1 on 1001) parked at 10 s."""
    return drive(call_in(S.ACTIVE), Park(call_id="c1", at=10.0, slot=slot, request_id="r1", **kw))


def test_park_starts_the_timeout_and_names_the_slot():
    call, effects = parked(timeout_s=45)
    assert call.state is S.PARKED and media(effects, MediaPark)[0].slot == "701"
    assert "park" in call.timers and call.park_return_to == "1001"
    assert cti(effects, "CALL_PARKED")[0].data["slot"] == "701"
    assert replies(effects)[0].data == {"slot": "701"}


def test_park_timeout_rings_the_parker_once_and_answer_reconnects():
    call, _ = parked(timeout_s=45)
    call, effects = drive(call, TimerFired(key="park", at=55.0))
    assert call.state is S.RINGING
    assert [m.destination for m in media(effects, MediaOriginate)] == ["1001"]
    assert cti(effects, "CALL_PARK_TIMEOUT")[0].data == {"slot": "701", "target": "1001"}
    # a duplicate (stale) park timer rings nobody again
    call, again = drive(call, TimerFired(key="park", at=56.0))
    assert not media(again, MediaOriginate)
    call, _ = drive(call, ChannelAnswered(call_id="c1", at=57.0, leg=call.legs[0].id))
    assert call.state is S.ACTIVE and call.park_stage == ""


def test_unanswered_return_rings_the_fallback_then_hangs_up_with_one_cdr():
    call, _ = parked(timeout_s=45, fallback="2000")
    call, _ = drive(call, TimerFired(key="park", at=55.0))
    call, effects = drive(call, TimerFired(key=f"ring:{call.legs[0].id}", at=85.0))
    assert [m.destination for m in media(effects, MediaOriginate)] == ["2000"]
    assert cti(effects, "CALL_PARK_TIMEOUT")[0].data["target"] == "2000"
    call, effects = drive(call, TimerFired(key=f"ring:{call.legs[0].id}", at=115.0))
    assert call.state is S.ENDED
    assert len([e for e in effects if isinstance(e, WriteCdr)]) == 1
    assert any(m.leg == "a" for m in media(effects, MediaHangup))


def test_unanswered_return_without_fallback_hangs_up():
    call, _ = parked(timeout_s=45)
    call, _ = drive(call, TimerFired(key="park", at=55.0))
    call, effects = drive(call, ChannelHangup(call_id="c1", at=60.0, leg=call.legs[0].id,
                                              cause=HangupCause.USER_BUSY))
    assert call.state is S.ENDED and not media(effects, MediaOriginate)
    (cdr,) = [e.cdr for e in effects if isinstance(e, WriteCdr)]
    assert cdr.disposition == "answered" and cdr.hangup_cause == HangupCause.USER_BUSY


def test_park_with_explicit_return_to_and_bad_timeout():
    call, _ = parked(timeout_s=5, return_to="3000")
    call, effects = drive(call, TimerFired(key="park", at=15.0))
    assert media(effects, MediaOriginate)[0].destination == "3000"
    call, effects = drive(call_in(S.ACTIVE), Park(call_id="c1", at=10.0, timeout_s=0, request_id="r"))
    assert call.state is S.ACTIVE and replies(effects)[0].code == "INVALID_ARGUMENT"


def test_pickup_by_slot_cancels_the_timer_and_happens_once():
    call, _ = parked()
    call, effects = drive(call, Pickup(call_id="c1", at=20.0, extension="1005", request_id="p1"))
    assert call.state is S.RINGING and "park" not in call.timers
    ev = cti(effects, "CALL_PICKED_UP")[0]
    assert ev.data["slot"] == "701" and ev.data["kind"] == "slot" and ev.data["extension"] == "1005"
    # a second slot pickup is refused: the call is no longer parked
    call, effects = drive(call, Pickup(call_id="c1", at=21.0, extension="1006", request_id="p2"))
    assert replies(effects)[0].code == "FAILED_PRECONDITION" and not media(effects, MediaOriginate)
    # the park timer, had it fired late, rings nobody
    call, effects = drive(call, TimerFired(key="park", at=70.0))
    assert not media(effects, MediaOriginate)


def test_directed_pickup_takes_the_ringing_extension_call():
    call, _ = drive(call_in(S.ROUTING), RouteToExtension(call_id="c1", at=1.0, target="1001", timeout_s=20))
    call, effects = drive(call, Pickup(call_id="c1", at=3.0, extension="1002", kind="directed", target="1001",
                                       request_id="d"))
    hung = media(effects, MediaHangup)
    assert [(h.leg, h.cause) for h in hung] == [("c1-1", "PICKED_OFF")]
    assert [m.destination for m in media(effects, MediaOriginate)] == ["1002"]
    ev = cti(effects, "CALL_PICKED_UP")[0]
    assert ev.data["kind"] == "directed" and ev.data["picked_from"] == "1001"
    call, _ = drive(call, ChannelAnswered(call_id="c1", at=4.0, leg="c1-2"))
    assert call.state is S.ACTIVE


def test_directed_pickup_of_an_extension_the_call_does_not_ring_is_refused():
    call, _ = drive(call_in(S.ROUTING), RouteToExtension(call_id="c1", at=1.0, target="1001", timeout_s=20))
    call2, effects = drive(call, Pickup(call_id="c1", at=3.0, extension="1002", kind="directed", target="1009",
                                        request_id="d"))
    assert call2 == call and replies(effects)[0].code == "FAILED_PRECONDITION"
    _, effects = drive(call, Pickup(call_id="c1", at=3.0, extension="1002", kind="slot", request_id="d"))
    assert replies(effects)[0].code == "FAILED_PRECONDITION"


def test_group_pickup_of_a_queued_agent_call_releases_agent_and_queue():
    call = call_in(S.RINGING)  # agent a1 ringing at 1001, queue q1
    call, effects = drive(call, Pickup(call_id="c1", at=5.0, extension="1007", kind="group", request_id="g"))
    assert sends(effects, "queue", CallerLeft) and sends(effects, "agent", OfferFailed)
    assert sends(effects, "agent", OfferFailed)[0].message.reason == "answered_elsewhere"
    assert not call.in_queue and [leg.destination for leg in call.legs] == ["1007"]
    # a late ConnectAgent from the queue never rings the agent again
    _, effects = drive(call, ConnectAgent(call_id="c1", at=6.0, queue_id="q1", offer_id="q1-o2",
                                          agent_id="a2", extension="1003"))
    assert not media(effects, MediaOriginate)


def test_parking_lot_claims_free_and_requested_slots_per_tenant():
    lot = ParkingLot(701, 703)
    assert lot.claim("t1", "c1") == "701" and lot.claim("t1", "c2") == "702"
    assert lot.claim("t2", "c9") == "701"  # tenants do not share slots
    assert lot.claim("t1", "c1") == "701"  # a retry gets the same slot
    with pytest.raises(SlotTaken) as err:
        lot.claim("t1", "c3", "702")
    assert err.value.code == "ALREADY_EXISTS" and err.value.call_id == "c2"
    with pytest.raises(BadSlot):
        lot.claim("t1", "c3", "800")
    assert lot.claim("t1", "c3") == "703"
    with pytest.raises(NoFreeSlot):
        lot.claim("t1", "c4")
    lot.observe({"type": "CALL_PICKED_UP", "tenant": "t1", "call_id": "c2"})
    assert lot.call_in("t1", "702") == "" and lot.claim("t1", "c4") == "702"


def test_parking_lot_follows_the_machines_events():
    lot = ParkingLot()
    slot = lot.claim("default", "c1")
    call, effects = drive(call_in(S.ACTIVE), Park(call_id="c1", at=10.0, slot=slot))
    for e in effects:
        if isinstance(e, PublishCti):
            lot.observe(e.event)
    assert lot.call_in("default", slot) == "c1"
    _, effects = drive(call, TimerFired(key="park", at=70.0))
    for e in effects:
        if isinstance(e, PublishCti):
            lot.observe(e.event)
    assert lot.slots("default") == {}


def test_ringing_view_directed_and_group():
    view = RingingView({"t1": {"sales": ["1001", "1002", "1003"], "ops": ["2001"]}})
    view.observe({"type": "CALL_RINGING", "tenant": "t1", "call_id": "cB", "target": "1002", "at": 5.0})
    view.observe({"type": "CALL_RINGING", "tenant": "t1", "call_id": "cA", "target": "1001", "at": 3.0})
    view.observe({"type": "CALL_RINGING", "tenant": "t2", "call_id": "cZ", "target": "1001", "at": 1.0})
    view.observe({"type": "CALL_RINGING", "tenant": "t1", "call_id": "cC", "target": "2001", "at": 1.0})
    assert view.directed("t1", "1001") == "cA" and view.directed("t1", "1009") == ""
    assert view.group("t1", "1003") == ("cA", "1001")  # oldest call at another member
    assert view.group("t1", "1001") == ("cB", "1002")  # never the picker's own ring
    assert view.group("t1", "9999") == ("", "")  # in no group
    view.observe({"type": "CALL_ANSWERED", "tenant": "t1", "call_id": "cA"})
    assert view.group("t1", "1003") == ("cB", "1002")
