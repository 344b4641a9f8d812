"""Parking and pickup in the simulator (#10 part 4): scripted park and pickup actions over the real
machines, and the report's parking section."""

from __future__ import annotations

import pytest

from engine.parking import SlotTaken
from sim.report import build_report
from sim.script import World
from tests.unit.test_sim import small


def world():
    # one agent "solo" at extension 1000; external numbers answer after 5 s
    sc = small(traffic=[], warmup_s=0, duration_s=600, interval_s=600,
               agents=[{"id": "solo", "queues": ["q"], "answer_delay_s": 2}],
               queues=[{"queue_id": "q", "ring_timeout_s": 20, "wrap_up_s": 0}])
    return World(sc, start_at=1)


def test_park_pickup_timeout_and_directed_pickup_flow_measured_in_the_report():
    w = world()
    a = w.call("100")
    assert a.expect_answered(within=5) == "solo"
    slot = a.park(timeout_s=30)
    assert slot == "701"
    a.expect_parked()
    with pytest.raises(SlotTaken):
        w.sim.parking.claim("default", "someone-else", "701")
    w.advance(10)
    assert w.pick_up_slot("701", "3000") == a.call_id
    a.expect_picked_up("slot")
    assert a._expect("3000 to answer", 10, lambda o: o.kind == "answered" and o.detail["destination"] == "3000")
    assert w.sim.parking.slots("default") == {}  # the slot is free again

    # a second call parks and nobody picks it up: it rings the parker (solo) back, who answers
    b = w.call("100")
    assert b.expect_answered(within=5) == "solo"
    assert b.park(timeout_s=20) == "701"
    b.expect_park_timeout("1000", within=25)
    b.expect_answered(within=5, destination="1000")  # the parker's own extension answers the ring-back
    b.hangup()
    b.expect_ended()

    # a third call rings solo; extension 3001 takes it by directed pickup
    a.hangup()
    w.advance(1)
    c = w.call("100")
    c.expect_ringing("1000", within=5)
    assert w.pick_up_directed("1000", "3001") == c.call_id
    c.expect_picked_up("directed")
    c.expect_answered(within=10, destination="3001")
    c.hangup()
    c.expect_ended()

    w.sim.run()
    assert not w.sim.violations
    r = build_report(w.sim.stats, 3)
    p = r["parking"]
    assert (p["parked"], p["timed_out"], p["fallbacks"]) == (2, 1, 0)
    assert p["picked_up"] == {"directed": 1, "slot": 1}
    assert p["mean_parked_s"] == pytest.approx(15.0) and p["max_parked_s"] == pytest.approx(20.0)
    assert r["calls"]["cdrs"] == 3


def test_group_pickup_in_the_simulator():
    w = world()
    w.pickup_groups({"front": ["1000", "3005"]})
    a = w.call("100")
    a.expect_ringing("1000", within=5)
    with pytest.raises(AssertionError, match="nothing rings the pickup group of 3999"):
        w.pick_up_group("3999")  # in no group
    assert w.pick_up_group("3005") == a.call_id
    a.expect_picked_up("group")
    a.expect_answered(within=10, destination="3005")
    a.hangup()
    a.expect_ended()
    w.sim.run()
    assert not w.sim.violations
    r = build_report(w.sim.stats, 3)
    assert r["parking"]["picked_up"] == {"group": 1} and r["parking"]["parked"] == 0
    # the agent whose phone was picked off was released, not left reserved
    assert w.agent("solo").state.name == "AVAILABLE"


def test_a_run_without_parking_has_no_parking_section():
    w = world()
    a = w.call("100", talk_s=5)
    a.expect_answered(within=5)
    w.sim.run()
    assert "parking" not in build_report(w.sim.stats, 3)
