"""State-machine steps per second on a mixed event stream.

A World (sim/walkthrough.py) runs a small contact centre: callers arrive, queue, ring agents,
some agents miss offers, calls are answered, held, retrieved, hung up; agents wrap up. Every step
that world takes is recorded as (step function, state before, event); the benchmark then replays
exactly those steps against the pure machines, so the figure is the machines' own cost, not the
harness's. Prints human lines, then one JSON object as the last line.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.fsm import queue as queue_fsm  # noqa: E402
from engine.messages import (  # noqa: E402
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    Hold,
    MediaOriginate,
    Retrieve,
    RouteToQueue,
    SendMedia,
)
from sim import walkthrough  # noqa: E402

CALLS = 3000
AGENTS = 40


def record_stream(seed: int = 7) -> list[tuple]:
    rng = random.Random(seed)
    recorded: list[tuple] = []
    original = dict(walkthrough._STEP)

    def recorder(kind):
        fn = original[kind]

        def step(state, event):
            recorded.append((fn, state, event))
            return fn(state, event)
        return step

    walkthrough._STEP.update({k: recorder(k) for k in original})
    try:
        world = walkthrough.World(keep_transitions=False)
        world.add_queue(queue_fsm.QueueConfig(queue_id="sales", strategy="longest-idle", wrap_up_s=5.0))
        world.add_queue(queue_fsm.QueueConfig(queue_id="support", strategy="skills-based", wrap_up_s=5.0))
        for i in range(AGENTS):
            world.login(f"a{i}", extension=f"1{i:03}", queues=("sales", "support"), ready=True,
                        skills={"en": rng.randint(20, 90)})
        ringing: dict[str, str] = {}
        world.observers.append(lambda w, tr: [ringing.__setitem__(e.command.leg, e.command.call_id)
                                              for e in tr.effects if isinstance(e, SendMedia)
                                              and isinstance(e.command, MediaOriginate)])
        live: list[str] = []
        for n in range(CALLS):
            world.advance(world.now + rng.expovariate(1 / 2.0))
            cid = f"c{n}"
            world.new_call(ChannelCreated(call_id=cid, at=world.now, caller_id=f"+{n}"))
            world.deliver("call", cid, RouteToQueue(call_id=cid, at=world.now, queue_id=rng.choice(["sales", "support"]),
                                                    skills={"en": 30} if rng.random() < 0.5 else {}))
            live.append(cid)
            for leg, call_id in list(ringing.items()):
                del ringing[leg]
                if rng.random() < 0.9:
                    world.deliver("call", call_id, ChannelAnswered(call_id=call_id, at=world.now, leg=leg))
                else:
                    world.deliver("call", call_id, ChannelHangup(call_id=call_id, at=world.now, leg=leg, cause="NO_ANSWER"))
            if len(live) > AGENTS:
                victim = live.pop(rng.randrange(len(live)))
                if rng.random() < 0.3:
                    world.deliver("call", victim, Hold(call_id=victim, at=world.now))
                    world.deliver("call", victim, Retrieve(call_id=victim, at=world.now))
                world.deliver("call", victim, ChannelHangup(call_id=victim, at=world.now, leg="a"))
        world.advance(world.now + 3600)
    finally:
        walkthrough._STEP.update(original)
    return recorded


def main() -> None:
    stream = record_stream()
    kinds: dict[str, int] = {}
    for fn, _, _ in stream:
        kinds[fn.__module__] = kinds.get(fn.__module__, 0) + 1
    print(f"recorded {len(stream)} steps: " + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(kinds.items())))
    best = 0.0
    deadline = time.perf_counter() + 6.0
    rounds = 0
    while rounds < 5 and time.perf_counter() < deadline:
        start = time.perf_counter()
        for fn, state, event in stream:
            fn(state, event)
        elapsed = time.perf_counter() - start
        best = max(best, len(stream) / elapsed)
        rounds += 1
        print(f"round {rounds}: {len(stream) / elapsed:,.0f} steps/s")
    print(json.dumps({"fsm_steps_per_s": round(best), "fsm_steps_in_stream": len(stream), "rounds": rounds}))


if __name__ == "__main__":
    main()
