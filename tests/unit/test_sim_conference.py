"""Conferences in the simulator (#10 parts 3 and 8): scripted callers join a room over the real
call and room machines, stay, one is kicked; the report's conference section measures rooms, peak
members and time in conference."""

from __future__ import annotations

import pytest

from engine.conference import ConferenceError
from sim.report import build_report
from sim.script import World
from tests.unit.test_sim import small


def world():
    sc = small(traffic=[], warmup_s=0, duration_s=600, interval_s=600,
               agents=[{"id": f"a{i}", "queues": ["q"], "answer_delay_s": 1} for i in range(3)],
               queues=[{"queue_id": "q", "ring_timeout_s": 20, "wrap_up_s": 0}])
    w = World(sc, start_at=1)
    w.conference_room("3000", moderator_pin="4321", member_pin="1111")
    return w


def test_three_callers_join_stay_one_is_kicked_and_the_report_measures_it():
    w = world()
    callers = [w.call("100", f"+1555000000{i}", talk_s=60) for i in range(3)]
    for c in callers:
        c.expect_answered(within=5)
    with pytest.raises(ConferenceError) as e:
        callers[0].join_conference("3000", "9999")
    assert e.value.code == "PERMISSION_DENIED"
    assert callers[0].join_conference("3000", "4321").moderator
    for c in callers[1:]:
        assert not c.join_conference("3000", "1111").moderator
    for c in callers:
        c.expect_conference()
    members = w.conference_members("3000")
    assert len(members) == 6  # each caller and the agent it talked to
    moderators = [m for m in members if m.moderator]
    assert len(moderators) == 1 and moderators[0].call_id == callers[0].call_id
    victim = next(m for m in members if m.call_id == callers[2].call_id and not m.moderator)
    plain = next(m for m in members if m.call_id == callers[1].call_id)
    assert w.conference_control("3000", "kick", victim.member_id, by_member=plain.member_id).code == "PERMISSION_DENIED"
    assert w.conference_control("3000", "mute", victim.member_id).ok
    w.advance(10)
    assert w.conference_control("3000", "kick", victim.member_id, by_member=moderators[0].member_id).ok
    callers[2].expect_kicked()
    assert victim.member_id not in [m.member_id for m in w.conference_members("3000")]
    callers[2].expect_ended(within=5)  # its call leg hung up: the call ends (its partner is hung up too)
    for c in callers[:2]:
        c.expect_ended(within=70)  # they hang up after 60 s of talk
    w.sim.run()
    assert not w.sim.violations
    assert not w.conference_members("3000") and not w.sim.conferences.rooms
    r = build_report(w.sim.stats, 3)["conferences"]
    assert r["rooms"] == 1 and r["joined"] == 6 and r["kicked"] == 1 and r["peak_members"] == 6
    assert 0 < r["mean_s_in_conference"] < r["max_s_in_conference"] <= 60
    assert {c.call_id for c in callers} <= w.sim._cdrs  # one CDR per call (the simulator checks "exactly")


def test_runs_without_conferences_keep_their_report_unchanged():
    w = world()
    c = w.call("100", talk_s=5)
    c.expect_answered(within=5)
    c.expect_ended(within=10)
    w.sim.run()
    assert "conferences" not in build_report(w.sim.stats, 3)


def test_flow_conference_node_callers_dial_in_with_pins_one_is_kicked():
    from engine.conference import hash_pin

    salt = b"0123456789abcdef"
    conf = {"id": "conf", "start": "room", "nodes": {"room": {
        "type": "conference", "room": "3000", "prompt": "pin.wav", "invalid_prompt": "bad.wav", "retries": 1,
        "moderator_pin_hash": hash_pin("4321", salt, 1000), "member_pin_hash": hash_pin("1111", salt, 1000)}}}
    sc = small(traffic=[], warmup_s=0, duration_s=600, interval_s=600, agents=[{"id": "a", "queues": ["q"]}],
               dids={"100": {"queue": "q"}, "3000": {"flow": "conf"}}, flows=[conf])
    w = World(sc, start_at=1)
    w.conference_room("3000")  # the live room's machine (PINs of the flow node above)
    moderator, member, wrong = (w.call("3000", f"+1555000010{i}", talk_s=30) for i in range(3))
    for c, pin in ((moderator, "4321#"), (member, "1111#"), (wrong, "9999#")):
        c.expect_prompt("pin.wav")
        c.press(pin)
    moderator.expect_conference()
    member.expect_conference()
    wrong.expect_prompt("bad.wav")
    wrong.expect_prompt("pin.wav")
    wrong.press("0000#")
    wrong.expect_ended(within=10)  # a wrong PIN twice: hung up, never in the room
    members = w.conference_members("3000")
    assert [m.moderator for m in members] == [True, False]
    member.conference_key("*1")  # a member's key: nothing
    moderator.conference_key("*1")  # the moderator mutes the others
    assert member._expect("to be muted", 1, lambda o: o.kind == "muted")
    assert [m.muted for m in w.conference_members("3000")] == [False, True]
    assert w.conference_control("3000", "kick", members[1].member_id, by_member=members[0].member_id).ok
    member.expect_kicked()
    member.expect_ended(within=5)
    moderator.expect_ended(within=40)  # hangs up after its 30 s
    w.sim.run()
    assert not w.sim.violations and not w.sim.conferences.rooms
    r = build_report(w.sim.stats, 3)["conferences"]
    assert (r["rooms"], r["joined"], r["kicked"], r["peak_members"]) == (1, 2, 1, 2)
    assert {moderator.call_id, member.call_id, wrong.call_id} <= w.sim._cdrs


def test_a_full_room_kicks_the_dial_in_that_takes_it_over_its_capacity():
    """``max_members`` holds for a flow's dial-ins (the flow cannot see the live room): the room
    machine kicks the member whose join took the room over it, and the simulator's switch does."""
    conf = {"id": "conf", "start": "room", "nodes": {"room": {"type": "conference", "room": "3000"}}}
    sc = small(traffic=[], warmup_s=0, duration_s=600, interval_s=600, agents=[{"id": "a", "queues": ["q"]}],
               dids={"100": {"queue": "q"}, "3000": {"flow": "conf"}}, flows=[conf])
    w = World(sc, start_at=1)
    w.conference_room("3000", max_members=2)
    first, second, third = (w.call("3000", f"+1555000020{i}", talk_s=30) for i in range(3))
    for c in (first, second):
        c.expect_conference()
    third.expect_kicked()
    third.expect_ended(within=5)
    assert [m.call_id for m in w.conference_members("3000")] == [first.call_id, second.call_id]
    full = [e for e in w.sim.conferences.cti if e.name == "CONFERENCE_FULL"]
    assert [(e.call_id, e.data["members"], e.data["max_members"]) for e in full] == [(third.call_id, 3, 2)]
    for c in (first, second):
        c.expect_ended(within=40)
    w.sim.run()
    assert not w.sim.violations and not w.sim.conferences.rooms
    r = build_report(w.sim.stats, 3)["conferences"]
    assert (r["joined"], r["kicked"], r["peak_members"]) == (3, 1, 3)
    assert {first.call_id, second.call_id, third.call_id} <= w.sim._cdrs
