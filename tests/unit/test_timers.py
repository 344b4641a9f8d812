"""Timers: the per-shard heap, and machine timers delivered at their deadline (MockClock)."""

from __future__ import annotations

import msgspec
import pytest
import trio
import trio.testing

from engine.actors import Behaviour, TimerHeap, open_node, open_runtime, route_by_destination
from engine.fsm.queue import QueueConfig
from engine.messages import (
    AgentLogin,
    CancelTimer,
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    CtiEvent,
    MediaHangup,
    PublishCti,
    ReserveAgent,
    StartTimer,
    Stop,
    TimerFired,
)


class Owner:
    def __init__(self) -> None:
        self.timers: dict[str, int] | None = None


def test_heap_fires_in_deadline_then_arming_order():
    heap = TimerHeap()
    a, b = Owner(), Owner()
    assert heap.start(a, "x", 5.0) is True
    assert heap.start(b, "y", 3.0) is True
    assert heap.start(a, "z", 5.0) is False
    assert heap.next_deadline() == 3.0 and len(heap) == 3
    assert heap.pop_due(4.0) == [(b, "y", 3.0)]
    assert b.timers is None  # an actor without timers pays nothing
    assert heap.pop_due(5.0) == [(a, "x", 5.0), (a, "z", 5.0)]
    assert len(heap) == 0 and heap.fired == 3


def test_heap_cancel_and_replace_are_lazy_but_exact():
    heap = TimerHeap()
    a = Owner()
    heap.start(a, "ring", 10.0)
    heap.start(a, "ring", 20.0)  # replaces
    heap.start(a, "wrap", 15.0)
    assert heap.cancel(a, "wrap") is True and heap.cancel(a, "wrap") is False
    assert len(heap) == 1
    assert heap.pop_due(19.0) == []
    assert heap.pop_due(20.0) == [(a, "ring", 20.0)]
    heap.start(a, "k", 1.0)
    assert heap.cancel_all(a) == 1 and a.timers is None and heap.pop_due(100.0) == []


def test_heap_compacts_when_stale_entries_dominate():
    heap = TimerHeap()
    owners = [Owner() for _ in range(3000)]
    for i, owner in enumerate(owners):
        heap.start(owner, "t", float(i))
    for owner in owners[:2900]:
        heap.cancel(owner, "t")
    heap.start(owners[0], "t", 0.5)  # triggers the rebuild
    assert heap.compactions == 1 and len(heap._heap) == 101 and len(heap) == 101
    assert [d for _, _, d in heap.pop_due(1e9)][:2] == [0.5, 2900.0]


# ---- runtime timers -----------------------------------------------------------------------


class Arm(msgspec.Struct, frozen=True):
    key: str
    deadline: float


class Disarm(msgspec.Struct, frozen=True):
    key: str


class End(msgspec.Struct, frozen=True):
    pass


fired: list[tuple[str, float, float]] = []


def timer_step(state: tuple, msg: object):
    if isinstance(msg, Arm):
        return state, [StartTimer(key=msg.key, deadline=msg.deadline)]
    if isinstance(msg, Disarm):
        return state, [CancelTimer(key=msg.key)]
    if isinstance(msg, End):
        return state, [Stop()]
    assert isinstance(msg, TimerFired)
    fired.append((msg.key, msg.at, trio.current_time()))
    return state + (msg.key,), [PublishCti(event=CtiEvent(name="FIRED", tenant="t", at=msg.at))]


TIMED = Behaviour("timed", timer_step)


def run(fn):
    fired.clear()
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_timer_fires_exactly_at_its_deadline_in_trio_time():
    async def main():
        async with open_runtime() as rt:
            ref = rt.spawn(TIMED, "t1", ())
            t0 = trio.current_time()
            ref.tell_nowait(Arm(key="late", deadline=t0 + 7.5))
            ref.tell_nowait(Arm(key="early", deadline=t0 + 2.0))
            await trio.sleep(10)
            assert fired == [("early", t0 + 2.0, t0 + 2.0), ("late", t0 + 7.5, t0 + 7.5)]
            assert rt.statistics().timers == 0 and rt.statistics().timers_fired == 2

    run(main)


def test_cancel_and_rearm_and_stop_drop_timers():
    async def main():
        async with open_runtime() as rt:
            ref = rt.spawn(TIMED, "t1", ())
            other = rt.spawn(TIMED, "t2", ())
            t0 = trio.current_time()
            ref.tell_nowait(Arm(key="a", deadline=t0 + 5))
            ref.tell_nowait(Arm(key="b", deadline=t0 + 5))
            ref.tell_nowait(Arm(key="b", deadline=t0 + 9))  # re-armed: fires once, later
            ref.tell_nowait(Disarm(key="a"))
            other.tell_nowait(Arm(key="c", deadline=t0 + 3))
            other.tell_nowait(End())  # stopping drops its timer
            await trio.sleep(1)
            assert rt.statistics().timers == 1
            await trio.sleep(20)
            assert fired == [("b", t0 + 9, t0 + 9)]

    run(main)


def test_one_timer_task_serves_many_actors():
    async def main():
        async with open_runtime() as rt:
            t0 = trio.current_time()
            for i in range(500):
                rt.spawn(TIMED, f"t{i}", ()).tell_nowait(Arm(key="k", deadline=t0 + 1 + (i % 10)))
            await trio.sleep(0.5)
            tasks_before = len(trio.lowlevel.current_root_task().child_nurseries[0].child_tasks)
            assert rt.statistics().timers == 500
            await trio.sleep(11)
            assert len(fired) == 500 and all(at == now for _, at, now in fired)
            assert tasks_before < 10  # no task per timer (or per actor)

    run(main)


# ---- the machines' timers, hosted by a node -------------------------------------------------


def _recorder(port) -> list:
    seen: list = []
    port.listeners.append(lambda item: seen.append((item, trio.current_time())))
    return seen


def test_ring_timeout_hangs_the_agent_leg_up_at_the_deadline():
    async def main():
        async with open_node(queues=[QueueConfig(queue_id="sales", ring_timeout_s=20)], agents=["a1"],
                             router=route_by_destination({"100": "sales"})) as node:
            media = _recorder(node.ports.media)
            await node.ask(AgentLogin(agent_id="a1", at=trio.current_time(), extension="201",
                                      queues=("sales",), ready=True))
            await trio.sleep(3)
            t0 = trio.current_time()
            node.deliver_nowait(ChannelCreated(call_id="c1", at=t0, destination="100"))
            await trio.sleep(25)
            hangups = [(c.leg, t) for c, t in media if isinstance(c, MediaHangup)]
            assert hangups[0] == ("c1-1", t0 + 20)

    run(main)


def test_wrap_up_ends_at_its_deadline():
    async def main():
        async with open_node(queues=[QueueConfig(queue_id="sales", wrap_up_s=15)], agents=["a1"],
                             router=route_by_destination({"100": "sales"})) as node:
            cti = _recorder(node.ports.cti)
            await node.ask(AgentLogin(agent_id="a1", at=trio.current_time(), extension="201",
                                      queues=("sales",), ready=True))
            node.deliver_nowait(ChannelCreated(call_id="c1", at=trio.current_time(), destination="100"))
            await trio.sleep(2)
            node.deliver_nowait(ChannelAnswered(call_id="c1", at=trio.current_time(), leg="c1-1"))
            await trio.sleep(60)
            t_end = trio.current_time()
            node.deliver_nowait(ChannelHangup(call_id="c1", at=t_end))
            await trio.sleep(30)
            changes = [(e.data["state"], t) for e, t in cti
                       if e.name == "AGENT_STATE_CHANGED" and t >= t_end]
            assert changes == [("WRAP_UP", t_end), ("AVAILABLE", t_end + 15)]

    run(main)


def test_offer_timeout_frees_an_agent_that_nobody_connected():
    async def main():
        async with open_node(agents=["a1"]) as node:
            cti = _recorder(node.ports.cti)
            await node.ask(AgentLogin(agent_id="a1", at=trio.current_time(), extension="201",
                                      queues=(), ready=True))
            await trio.sleep(1)
            t0 = trio.current_time()
            node.deliver_nowait(ReserveAgent(agent_id="a1", at=t0, offer_id="o1", queue_id="qx",
                                             call_id="c9", timeout_s=30))
            await trio.sleep(40)
            changes = [(e.data["state"], t) for e, t in cti if e.name == "AGENT_STATE_CHANGED" and t >= t0]
            assert changes == [("RESERVED", t0), ("AVAILABLE", t0 + 30)]
            assert node.runtime.state_of("agent", "a1").missed_offers == 1

    run(main)


@pytest.mark.parametrize("n", [1, 3])
def test_timer_fired_at_is_the_deadline_even_when_late(n):
    """A busy worker may deliver late; the machine still sees ``at=deadline`` (deterministic)."""

    async def main():
        async with open_runtime() as rt:
            t0 = trio.current_time()
            for i in range(n):
                rt.spawn(TIMED, f"t{i}", ()).tell_nowait(Arm(key="k", deadline=t0 + 1))
            await trio.sleep(2)
            assert {at for _, at, _ in fired} == {t0 + 1}

    run(main)
