"""The public hooks of engine/actors that the cluster's shards are built on (no private parts):
``Runtime(remote=..., remote_reply=...)``, ``Node(runtime_factory=...)``, ``Runtime.take`` /
``arm_timer`` / ``deliver`` / ``perform`` / ``patch`` / ``reply_here`` / ``timers_of``,
``Node.start_actor`` / ``deliver_keyed``."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from engine.actors import Node, Runtime
from engine.fsm.agent import AgentState
from engine.fsm.queue import QueueConfig
from engine.messages import (
    AgentLogin,
    AgentStatus,
    ChannelCreated,
    Hangup,
    Reply,
    ReserveAgent,
    Send,
)


def _run(fn) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_an_actor_taken_out_goes_on_elsewhere_with_its_timers_and_mail():
    async def main():
        async with trio.open_nursery() as nursery:
            a = await nursery.start(Node(name="a", tenant_scoped=()).run)
            b = await nursery.start(Node(name="b", tenant_scoped=()).run)
            a.add_agent("a1")
            a.deliver_nowait(AgentLogin(agent_id="a1", at=trio.current_time(), extension="x1", ready=True))
            a.deliver_nowait(ReserveAgent(agent_id="a1", at=trio.current_time(), offer_id="o1", queue_id="q",
                                          call_id="c1", timeout_s=30.0))
            await trio.sleep(0.01)
            assert a.runtime.state_of("agent", "a1").state is AgentState.RESERVED
            deadline = a.runtime.timers_of()[("agent", "a1")]
            # a message queued, not yet stepped, goes along
            late = AgentStatus(queue_id="q", agent_id="a1", at=0.0, logged_in=True, available=False)
            a.runtime.deliver("agent", "a1", late)
            taken = a.runtime.take("agent", "a1")
            assert taken is not None and taken.timers == tuple(deadline) and taken.mail == (late,)
            assert not a.runtime.exists("agent", "a1") and not a.runtime.recently_stopped("agent", "a1")
            assert a.runtime.take("agent", "a1") is None
            assert a.runtime.statistics().mailbox_depth == 0 and a.runtime.timers_of() == {}
            b.start_actor("agent", "a1", taken.state)
            for key, at in taken.timers:
                assert b.runtime.arm_timer("agent", "a1", key, at)
            assert not b.runtime.arm_timer("agent", "nobody", "offer", 1.0)
            # the offer timer fires on b at its original deadline: the agent is freed there
            await trio.sleep_until(taken.timers[0][1] + 0.01)
            agent = b.runtime.state_of("agent", "a1")
            assert agent.state is not AgentState.RESERVED and agent.missed_offers == 1
            with pytest.raises(ValueError):
                b.start_actor("flow", "f1", None)
            # a call (calls leave tombstones when they end) leaves none when it is taken out
            a.deliver_keyed("call", "c9", ChannelCreated(call_id="c9", at=trio.current_time()))
            assert a.runtime.take("call", "c9") is not None
            assert not a.runtime.recently_stopped("call", "c9")
            nursery.cancel_scope.cancel()

    _run(main)


def test_remote_hooks_take_what_is_not_here_and_reply_here_skips_them():
    taken: list[Any] = []
    replies: list[Reply] = []

    def remote(kind: str, key: str, message: Any) -> bool:
        taken.append((kind, key))
        return key.startswith("far")

    def remote_reply(reply: Reply) -> bool:
        replies.append(reply)
        return reply.request_id.startswith("far")

    def factory(**options: Any) -> Runtime:
        return Runtime(remote=remote, remote_reply=remote_reply, **options)

    async def main():
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(name="n", runtime_factory=factory).run)
            rt = node.runtime
            rt.perform([Send(to="queue", to_id="far-q", message=AgentStatus(
                queue_id="far-q", agent_id="a", at=0.0, logged_in=True, available=True))])
            rt.deliver("queue", "near-q", AgentStatus(queue_id="near-q", agent_id="a", at=0.0, logged_in=True,
                                                      available=True))
            assert taken == [("queue", "far-q"), ("queue", "near-q")]
            assert [d.actor_id for d in rt.dead_letters] == ["near-q"]  # not taken: Rule 6
            rt.reply(Reply(request_id="far-1"))
            rt.reply(Reply(request_id="local-1"))
            rt.reply_here(Reply(request_id="far-2"))  # came back from afar: never sent out again
            assert [r.request_id for r in replies] == ["far-1", "local-1"]
            assert [r.request_id for r in rt.ports.replies.items] == ["local-1", "far-2"]
            nursery.cancel_scope.cancel()

    _run(main)


def test_patch_perform_and_deliver_keyed():
    async def main():
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node(name="n", tenant_scoped=()).run)
            rt = node.runtime
            node.add_queue(QueueConfig(queue_id="q1"))
            node.add_agent("a1")
            agent = rt.state_of("agent", "a1")
            # a repaired state, with the status its queue should hear, performed as the agent
            fixed = agent.__class__(**{**{f: getattr(agent, f) for f in agent.__struct_fields__},
                                        "state": AgentState.NOT_READY})
            status = AgentStatus(queue_id="q1", agent_id="a1", at=0.0, logged_in=True, available=False)
            assert rt.patch("agent", "a1", fixed, [Send(to="queue", to_id="q1", message=status)])
            assert not rt.patch("agent", "nobody", fixed)
            await trio.sleep(0.01)
            assert rt.state_of("agent", "a1").state is AgentState.NOT_READY
            assert "a1" in rt.state_of("queue", "q1").members
            # a ChannelCreated from another node creates the call (the Node's creation rules)
            node.deliver_keyed("call", "c1", ChannelCreated(call_id="c1", at=0.0))
            assert rt.exists("call", "c1") and node.calls_created == 1
            node.deliver_keyed("call", "c2", Hangup(call_id="c2", at=0.0, request_id="r1"))
            await trio.sleep(0.01)
            assert [r.code for r in rt.ports.replies.items] == ["NOT_FOUND"]
            nursery.cancel_scope.cancel()

    _run(main)
