"""Table-driven tests of the queue machine: ordering, strategies, skills, overflow, statistics."""

from __future__ import annotations

import pytest

from engine.fsm import queue as Q
from engine.messages import (
    AgentStatus,
    CallerLeft,
    ConnectAgent,
    OfferAnswered,
    OfferFailed,
    QueueCall,
    QueueOverflow,
    ReleaseReservation,
    ReservationAccepted,
    ReservationRejected,
    ReserveAgent,
    Send,
    TimerFired,
)
from tests.support.builders import steps

S = Q.QueueState


def status(agent, at=0.0, available=True, skills=None, idle=0.0, talk=0.0, calls=0, logged_in=True):
    return AgentStatus(queue_id="q1", agent_id=agent, at=at, logged_in=logged_in, available=available,
                       extension=f"ext-{agent}", skills=skills or {}, idle_since=idle, talk_time=talk,
                       calls_handled=calls)


def caller(call, at=1.0, priority=0, skills=None):
    return QueueCall(queue_id="q1", call_id=call, at=at, priority=priority, skills=skills or {})


def drive(q, *events):
    return steps(Q.step, q, *events)


def reserves(effects):
    return [e.message for e in effects if isinstance(e, Send) and isinstance(e.message, ReserveAgent)]


def sent(effects, kind):
    return [e.message for e in effects if isinstance(e, Send) and isinstance(e.message, kind)]


def queue(**cfg):
    return Q.new_queue(Q.QueueConfig(queue_id="q1", **cfg))


def test_no_agents_caller_waits():
    q, effects = drive(queue(), caller("c1"))
    assert q.state is S.WAITING and reserves(effects) == []
    assert q.stats.offered == 1


def test_priority_then_arrival_order():
    q, _ = drive(queue(), caller("c1", at=1), caller("c2", at=2, priority=5), caller("c3", at=3, priority=5))
    q, effects = drive(q, status("a1"))
    assert [r.call_id for r in reserves(effects)] == ["c2"]
    q, effects = drive(q, status("a2"))
    assert [r.call_id for r in reserves(effects)] == ["c3"]
    q, effects = drive(q, status("a3"))
    assert [r.call_id for r in reserves(effects)] == ["c1"]


@pytest.mark.parametrize("strategy, expected", [
    ("longest-idle", "b"),      # idle since 10 < 20 < 30
    ("least-talk-time", "c"),   # talk 5
    ("fewest-calls", "a"),      # 1 call
    ("round-robin", "a"),       # first by id after an empty cursor
])
def test_strategies_pick_deterministically(strategy, expected):
    q = queue(strategy=strategy)
    q, _ = drive(q, status("a", idle=20, talk=50, calls=1), status("b", idle=10, talk=30, calls=5),
                 status("c", idle=30, talk=5, calls=3))
    _, effects = drive(q, caller("c1"))
    assert [r.agent_id for r in reserves(effects)] == [expected]


def test_round_robin_rotates():
    q = queue(strategy="round-robin")
    q, _ = drive(q, status("a"), status("b"), status("c"))
    picked = []
    for i in range(4):
        q, effects = drive(q, caller(f"c{i}", at=i + 1.0))
        [r] = reserves(effects)
        picked.append(r.agent_id)
        q, _ = drive(q, ReservationAccepted(queue_id="q1", agent_id=r.agent_id, at=i + 1.0, offer_id=r.offer_id),
                     OfferAnswered(at=i + 1.5, offer_id=r.offer_id, call_id=r.call_id, agent_id=r.agent_id,
                                   queue_id="q1"))
    assert picked == ["a", "b", "c", "a"]


def test_ring_all_reserves_every_free_agent():
    q = queue(strategy="ring-all")
    q, _ = drive(q, status("a"), status("b"), status("c", available=False))
    q, effects = drive(q, caller("c1"))
    assert sorted(r.agent_id for r in reserves(effects)) == ["a", "b"]


def test_skills_filter_and_best_proficiency_first():
    q = queue(strategy="skills-based")
    q, _ = drive(q, status("low", skills={"de": 40}), status("high", skills={"de": 90}),
                 status("none", skills={"fr": 99}))
    _, effects = drive(q, caller("c1", skills={"de": 30}))
    assert [r.agent_id for r in reserves(effects)] == ["high"]
    _, effects = drive(q, caller("c1", skills={"de": 95}))
    assert reserves(effects) == []


def test_skills_relax_as_the_wait_grows():
    q = queue(strategy="skills-based", relax_steps=(Q.RelaxStep(after_s=30, lower_by=20), Q.RelaxStep(after_s=60, drop=True)))
    q, _ = drive(q, status("mid", skills={"de": 60}), status("fr", skills={"fr": 90}))
    q, effects = drive(q, caller("c1", at=0.0, skills={"de": 75}))
    assert reserves(effects) == []
    [timer] = [e for e in effects if type(e).__name__ == "StartTimer" and e.key.startswith("relax")]
    assert timer.deadline == 30.0
    q, effects = drive(q, TimerFired(key="relax:c1", at=30.0))
    assert [r.agent_id for r in reserves(effects)] == ["mid"]
    assert Q.required_skills(q.config, q.waiting[0], 60.0) == {}


def test_accept_connects_the_call_and_answer_counts_service_level():
    q, effects = drive(queue(sl_threshold_s=20), status("a1"), caller("c1", at=0.0))
    [r] = reserves(effects)
    q, effects = drive(q, ReservationAccepted(queue_id="q1", agent_id="a1", at=1.0, offer_id=r.offer_id,
                                              extension="1001"))
    [connect] = sent(effects, ConnectAgent)
    assert connect.call_id == "c1" and connect.extension == "1001"
    q, _ = drive(q, OfferAnswered(at=15.0, offer_id=r.offer_id, call_id="c1", agent_id="a1", queue_id="q1"))
    assert q.state is S.IDLE and q.stats.answered == 1 and q.stats.answered_within_sl == 1
    assert q.stats.total_wait_answered == 15.0


def test_rejection_marks_agent_busy_and_tries_the_next():
    q, effects = drive(queue(), status("a", idle=1), status("b", idle=2), caller("c1"))
    [r] = reserves(effects)
    assert r.agent_id == "a"
    q, effects = drive(q, ReservationRejected(queue_id="q1", agent_id="a", at=1.0, offer_id=r.offer_id))
    assert [x.agent_id for x in reserves(effects)] == ["b"]
    assert q.members["a"].available is False


def test_caller_leaving_releases_reserved_agent_and_counts_abandon():
    q, effects = drive(queue(short_abandon_s=5), status("a1"), caller("c1", at=0.0))
    [r] = reserves(effects)
    q, effects = drive(q, CallerLeft(queue_id="q1", call_id="c1", at=3.0))
    assert sent(effects, ReleaseReservation)[0].offer_id == r.offer_id
    assert q.stats.abandoned == 1 and q.stats.short_abandoned == 1 and q.state is S.IDLE
    # the agent's late acceptance is answered with a release, never a ConnectAgent
    q, effects = drive(q, ReservationAccepted(queue_id="q1", agent_id="a1", at=3.5, offer_id=r.offer_id))
    assert sent(effects, ConnectAgent) == [] and sent(effects, ReleaseReservation)


def test_max_length_overflows_immediately():
    q, effects = drive(queue(max_length=1, overflow_target="queue:q2"), caller("c1"), caller("c2"))
    [over] = sent(effects, QueueOverflow)
    assert over.call_id == "c2" and over.reason == "max_length" and over.target == "queue:q2"
    assert q.stats.overflowed == 1 and len(q.waiting) == 1


def test_max_wait_overflows_waiting_caller():
    q, effects = drive(queue(max_wait_s=60), caller("c1", at=0.0))
    q, effects = drive(q, TimerFired(key="maxwait:c1", at=60.0))
    assert sent(effects, QueueOverflow)[0].reason == "max_wait" and q.state is S.IDLE


def test_max_wait_does_not_yank_a_ringing_caller_but_overflows_if_the_ring_fails():
    q, effects = drive(queue(max_wait_s=60), status("a1"), caller("c1", at=0.0))
    [r] = reserves(effects)
    q, _ = drive(q, ReservationAccepted(queue_id="q1", agent_id="a1", at=55.0, offer_id=r.offer_id))
    q, effects = drive(q, TimerFired(key="maxwait:c1", at=60.0))
    assert sent(effects, QueueOverflow) == [] and q.waiting[0].overdue
    q, effects = drive(q, OfferFailed(at=75.0, offer_id=r.offer_id, call_id="c1", agent_id="a1", queue_id="q1"))
    assert sent(effects, QueueOverflow) and q.stats.overflowed == 1


def test_logout_status_removes_member():
    q, _ = drive(queue(), status("a1"), status("a1", logged_in=False))
    assert q.members == {}


def test_duplicates_and_stale_messages_are_no_ops():
    q, _ = drive(queue(), caller("c1"))
    assert Q.step(q, caller("c1", at=2.0)) == (q, [])
    assert Q.step(q, CallerLeft(queue_id="q1", call_id="zz", at=2.0)) == (q, [])
    assert Q.step(q, TimerFired(key="maxwait:c1", at=5.0)) == (q, [])
    assert Q.step(q, OfferFailed(at=2.0, offer_id="nope", call_id="c1", agent_id="a", queue_id="q1")) == (q, [])


def test_service_level_counts_only_answers_within_the_threshold():
    q, effects = drive(queue(sl_threshold_s=20), status("a1"), caller("c1", at=0.0))
    [r] = reserves(effects)
    q, _ = drive(q, ReservationAccepted(queue_id="q1", agent_id="a1", at=1.0, offer_id=r.offer_id),
                 OfferAnswered(at=20.5, offer_id=r.offer_id, call_id="c1", agent_id="a1", queue_id="q1"))
    assert q.stats.answered == 1 and q.stats.answered_within_sl == 0


def test_long_abandon_is_not_short():
    q, _ = drive(queue(short_abandon_s=5), caller("c1", at=0.0), CallerLeft(queue_id="q1", call_id="c1", at=5.0))
    assert q.stats.abandoned == 1 and q.stats.short_abandoned == 0


def test_a_reservation_the_agent_never_answers_times_out_and_the_caller_is_offered_again():
    q, effects = drive(queue(ring_timeout_s=20, offer_grace_s=10), status("a", idle=1), status("b", idle=2),
                       caller("c1", at=0.0))
    [r] = reserves(effects)
    assert any(type(e).__name__ == "StartTimer" and e.key == f"offer:{r.offer_id}" and e.deadline == 30.0
               for e in effects)
    q, effects = drive(q, TimerFired(key=f"offer:{r.offer_id}", at=30.0))
    assert sent(effects, ReleaseReservation)[0].agent_id == "a"
    again = reserves(effects)
    assert len(again) == 1 and again[0].call_id == "c1" and again[0].offer_id != r.offer_id
    # an accepted reservation is the agent's to time out: the queue's timer is cancelled
    q, effects = drive(q, ReservationAccepted(queue_id="q1", agent_id=again[0].agent_id, at=31.0,
                                              offer_id=again[0].offer_id))
    assert f"offer:{again[0].offer_id}" not in q.timers


def test_config_update_applies_to_a_running_queue_and_rejects_bad_input():
    import msgspec

    from engine.messages import Reply, UpdateQueueConfig

    q, _ = drive(queue(strategy="longest-idle"), status("a", idle=1, calls=9), status("b", idle=5, calls=0))
    new = msgspec.to_builtins(Q.QueueConfig(queue_id="q1", strategy="fewest-calls", wrap_up_s=30))
    q, effects = drive(q, UpdateQueueConfig(queue_id="q1", at=5.0, config=new, request_id="r"))
    assert q.config.strategy == "fewest-calls" and q.config.wrap_up_s == 30
    assert [e for e in effects if isinstance(e, Reply)][0].ok
    # the new strategy decides the next dispatch (longest-idle would have picked "a")
    q, effects = drive(q, caller("c1", at=6.0))
    assert [r.agent_id for r in reserves(effects)] == ["b"] and reserves(effects)[0].wrap_up_s == 30
    for bad in ({"queue_id": "q1", "strategy": "telepathy"}, {"queue_id": "other"}, {"strategy": "ring-all"}):
        same, effects = Q.step(q, UpdateQueueConfig(queue_id="q1", at=6.0, config=bad, request_id="r"))
        assert same == q and effects[0].code == "INVALID_ARGUMENT"


def test_reordered_status_and_rejection_cannot_roll_the_view_back():
    q, effects = drive(queue(), AgentStatus(queue_id="q1", agent_id="a", at=0.0, logged_in=True, available=True,
                                            seq=1), caller("c1", at=1.0))
    [r] = reserves(effects)
    # the agent rejected (at its status 1), then became available again (status 2); status 2 overtook
    # the rejection on the way here
    q, _ = drive(q, AgentStatus(queue_id="q1", agent_id="a", at=2.0, logged_in=True, available=True, seq=2))
    q, effects = drive(q, ReservationRejected(queue_id="q1", agent_id="a", at=1.5, offer_id=r.offer_id,
                                              status_seq=1))
    assert q.members["a"].available and "a" in q.available
    assert [x.agent_id for x in reserves(effects)] == ["a"]  # offered again, not forgotten
    # and an old status arriving late is ignored
    q2, _ = drive(q, AgentStatus(queue_id="q1", agent_id="a", at=0.5, logged_in=True, available=False, seq=1))
    assert q2.members["a"].seq == 2 and q2.members["a"].available


def test_a_call_that_refuses_as_caller_gone_is_held_back_until_it_rejoins():
    """A restarted shard rebuilt the call unrouted, so it refuses the queue's ConnectAgent as
    "caller_gone". Offering it again at once traded offers with the call at message speed (1,500
    offers in 20 s in the fault demo); it waits, keeps its place, and is offered once it rejoins."""
    q, effects = drive(queue(), status("a1"), caller("c1", at=1.0), caller("c2", at=2.0))
    (offer,) = reserves(effects)
    assert offer.call_id == "c1"
    q, _ = drive(q, ReservationAccepted(queue_id="q1", agent_id="a1", at=3.0, offer_id=offer.offer_id),
                 status("a1", at=3.0, available=False))
    refused = OfferFailed(at=4.0, offer_id=offer.offer_id, call_id="c1", agent_id="a1", queue_id="q1",
                          reason="caller_gone")
    q, effects = drive(q, refused, status("a1", at=4.0))
    assert [r.call_id for r in reserves(effects)] == ["c2"]  # not c1 again
    assert [w.call_id for w in q.waiting if w.unconfirmed] == ["c1"]
    q, effects = drive(q, status("a2", at=5.0))
    assert reserves(effects) == []  # a2 is free, and c1 is still held back
    q, effects = drive(q, caller("c1", at=6.0))
    assert [(r.call_id, r.agent_id) for r in reserves(effects)] == [("c1", "a2")]
    assert [w.call_id for w in q.waiting] == ["c1", "c2"] and not q.waiting[0].unconfirmed
    assert q.stats.offered == 2  # the rejoin is not a second arrival
