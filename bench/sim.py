"""Simulator benchmark: a 1,000-agent, 20-queue skills-based day of about 500k calls, on one core.

Prints human-readable figures, then (last line) one JSON object with ``sim_calls_per_s``.
The goal is >= 25k calls/s (a whole day in <= 20 s). Usage::

    .venv/bin/python bench/sim.py [--hours H] [--seed N] [--no-check] [--profile]

``--hours`` shortens the day (the rate stays that of a 500k-call day) for a quick look.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sim.core import Simulator  # noqa: E402
from sim.scenario import parse_scenario  # noqa: E402

QUEUES = 20
GROUPS = 20
AGENTS_PER_GROUP = 50
CALLS_PER_DAY = 500_000


def scenario(hours: float, seed: int) -> dict:
    queues = [{"queue_id": f"q{i:02d}", "strategy": "skills-based" if i % 2 else "longest-idle",
               "ring_timeout_s": 20, "wrap_up_s": 10, "sl_threshold_s": 20,
               "relax_steps": [{"after_s": 60, "lower_by": 20}]} for i in range(QUEUES)]
    agents = []
    for g in range(GROUPS):
        # each group serves its own queue and two neighbours: overlapping skills, like a real floor
        serve = [f"q{(g + k) % QUEUES:02d}" for k in (0, 1, 2)]
        skills = {f"s{(g + k) % QUEUES:02d}": level for k, level in zip((0, 1, 2), (90, 60, 40), strict=True)}
        agents.append({"id": f"g{g:02d}a", "count": AGENTS_PER_GROUP, "queues": serve, "skills": skills,
                       "no_answer_p": 0.01, "answer_delay_s": 2.0})
    dids = {f"+1800555{i:04d}": {"queue": f"q{i:02d}", "skills": {f"s{i:02d}": 50}} for i in range(QUEUES)}
    per_queue_per_hour = CALLS_PER_DAY / 24 / QUEUES
    traffic = [{"did": did, "rate_per_hour": per_queue_per_hour,
                "handle": {"dist": "lognormal", "mean_s": 110, "sd_s": 80},
                "patience": {"dist": "exponential", "mean_s": 240},
                "priorities": [{"priority": 0, "share": 0.9}, {"priority": 5, "share": 0.1}]}
               for did in dids]
    return {"name": "bench-1000-agents", "seed": seed, "duration_s": hours * 3600, "warmup_s": min(3600, hours * 900),
            "interval_s": 1800, "queues": queues, "agents": agents, "dids": dids, "traffic": traffic}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    sc = parse_scenario(scenario(args.hours, args.seed), "<bench>")
    sim = Simulator(sc, check=not args.no_check)
    t0 = time.perf_counter()
    if args.profile:
        import cProfile
        import pstats

        cProfile.runctx("sim.run()", globals(), {"sim": sim}, "/tmp/bench_sim.prof")
        pstats.Stats("/tmp/bench_sim.prof").sort_stats("tottime").print_stats(20)
    else:
        sim.run()
    elapsed = time.perf_counter() - t0
    calls = sim.call_seq
    st = sim.stats
    answered = sum(q.total.answered for q in st.queues.values())
    offered = sum(q.total.offered for q in st.queues.values())
    print(f"{calls} calls, {sim.events} events in {elapsed:.2f} s (virtual {sim.now / 3600:.1f} h)")
    print(f"answered {answered}/{offered} measured after warm-up; checks {'off' if args.no_check else 'on'}")
    print(f"{calls / elapsed:,.0f} calls/s, {sim.events / elapsed:,.0f} events/s, one core")
    print(json.dumps({"bench": "sim", "agents": GROUPS * AGENTS_PER_GROUP, "queues": QUEUES,
                      "virtual_hours": args.hours, "calls": calls, "events": sim.events,
                      "elapsed_s": round(elapsed, 3), "sim_calls_per_s": round(calls / elapsed, 1),
                      "sim_events_per_s": round(sim.events / elapsed, 1), "checks": not args.no_check}))


if __name__ == "__main__":
    main()
