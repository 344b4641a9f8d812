"""Deterministic simulation testing: random small contact centres, every invariant after every step.

Hypothesis draws the scenario (queues with every strategy, overflow, max wait/length, relax steps;
agents with shifts, missed offers and answer delays; traffic with patience and priorities; link
losses and agent disconnects) and the seed; the simulator checks the invariants listed in
docs/simulator.md after every step and at the end. A failure prints the scenario and seed, which
replay exactly.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.fsm.queue import STRATEGIES
from sim.core import Simulator
from sim.report import build_report, to_json
from sim.scenario import parse_scenario

QUEUES = ["q1", "q2", "q3"]


@st.composite
def scenarios(draw):
    nq = draw(st.integers(1, 3))
    qids = QUEUES[:nq]
    queues = []
    for i, q in enumerate(qids):
        cfg = {"queue_id": q, "strategy": draw(st.sampled_from(STRATEGIES)),
               "ring_timeout_s": draw(st.sampled_from([5, 15, 20])), "wrap_up_s": draw(st.sampled_from([0, 5, 30])),
               "max_wait_s": draw(st.sampled_from([0, 30, 120])), "max_length": draw(st.sampled_from([0, 2, 5]))}
        if cfg["max_wait_s"] or cfg["max_length"]:
            cfg["overflow_target"] = draw(st.sampled_from(["", "9000"] + [f"queue:{o}" for o in qids[i + 1:]]))
        if draw(st.booleans()):
            cfg["relax_steps"] = [{"after_s": 20, "lower_by": 30}, {"after_s": 60, "drop": True}]
        queues.append(cfg)
    agents = []
    for g in range(draw(st.integers(1, 4))):
        login = draw(st.sampled_from([0, 0, 300]))
        agent = {"id": f"g{g}", "count": draw(st.integers(1, 3)),
                 "queues": draw(st.lists(st.sampled_from(qids), min_size=1, max_size=nq, unique=True)),
                 "skills": {"s": draw(st.sampled_from([10, 50, 90]))},
                 "login_s": login, "no_answer_p": draw(st.sampled_from([0, 0.1, 0.5])),
                 "answer_delay_s": draw(st.sampled_from([0, 2, 8])), "recover_s": 30}
        if draw(st.booleans()):
            agent["logout_s"] = draw(st.sampled_from([900, 1500]))
        agents.append(agent)
    dids = {f"10{i}": {"queue": q, "skills": {"s": draw(st.sampled_from([0, 40, 80]))}} for i, q in enumerate(qids)}
    traffic = [{"did": did, "rate_per_hour": draw(st.sampled_from([30, 120, 300])),
                "handle": {"dist": draw(st.sampled_from(["exponential", "fixed"])), "mean_s": draw(st.sampled_from([20, 90]))},
                "patience": draw(st.sampled_from([{"dist": "none"}, {"dist": "exponential", "mean_s": 40}])),
                "priorities": [{"priority": 0, "share": 0.7}, {"priority": 5, "share": 0.3}]}
               for did in dids]
    n_agents = sum(a["count"] for a in agents)
    faults = []
    if draw(st.booleans()):
        faults.append({"at_s": draw(st.sampled_from([200, 700])), "kind": "media_link_lost", "duration_s": 20})
    if draw(st.booleans()):
        faults.append({"at_s": draw(st.sampled_from([100, 600])), "kind": "agent_disconnect",
                       "target": "g0" if agents[0]["count"] == 1 else "g0001", "duration_s": 120})
    doc = {"name": "dst", "duration_s": 1800, "warmup_s": 0, "interval_s": 600, "queues": queues,
           "agents": agents, "dids": dids, "traffic": traffic, "faults": faults}
    assert n_agents >= 1
    return parse_scenario(doc, "<dst>")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.integers(0, 10_000))
def test_random_contact_centres_keep_every_invariant(scenario, seed):
    sim = Simulator(scenario, seed)
    stats = sim.run()  # raises InvariantViolation (with the seed) on any broken invariant
    report = build_report(stats, seed)
    assert report["calls"]["created"] == report["calls"]["cdrs"]
    for q in report["queues"].values():
        f = q["figures"]
        assert f["offered"] == f["answered"] + f["abandoned"] + f["overflowed"]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.integers(0, 10_000))
def test_random_scenarios_replay_byte_identically(scenario, seed):
    first = to_json(build_report(Simulator(scenario, seed).run(), seed))
    assert to_json(build_report(Simulator(scenario, seed).run(), seed)) == first
