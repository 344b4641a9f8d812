"""Voicemail in the simulator (#10 parts 1 and 8): a flow's voicemail node over the real call machine,
the simulated switch's ``record`` with silence detection, scripted callers leaving messages of N
seconds (or hanging up at the greeting), an owner retrieving them through the menu machine, and
the report's voicemail section."""

from __future__ import annotations

import pytest

from engine import voicemail as vm
from sim.core import Simulator
from sim.report import build_report
from sim.script import World
from sim.voicemail import record_end
from tests.unit.test_sim import small

VM_FLOW = {"id": "vm", "start": "vm", "nodes": {"vm": {
    "type": "voicemail", "box": "1001", "greeting": "greeting.wav", "max_length_s": 60, "silence_hits": 3,
    "min_length_s": 1}}}


def world(**over):
    sc = small(traffic=[], warmup_s=0, duration_s=600, interval_s=600, flows=[VM_FLOW],
               dids={"100": {"queue": "q"}, "200": {"flow": "vm"}}, prompts={"greeting.wav": 4.0}, **over)
    return World(sc, start_at=1)


def test_record_end_by_silence_or_limit():
    assert record_end(10.0, 60.0, 3) == (13.0, "success-silence")
    assert record_end(58.0, 60.0, 3) == (60.0, "success-maxtime")
    assert record_end(10.0, 60.0, 0) == (60.0, "success-maxtime")  # no silence detection


def test_leave_messages_abandon_one_retrieve_and_report():
    w = world()
    w.mailbox("1001", "4711")
    a = w.call("200", caller_id="+4930111")
    a.leave_message(12.0)
    a.expect_voicemail(within=10)  # greeting (4 s) and beep, then the record app
    left = a.expect_voicemail_left(within=30)
    # talk 12 s, then 3 s of silence end it: 15 s, ended by the switch's silence detection
    assert (left.detail["duration_s"], left.detail["ended"], left.detail["box"]) == (15.0, "success-silence", "1001")
    a.expect_ended(disposition="answered")

    b = w.call("200", caller_id="+4930222")  # talks past the limit: cut at 60 s
    b.leave_message(300.0)
    assert b.expect_voicemail_left(within=120).detail["ended"] == "success-maxtime"
    b.expect_ended()

    c = w.call("200", caller_id="+4930333")  # hangs up during the greeting
    w.advance(2)
    c.hangup()
    assert c.expect_voicemail_abandoned().detail["reason"] == "hangup_greeting"

    d = w.call("200", caller_id="+4930444")  # hangs up half a second into the recording
    d.expect_voicemail(within=10)
    w.advance(0.5)
    d.hangup()
    assert d.expect_voicemail_abandoned().detail["reason"] == "too_short"

    assert w.sim.stats.voicemail.counts("1001") == (2, 0)
    # the owner: wrong PIN once, then the right one; listens to both, saves the first, deletes the second
    actions = w.retrieve_voicemail("1001", "1234#4711#1917#")
    played = [x.id for x in actions if isinstance(x, vm.PlayMessage)]
    assert played == [a.call_id, b.call_id]
    assert vm.Mwi(0, 1) in actions and actions[-1] == vm.HangUp("exit")
    assert w.sim.stats.voicemail.counts("1001") == (0, 1)

    w.sim.run()
    assert not w.sim.violations
    r = build_report(w.sim.stats, 3)
    assert r["voicemail"] == {"left": 2, "abandoned": {"hangup_greeting": 1, "too_short": 1}, "retrieved": 2,
                              "saved": 1, "deleted": 1, "mean_length_s": 37.5, "max_length_s": 60.0}
    assert r["calls"]["cdrs"] == 4


def test_traffic_into_voicemail_is_measured_and_reports_without_it_stay_unchanged():
    sc = small(flows=[VM_FLOW], dids={"100": {"queue": "q"}, "200": {"flow": "vm"}},
               traffic=[{"did": "200", "rate_per_hour": 60, "handle": {"dist": "fixed", "mean_s": 20},
                         "patience": {"dist": "none"}}], duration_s=1800, warmup_s=0)
    sim = Simulator(sc, 5)
    r = build_report(sim.run(), sim.seed)
    v = r["voicemail"]
    # unscripted callers talk their handle time (20 s) then 3 s of silence
    assert v["left"] > 10 and v["mean_length_s"] == pytest.approx(23.0) and v["retrieved"] == 0
    assert "voicemail" not in build_report(Simulator(small(), 5).run(), 5)
