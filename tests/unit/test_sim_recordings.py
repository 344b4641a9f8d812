"""Recordings in the simulator (#10 part 2, docs/recordings.md): an always-on queue records each
answered call after its consent announcement, an on-demand recording is paused and stopped by
script, the report's recordings section counts them, and recording changes nobody's call."""

from __future__ import annotations

import pytest

from sim.core import InvariantViolation, Simulator
from sim.recordings import SimRecordings
from sim.report import build_report
from sim.script import World
from tests.unit.test_sim import small


def world(**queue):
    sc = small(traffic=[], warmup_s=0, duration_s=600, interval_s=600, prompts={"consent.wav": 4.0},
               agents=[{"id": "solo", "queues": ["q"], "answer_delay_s": 2}],
               queues=[{"queue_id": "q", "ring_timeout_s": 20, "wrap_up_s": 0, **queue}])
    return World(sc, start_at=1)


def test_an_always_on_queue_records_after_the_consent_announcement_until_the_call_ends():
    w = world(record=True, record_consent="consent.wav")
    a = w.call("100")
    answered = a.expect_answered(within=5)
    assert answered == "solo"
    consent = a.expect_recording("consent", within=1)
    started = a.expect_recording("started", within=10)
    assert started.at - consent.at == pytest.approx(4.0)  # the announcement's length, nothing before
    assert started.detail["by"] == "auto:queue:q" and started.detail["compliance"] is True
    a.stop_recording()  # refused: a compliance recording, no override
    w.advance(30)
    a.hangup()
    stopped = a.expect_recording("stopped", within=1)
    assert stopped.detail["reason"] == "call_ended" and stopped.detail["duration_s"] == pytest.approx(30.0)
    rec = w.sim.stats.recordings.report()
    assert rec["started"] == 1 and rec["always_on"] == 1 and rec["consents"] == 1
    assert rec["stopped"] == {"call_ended": 1} and rec["mean_consent_wait_s"] == 4.0


def test_on_demand_recording_paused_resumed_and_stopped_by_script():
    w = world()
    a = w.call("100")
    a.expect_answered(within=5)
    a.start_recording(by="agent:solo")
    a.expect_recording("started", within=1)
    w.advance(10)
    a.pause_recording()
    a.expect_recording("paused", within=1)
    w.advance(5)
    a.resume_recording()
    assert a.expect_recording("resumed", within=1).detail["paused_s"] == pytest.approx(5.0)
    w.advance(5)
    a.stop_recording()
    stopped = a.expect_recording("stopped", within=1)
    assert stopped.detail["reason"] == "stopped" and stopped.detail["paused_s"] == pytest.approx(5.0)
    assert stopped.detail["duration_s"] == pytest.approx(20.0)
    a.hangup()
    rec = w.sim.stats.recordings.report()
    assert (rec["on_demand"], rec["paused"], rec["paused_s"], rec["recorded_s"]) == (1, 1, 5.0, 20.0)


def test_recording_every_call_changes_no_call_and_the_report_counts_them():
    plain = small(duration_s=1800, warmup_s=0)
    recorded = small(duration_s=1800, warmup_s=0, prompts={"consent.wav": 3.0},
                     queues=[{"queue_id": "q", "sl_threshold_s": 20, "record": True, "record_consent": "consent.wav"}])
    r0 = build_report(Simulator(plain, 7).run(), 7)
    r1 = build_report(Simulator(recorded, 7).run(), 7)
    assert "recordings" not in r0  # runs without recordings keep their report unchanged
    assert r1["calls"] == r0["calls"] and r1["queues"] == r0["queues"]
    rec = r1["recordings"]
    answered = r1["calls"]["dispositions"].get("answered", 0)
    # every answered call heard the announcement; those still talking after it were recorded
    assert rec["consents"] == answered > 0 and rec["started"] == rec["always_on"]
    assert 0.9 * answered <= rec["started"] <= answered
    assert sum(rec["stopped"].values()) == rec["started"] and rec["mean_consent_wait_s"] == 3.0


def test_the_invariant_catches_a_recording_that_never_stops():
    r = SimRecordings()

    class Ev:
        def __init__(self, name, at, **data):
            self.name, self.at, self.data = name, at, data

    r.observe(Ev("CALL_RECORDING_STARTED", 1.0, recording_id="c-r1"))
    assert r.check() == ["recording c-r1 never stopped"]
    r.observe(Ev("CALL_RECORDING_STOPPED", 2.0, recording_id="c-r1", reason="stopped"))
    r.observe(Ev("CALL_RECORDING_STOPPED", 3.0, recording_id="c-r1", reason="stopped"))
    assert r.check() == ["recording c-r1 stopped without a start"]
    # the simulator's final checks raise it
    sim = Simulator(small(duration_s=60, warmup_s=0, traffic=[]), 1)
    sim.stats.recordings.observe(Ev("CALL_RECORDING_STARTED", 1.0, recording_id="lost-r1"))
    with pytest.raises(InvariantViolation, match="lost-r1 never stopped"):
        sim.run()
