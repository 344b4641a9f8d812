"""A node hosting calls, agents and queues end to end (in-memory ports, MockClock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from engine.actors import (
    BufferedPort,
    MailboxFull,
    Ports,
    TaskSpec,
    open_node,
    route,
    route_by_destination,
)
from engine.fsm.agent import AgentState
from engine.fsm.call import CallState
from engine.fsm.queue import QueueConfig
from engine.messages import (
    AgentLogin,
    AgentReady,
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    DtmfReceived,
    Hangup,
    Hold,
    MediaBridge,
    MediaOriginate,
    OfferFailed,
    Originate,
    QueueCall,
    Retrieve,
)


class Poison:
    """Not a message any machine knows: stepping it raises IllegalTransition."""

    def __repr__(self) -> str:
        return "Poison()"


def run(fn):
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def node_options(**kw):
    options = dict(queues=[QueueConfig(queue_id="sales", ring_timeout_s=20, wrap_up_s=10)],
                   agents=["a1", "a2"], router=route_by_destination({"100": "sales"}))
    options.update(kw)
    return options


async def login(node, agent_id: str, ext: str) -> None:
    reply = await node.ask(AgentLogin(agent_id=agent_id, at=trio.current_time(), extension=ext,
                                      queues=("sales",), ready=True))
    assert reply.ok


async def connected_call(node, call_id: str = "c1") -> str:
    """An inbound call routed to the queue and answered by the agent it rang; returns the leg."""
    node.deliver_nowait(ChannelCreated(call_id=call_id, at=trio.current_time(), destination="100",
                                       caller_id="+15550001"))
    await trio.sleep(1)
    [originate] = [c for c in node.ports.media.items
                   if isinstance(c, MediaOriginate) and c.call_id == call_id]
    node.deliver_nowait(ChannelAnswered(call_id=call_id, at=trio.current_time(), leg=originate.leg))
    await trio.sleep(1)
    assert node.runtime.state_of("call", call_id).state is CallState.ACTIVE
    return originate.leg


def test_route_by_id():
    assert route(ChannelHangup(call_id="c", at=0)) == ("call", "c")
    assert route(AgentReady(agent_id="a", at=0)) == ("agent", "a")
    assert route(QueueCall(queue_id="q", call_id="c", at=0)) == ("queue", "q")
    with pytest.raises(TypeError):
        route(OfferFailed(at=0, offer_id="o", call_id="c", agent_id="a", queue_id="q"))


def test_a_call_survives_a_poison_message_mid_call_and_ends_with_exactly_one_cdr():
    async def main():
        async with open_node(**node_options()) as node:
            await login(node, "a1", "201")
            leg = await connected_call(node)
            before = node.runtime.state_of("call", "c1")
            node.runtime.tell_nowait("call", "c1", Poison())
            node.runtime.tell_nowait("call", "c1", QueueCall(queue_id="sales", call_id="c1", at=0))
            await trio.sleep(1)
            assert node.runtime.state_of("call", "c1") == before  # last good state, untouched
            errors = node.ports.cti.named("ACTOR_ERROR")
            assert [(e.call_id, e.data["message"]) for e in errors] == [("c1", "Poison"), ("c1", "QueueCall")]
            assert [type(d.message).__name__ for d in node.runtime.dead_letters] == ["Poison", "QueueCall"]
            # the call goes on working: hold, retrieve, hang up
            assert (await node.ask(Hold(call_id="c1", at=trio.current_time()))).ok
            await trio.sleep(5)
            assert (await node.ask(Retrieve(call_id="c1", at=trio.current_time()))).ok
            await trio.sleep(30)
            node.deliver_nowait(ChannelHangup(call_id="c1", at=trio.current_time()))
            node.deliver_nowait(ChannelHangup(call_id="c1", at=trio.current_time(), leg=leg))  # late
            await trio.sleep(1)
            assert node.ports.cdr.by_call() == {"c1": 1}
            [cdr] = node.ports.cdr.items
            assert (cdr.disposition, cdr.agent_id, cdr.queue_id) == ("answered", "a1", "sales")
            assert cdr.hold_s == pytest.approx(5)
            assert cdr.talk_s == pytest.approx(32)  # 1 s before the poison + 1 s after + 30 s
            stats = node.statistics()
            assert stats.runtime.actors["call"] == 0 and stats.runtime.crashes == 2
            assert stats.runtime.late_dropped == 1 and stats.media_dropped == 0
            assert node.runtime.state_of("agent", "a1").state is AgentState.WRAP_UP

    run(main)


def test_repeated_crashes_escalate_and_the_supervisor_resumes_the_call():
    events: list[tuple[str, dict]] = []

    async def main():
        async with open_node(**node_options(max_crashes=2, observer=lambda w, d: events.append((w, d)))) as node:
            await login(node, "a1", "201")
            await connected_call(node)
            for _ in range(4):
                node.runtime.tell_nowait("call", "c1", Poison())
            await trio.sleep(1)
            assert [d["path"] for w, d in events if w == "restarted_group"] == []  # dynamic child
            assert [(d["id"], d["resume"]) for w, d in events if w == "restarted"] == [("c1", True)]
            assert node.runtime.statistics().escalations == 1
            node.deliver_nowait(ChannelHangup(call_id="c1", at=trio.current_time()))
            await trio.sleep(1)
            assert node.ports.cdr.by_call() == {"c1": 1}
            assert node.runtime.ids("call") == []

    run(main)


def test_unknown_ids_media_noise_and_commands():
    async def main():
        async with open_node(**node_options()) as node:
            node.deliver_nowait(ChannelAnswered(call_id="ghost", at=0))  # never created: dropped
            node.deliver_nowait(ChannelCreated(call_id="ghost", at=0, leg="ghost-1"))  # not leg a
            reply = await node.ask(Hangup(call_id="ghost", at=0))
            assert (reply.ok, reply.code) == (False, "NOT_FOUND")
            reply = await node.ask(AgentReady(agent_id="nobody", at=0))
            assert reply.code == "NOT_FOUND"
            stats = node.statistics()
            assert (stats.media_dropped, stats.not_found, stats.calls_created) == (2, 2, 0)
            assert stats.runtime.dead_letters == 0  # noise is not an error
            assert node.runtime.ids("call") == []

    run(main)


def test_originate_creates_the_call_and_replies():
    async def main():
        async with open_node(**node_options()) as node:
            reply = await node.ask(Originate(call_id="o1", at=trio.current_time(), from_extension="201",
                                             to="5551234", timeout_s=15))
            assert reply.ok and reply.data == {"call_id": "o1"}
            assert node.runtime.state_of("call", "o1").state is CallState.RINGING
            start = trio.current_time()
            await trio.sleep(20)  # the user's phone never answers: ring:a fires at +15
            [cdr] = node.ports.cdr.items
            assert cdr.disposition == "no_answer" and cdr.ended_at == pytest.approx(start + 15)
            again = await node.ask(Hold(call_id="o1", at=trio.current_time()))
            assert again.code == "FAILED_PRECONDITION"  # a late command to an ended call

    run(main)


def test_backpressure_on_a_call_mailbox_through_the_node():
    async def main():
        async with open_node(**node_options(call_mailbox=8)) as node:
            node.deliver_nowait(ChannelCreated(call_id="c1", at=0))
            with pytest.raises(MailboxFull):
                for _ in range(100):
                    node.deliver_nowait(DtmfReceived(call_id="c1", at=0, digit="1"))
            await node.deliver(DtmfReceived(call_id="c1", at=0, digit="2"))  # waits, then fits
            await trio.sleep(1)
            assert node.runtime.actor_statistics("call", "c1").processed >= 9

    run(main)


def test_media_link_is_a_supervised_task_feeding_the_node_and_cdrs_are_pumped():
    send, receive = trio.open_memory_channel[object](100)
    written: list[list] = []
    holder: dict = {}

    async def esl_link(task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        async for event in receive:
            await holder["node"].deliver(event)

    async def cdr_sink(batch):
        await trio.sleep(0.1)  # a slow database
        written.append(batch)

    async def main():
        cdrs = BufferedPort(cdr_sink, batch=10)
        base = Ports.in_memory()
        ports = Ports(base.media, base.cti, cdrs, base.replies)  # type: ignore[arg-type]
        links = [TaskSpec(id="esl-fs1", fn=esl_link), TaskSpec(id="cdr-pump", fn=cdrs.pump)]
        async with open_node(**node_options(ports=ports, media_links=links)) as node:
            holder["node"] = node
            for i in range(25):
                await send.send(ChannelCreated(call_id=f"c{i}", at=trio.current_time(), destination="9"))
                await send.send(ChannelHangup(call_id=f"c{i}", at=trio.current_time()))
            await trio.sleep(5)
            assert sum(len(b) for b in written) == 25 and max(len(b) for b in written) <= 10
            assert cdrs.pumped == 25 and node.statistics().calls_created == 25

    run(main)


def test_graceful_shutdown_of_a_busy_node():
    async def main():
        async with trio.open_nursery() as nursery:
            from engine.actors import Node

            node = Node(**node_options())
            await nursery.start(node.run)
            await login(node, "a1", "201")
            for i in range(50):
                node.deliver_nowait(ChannelCreated(call_id=f"c{i}", at=trio.current_time(), destination="100"))
            report = await node.shutdown(deadline_s=3)
            assert report.drained and report.undrained == 0
            assert report.stopped == 50 + 2 + 1  # calls, agents, queue
            stats = node.runtime.statistics()
            assert sum(stats.actors.values()) == 0 and stats.timers == 0

    run(main)


def test_two_agents_one_call_ringing_and_bridge():
    async def main():
        async with open_node(**node_options()) as node:
            await login(node, "a1", "201")
            await login(node, "a2", "202")
            leg = await connected_call(node)
            bridge = [c for c in node.ports.media.items if isinstance(c, MediaBridge)]
            assert [(b.leg, b.other_leg) for b in bridge] == [("a", leg)]
            states = {a: node.runtime.state_of("agent", a).state for a in ("a1", "a2")}
            assert sorted(s.name for s in states.values()) == ["AVAILABLE", "ON_CALL"]

    run(main)


def test_an_agent_on_a_call_that_no_longer_exists_is_freed_by_its_probe():
    # e.g. the call ended on a shard that died and its AgentCallEnded died with it
    from engine.messages import OfferAnswered, ReserveAgent, TimerFired

    async def main():
        async with open_node(**node_options()) as node:
            await login(node, "a1", "1001")
            now = trio.current_time()
            agent_ref = node.ref("agent", "a1")
            agent_ref.tell_nowait(ReserveAgent(agent_id="a1", at=now, offer_id="x-o9", queue_id="sales",
                                               call_id="ghost", wrap_up_s=0.0))
            agent_ref.tell_nowait(OfferAnswered(at=now, offer_id="x-o9", call_id="ghost", agent_id="a1",
                                                queue_id="sales"))
            await trio.sleep(0.1)
            agent = node.state_of("agent", "a1")
            assert agent.state is AgentState.ON_CALL and agent.call_id == "ghost" and "probe" in agent.timers
            agent_ref.tell_nowait(TimerFired(key="probe", at=trio.current_time()))  # the probe is due
            await trio.sleep(0.1)  # far less than probe_timeout_s: the answer came from the runtime
            agent = node.state_of("agent", "a1")
            assert agent.state is AgentState.AVAILABLE and agent.call_id == ""

    run(main)
