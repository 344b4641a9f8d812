"""Tenant-safe actor ids on one node, real removal of agents and queues, and the runtime hooks
(``remote``, ``runtime_factory``)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from engine.actors import Runtime, open_node, route_by_destination
from engine.actors.node import ActorBusy, ActorMissing
from engine.fsm.queue import QueueConfig
from engine.messages import (
    AgentLogin,
    AgentReady,
    ChannelAnswered,
    ChannelCreated,
    MediaOriginate,
    ReserveAgent,
)

TENANTS = {"acme": "2001", "beta": "3001"}  # tenant -> extension of its agent 1001


def run(fn):
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def options(**kw):
    o = dict(queues=[QueueConfig(queue_id="sales", tenant=t, ring_timeout_s=20) for t in TENANTS],
             router=route_by_destination({"100": "sales"}))
    o.update(kw)
    return o


async def login_all(node) -> None:
    for tenant, ext in TENANTS.items():
        node.add_agent("1001", tenant)
        reply = await node.ask(AgentLogin(agent_id="1001", at=trio.current_time(), extension=ext,
                                          queues=("sales",), tenant=tenant, ready=True), tenant=tenant)
        assert reply.ok, reply


async def ring(node, call_id: str, tenant: str) -> MediaOriginate:
    node.deliver_nowait(ChannelCreated(call_id=call_id, at=trio.current_time(), destination="100",
                                       caller_id="+15550001", tenant=tenant))
    await trio.sleep(1)
    [leg] = [c for c in node.ports.media.items if isinstance(c, MediaOriginate) and c.call_id == call_id]
    return leg


def test_two_tenants_share_agent_and_queue_ids_without_colliding():
    async def main():
        async with open_node(**options()) as node:
            await login_all(node)
            rt = node.runtime
            assert sorted(rt.ids("agent")) == ["acme/1001", "beta/1001"]
            assert sorted(rt.ids("queue")) == ["acme/sales", "beta/sales"]
            for tenant in TENANTS:
                assert node.state_of("agent", "1001", tenant).tenant == tenant
                assert node.state_of("queue", "sales", tenant).members.keys() == {"1001"}
            # each tenant's call reaches its own queue and rings its own agent's extension
            for i, (tenant, ext) in enumerate(TENANTS.items()):
                leg = await ring(node, f"c{i}", tenant)
                assert ext in leg.destination, (tenant, leg)
                node.deliver_nowait(ChannelAnswered(call_id=f"c{i}", at=trio.current_time(), leg=leg.leg))
                await trio.sleep(1)
                assert node.state_of("agent", "1001", tenant).call_id == f"c{i}"
            assert node.state_of("queue", "sales", "acme").stats.answered == 1
            assert node.state_of("queue", "sales", "beta").stats.answered == 1
            # an ambiguous plain id is nobody's: answered NOT_FOUND, never the wrong tenant's
            reply = await node.ask(AgentReady(agent_id="1001", at=trio.current_time()))
            assert reply.code == "NOT_FOUND"
            with pytest.raises(ValueError):
                node.add_agent("x", "bad/tenant")

    run(main)


def test_remove_actor_refuses_busy_actors_and_really_removes_idle_ones():
    async def main():
        async with open_node(**options()) as node:
            await login_all(node)
            leg = await ring(node, "c1", "acme")
            # reserved (ringing): refused, typed
            with pytest.raises(ActorBusy) as busy:
                node.remove_actor("agent", "1001", "acme")
            assert busy.value.code == "FAILED_PRECONDITION"
            node.deliver_nowait(ChannelAnswered(call_id="c1", at=trio.current_time(), leg=leg.leg))
            await trio.sleep(1)
            with pytest.raises(ActorBusy):  # on call
                node.remove_actor("agent", "1001", "acme")
            # a second acme caller waits (its only agent is busy): the queue cannot go
            node.deliver_nowait(ChannelCreated(call_id="c2", at=trio.current_time(), destination="100",
                                               tenant="acme"))
            await trio.sleep(1)
            assert len(node.state_of("queue", "sales", "acme").waiting) == 1
            with pytest.raises(ActorBusy):
                node.remove_actor("queue", "sales", "acme")
            # beta's idle (available) agent goes: logged out first, so its queue forgets it
            node.remove_actor("agent", "1001", "beta")
            await trio.sleep(0.1)
            assert not node.runtime.exists("agent", "beta/1001")
            assert node.runtime.exists("agent", "acme/1001")
            assert node.state_of("queue", "sales", "beta").members == {}
            reply = await node.ask(AgentReady(agent_id="1001", at=trio.current_time()), tenant="beta")
            assert reply.code == "NOT_FOUND"
            # and the plain id now names acme's agent alone
            assert node.key("agent", "1001") == "acme/1001"
            node.remove_actor("queue", "sales", "beta")
            assert node.state_of("queue", "sales", "beta") is None
            with pytest.raises(ActorMissing):
                node.remove_actor("queue", "sales", "beta")
            # the id can be used again
            node.add_agent("1001", "beta")
            assert node.state_of("agent", "1001", "beta").state.name == "LOGGED_OUT"

    run(main)


def test_remote_hook_and_runtime_factory():
    async def main():
        seen = []

        def remote(kind, actor_id, message):
            seen.append((kind, actor_id, type(message).__name__))
            return actor_id == "elsewhere"

        made = []

        def factory(**kw):
            made.append(sorted(kw))
            return Runtime(remote=remote, **kw)

        async with open_node(runtime_factory=factory, queues=[QueueConfig(queue_id="q1", tenant="acme")]) as node:
            assert made and "tenant_scoped" in made[0]
            rt = node.runtime
            # an internal send to an absent actor asks ``remote`` first
            rt._deliver("agent", "elsewhere", ReserveAgent(agent_id="elsewhere", at=0.0, call_id="c",
                                                            queue_id="q1", offer_id="o"))
            rt._deliver("agent", "nowhere", ReserveAgent(agent_id="nowhere", at=0.0, call_id="c",
                                                          queue_id="q1", offer_id="o"))
            assert seen == [("agent", "elsewhere", "ReserveAgent"), ("agent", "nowhere", "ReserveAgent")]
            assert [d.reason for d in rt.dead_letters] == ["no_such_actor"]  # only the one remote refused
            assert rt.ids("queue") == ["acme/q1"]

    run(main)
