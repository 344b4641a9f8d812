"""Stress: thousands of concurrent calls, agents and queues on one node, with random crashes.

A fake switch answers the node's media commands after random delays (virtual time, MockClock),
callers hang up when they lose patience or after talking, agents miss or reject some offers, and
poison messages hit random calls, agents and queues. Invariants, checked from the switch's side
(independent of the actors' own bookkeeping) and at the end:
- no agent's phone ever has two legs at once (never reserved twice, never on two calls);
- every call ends with exactly one CDR;
- no actor, timer or supervisor entry is left behind for ended calls; no agent stays reserved.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.actors import Node
from engine.fsm.agent import AgentState
from engine.fsm.queue import QueueConfig
from engine.messages import (
    AgentLogin,
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    HangupCause,
    MediaBridge,
    MediaHangup,
    MediaOriginate,
    RouteToQueue,
)


class Poison:
    def __repr__(self) -> str:
        return "Poison()"


@dataclass
class Switch:
    """Plays FreeSWITCH and the humans: reacts to media commands, schedules media events."""

    node: Node
    rng: random.Random
    crash_rate: float
    now: Callable[[], float] = trio.current_time
    heap: list = field(default_factory=list)
    seq: int = 0
    wake: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)
    leg_ext: dict[tuple[str, str], str] = field(default_factory=dict)  # live agent legs
    ext_legs: dict[str, set] = field(default_factory=dict)
    bridged: set[str] = field(default_factory=set)
    ended: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    poisons: int = 0
    max_legs_seen: int = 0
    peak_calls: int = 0

    def at(self, delay: float, action: Callable[[], None]) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (self.now() + delay, self.seq, action))
        self.wake.unpark_all()

    def deliver(self, event) -> None:
        self.node.deliver_nowait(event)

    def on_media(self, cmd) -> None:  # called synchronously by the node's media port
        if isinstance(cmd, MediaOriginate) and cmd.leg != "a":
            ext = cmd.destination
            legs = self.ext_legs.setdefault(ext, set())
            if legs:
                self.violations.append(f"{ext} rung for {cmd.call_id} while on {legs}")
            legs.add((cmd.call_id, cmd.leg))
            self.max_legs_seen = max(self.max_legs_seen, len(legs))
            self.leg_ext[(cmd.call_id, cmd.leg)] = ext
            ring = self.rng.uniform(0.5, 25)  # > 20 s: the call's ring timer wins
            outcome = self.rng.random()
            self.at(ring, lambda: self._agent_picks_up(cmd.call_id, cmd.leg, outcome))
        elif isinstance(cmd, MediaHangup):
            if cmd.leg == "a":
                if cmd.call_id not in self.ended:
                    self.ended.add(cmd.call_id)
                    # FreeSWITCH reports the hangup it was told to do: a late event for the node
                    self.at(0.2, lambda: self.deliver(ChannelHangup(call_id=cmd.call_id, at=self.now())))
            else:
                self._leg_gone(cmd.call_id, cmd.leg)
        elif isinstance(cmd, MediaBridge) and cmd.call_id not in self.bridged:
            self.bridged.add(cmd.call_id)
            talk = self.rng.uniform(5, 120)
            if self.rng.random() < 0.5:
                self.at(talk, lambda: self._caller_hangs_up(cmd.call_id))
            else:
                self.at(talk, lambda: self._agent_hangs_up(cmd.call_id, cmd.other_leg))

    def _leg_gone(self, call_id: str, leg: str) -> None:
        ext = self.leg_ext.pop((call_id, leg), None)
        if ext is not None:
            self.ext_legs[ext].discard((call_id, leg))

    def _agent_picks_up(self, call_id: str, leg: str, outcome: float) -> None:
        if (call_id, leg) not in self.leg_ext:
            return  # cancelled meanwhile
        if outcome < 0.8:
            self.deliver(ChannelAnswered(call_id=call_id, leg=leg, at=self.now()))
        else:
            cause = HangupCause.USER_BUSY if outcome < 0.9 else HangupCause.NO_ANSWER
            self._leg_gone(call_id, leg)
            self.deliver(ChannelHangup(call_id=call_id, leg=leg, cause=cause, at=self.now()))

    def _caller_hangs_up(self, call_id: str) -> None:
        if call_id not in self.ended:
            self.ended.add(call_id)
            self.deliver(ChannelHangup(call_id=call_id, at=self.now()))

    def _agent_hangs_up(self, call_id: str, leg: str) -> None:
        if (call_id, leg) in self.leg_ext:
            self._leg_gone(call_id, leg)
            self.deliver(ChannelHangup(call_id=call_id, leg=leg, at=self.now()))

    def new_call(self, call_id: str, queue_id: str, patience: float) -> None:
        self.deliver(ChannelCreated(call_id=call_id, at=self.now(), destination=queue_id))
        self.at(patience, lambda: None if call_id in self.bridged else self._caller_hangs_up(call_id))

    def chaos(self) -> None:
        if self.rng.random() >= self.crash_rate:
            return
        kind = self.rng.choice(["call", "call", "agent", "queue"])
        ids = self.node.runtime.ids(kind)
        if ids:
            self.poisons += 1
            self.node.runtime.tell_nowait(kind, self.rng.choice(ids), Poison())

    async def drive(self, until_idle: trio.Event) -> None:
        while True:
            if not self.heap:
                until_idle.set()
                await self.wake.park()
                continue
            due = self.heap[0][0]
            if due > self.now():
                with trio.move_on_at(due):
                    await self.wake.park()
                continue
            _, _, action = heapq.heappop(self.heap)
            action()
            self.chaos()
            self.peak_calls = max(self.peak_calls, self.node.runtime.statistics().actors.get("call", 0)
                                  if self.seq % 64 == 0 else 0)
            await trio.lowlevel.checkpoint()


def scenario(seed: int, n_calls: int, n_agents: int, n_queues: int, crash_rate: float = 0.05,
             calls_per_s: float = 5.0) -> dict:
    rng = random.Random(seed)
    queues = [f"q{i}" for i in range(n_queues)]
    agents = [f"a{i}" for i in range(n_agents)]
    result: dict = {}

    def router(event: ChannelCreated):
        return RouteToQueue(call_id=event.call_id, at=event.at, queue_id=event.destination)

    async def main():
        node = Node(queues=[QueueConfig(queue_id=q, ring_timeout_s=20, wrap_up_s=rng.choice([0, 5]),
                                        strategy=rng.choice(["longest-idle", "ring-all", "round-robin"]))
                            for q in queues],
                    agents=agents, router=router, max_crashes=3, crash_window_s=5,
                    intensity=1000, period_s=1)
        switch = Switch(node=node, rng=rng, crash_rate=crash_rate)
        node.ports.media.listeners.append(switch.on_media)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            for i, agent_id in enumerate(agents):
                mine = tuple(sorted(set(rng.sample(queues, k=min(len(queues), rng.randint(1, 2))))))
                await node.ask(AgentLogin(agent_id=agent_id, at=trio.current_time(), extension=f"ext{i}",
                                          queues=mine, ready=True))
            start = trio.current_time()
            for i in range(n_calls):
                arrival = rng.uniform(0, n_calls / calls_per_s)
                patience = rng.uniform(5, 180)
                queue_id = rng.choice(queues)
                switch.seq += 1
                heapq.heappush(switch.heap, (start + arrival, switch.seq,
                                             lambda c=f"c{i}", q=queue_id, p=patience: switch.new_call(c, q, p)))
            idle = trio.Event()
            nursery.start_soon(switch.drive, idle)
            with trio.fail_after(n_calls / calls_per_s + 2000):  # virtual seconds: bounded
                await idle.wait()
            await trio.sleep(60)  # wrap-ups end, late events settle
            rt = node.runtime
            stats = node.statistics()
            result.update(
                violations=switch.violations,
                cdrs=node.ports.cdr.by_call(),
                calls_left=rt.ids("call"),
                calls_sup=dict(node._calls.dynamic),
                agent_states={s.agent_id: s.state for s in rt.states("agent")},
                queue_waiting={s.queue_id: (s.waiting, s.offers) for s in rt.states("queue")},
                timers=stats.runtime.timers,
                crashes=stats.runtime.crashes,
                poisons=switch.poisons,
                calls_created=stats.calls_created,
                answered=sum(1 for c in node.ports.cdr.items if c.disposition == "answered"),
                max_legs=switch.max_legs_seen,
                peak_calls=switch.peak_calls,
            )
            await node.shutdown(5)
            nursery.cancel_scope.cancel()  # the switch's driver

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result


def check(result: dict, n_calls: int) -> None:
    assert result["violations"] == []
    assert result["calls_created"] == n_calls
    assert result["cdrs"] == {f"c{i}": 1 for i in range(n_calls)}
    assert result["calls_left"] == [] and result["calls_sup"] == {}
    assert result["timers"] == 0
    assert all(s in (AgentState.AVAILABLE, AgentState.NOT_READY) for s in result["agent_states"].values())
    assert all(w == () and o == {} for w, o in result["queue_waiting"].values())


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_calls=st.integers(20, 150), n_agents=st.integers(1, 12),
       n_queues=st.integers(1, 3))
def test_small_random_contact_centres_keep_every_invariant(seed, n_calls, n_agents, n_queues):
    result = scenario(seed, n_calls, n_agents, n_queues, crash_rate=0.1)
    check(result, n_calls)


def test_thousands_of_concurrent_calls_with_random_crashes():
    n_calls = 5000
    result = scenario(seed=20240611, n_calls=n_calls, n_agents=500, n_queues=25, crash_rate=0.05,
                      calls_per_s=50)
    check(result, n_calls)
    assert result["peak_calls"] >= 2000  # thousands live at once
    assert result["crashes"] > 500 and result["answered"] > 1000
    assert result["max_legs"] == 1


@pytest.mark.parametrize("seed", [1, 2])
def test_crash_free_baseline(seed):
    result = scenario(seed, 200, 10, 2, crash_rate=0.0)
    check(result, 200)
    assert result["crashes"] == 0
