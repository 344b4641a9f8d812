"""ConfigStore contract on the in-memory implementation (the PostgreSQL one: tests/integration)."""

from __future__ import annotations

import pytest
import trio

from adapters.postgres.config import (
    AgentDef,
    AgentSkill,
    ConfigChange,
    Did,
    Extension,
    Flow,
    InMemoryConfigStore,
    NodeConfig,
    OutboundRoute,
    QueueDef,
    Skill,
    Tenant,
    TimeCondition,
    TimeRule,
    validate,
)
from adapters.postgres.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)

FLOW = {"id": "main", "start": "h", "nodes": {"h": {"type": "hangup"}}}


def run(fn):
    return trio.run(fn)


def test_crud_errors_and_changes():
    changes: list[ConfigChange] = []

    async def main():
        s = InMemoryConfigStore()
        s.subscribe(changes.append)
        await s.create(Tenant(tenant="acme"))
        await s.create(Extension(tenant="acme", extension="1001"))
        with pytest.raises(AlreadyExists):
            await s.create(Extension(tenant="acme", extension="1001"))
        with pytest.raises(FailedPrecondition):
            await s.create(Extension(tenant="other", extension="1"))
        with pytest.raises(FailedPrecondition):
            await s.create(AgentSkill(tenant="acme", agent_id="a1", skill="fr", level=5))
        await s.create(AgentDef(tenant="acme", agent_id="a1"))
        await s.create(Skill(tenant="acme", skill="fr"))
        await s.create(AgentSkill(tenant="acme", agent_id="a1", skill="fr", level=5))
        assert (await s.put(Flow(tenant="acme", flow_id="main", document=FLOW))).version == 1
        assert (await s.put(Flow(tenant="acme", flow_id="main", document=FLOW))).version == 2
        await s.delete(AgentDef, "acme", "a1")  # cascades to its skills
        with pytest.raises(NotFound):
            await s.get(AgentSkill, "acme", "a1", "fr")
        s.unavailable = True
        with pytest.raises(Unavailable) as e:
            await s.list(Extension)
        assert e.value.code == "UNAVAILABLE"

    run(main)
    assert [(c.table, c.op) for c in changes][-2:] == [("agent_skills", "DELETE"), ("agents", "DELETE")]


@pytest.mark.parametrize("row, field", [
    (Extension(tenant="t", extension="12a"), "extension"),
    (QueueDef(tenant="t", queue_id="q", strategy="nope"), "strategy"),
    (QueueDef(tenant="t", queue_id="q", ring_timeout_s=0), "ring_timeout_s"),
    (AgentSkill(tenant="t", agent_id="a", skill="s", level=0), "level"),
    (Did(tenant="t", number="100", destination="queue:"), "destination"),
    (OutboundRoute(tenant="t", route_id="r", pattern="(", trunks=("x",)), "pattern"),
    (TimeCondition(tenant="t", name="n", timezone="Mars/Base"), "timezone"),
    (TimeCondition(tenant="t", name="n", rules=(TimeRule(start="18:00", end="09:00"),)), "rules[0]"),
    (Flow(tenant="t", flow_id="other", document=FLOW), "document"),
    (Extension(tenant="t", extension="1", name="a\x00"), "name"),
    (Extension(tenant="", extension="1"), "tenant"),
])
def test_invalid_rows_are_refused_naming_row_and_field(row, field):
    with pytest.raises(InvalidArgument) as e:
        validate(row)
    assert e.value.field == field and e.value.row.startswith(type(row).TABLE + "[")


def test_node_config_starts_new_queues_and_routes_dids():
    class FakeNode:
        def __init__(self):
            self.queues, self.agents = [], []

        def add_queue(self, cfg):
            self.queues.append(cfg.queue_id)

        def add_agent(self, agent_id, tenant):
            self.agents.append(agent_id)

    async def main():
        s = InMemoryConfigStore()
        await s.create(Tenant(tenant="t"))
        await s.create(QueueDef(tenant="t", queue_id="q1"))
        live = NodeConfig(await s.snapshot())
        s.subscribe(live.apply)
        node = FakeNode()
        live.start(node)
        await s.create(QueueDef(tenant="t", queue_id="q2"))
        await s.put(QueueDef(tenant="t", queue_id="q2", wrap_up_s=3))
        await s.create(Did(tenant="t", number="555", destination="queue:q2"))
        return node, live

    node, live = run(main)
    from engine.messages import ChannelCreated

    assert node.queues == ["q1", "q2"] and live.queue_updates_pending == 1
    assert live.router()(ChannelCreated(call_id="c", at=0, destination="555", tenant="t")).queue_id == "q2"


def test_a_queue_change_in_the_store_reaches_the_running_queue():
    """NodeConfig pushes UpdateQueueConfig: the live queue's config changes and the next caller is
    dispatched under the new strategy (ring-all rings both agents, longest-idle one)."""
    import trio.testing

    from engine.actors import open_node
    from engine.messages import AgentLogin, ChannelCreated, MediaOriginate

    async def main():
        s = InMemoryConfigStore()
        await s.create(Tenant(tenant="t"))
        await s.create(QueueDef(tenant="t", queue_id="q1", strategy="ring-all"))
        live = NodeConfig(await s.snapshot())
        s.subscribe(live.apply)
        async with open_node(router=lambda ev: None) as node:
            live.start(node)
            for agent, ext in (("a1", "201"), ("a2", "202")):
                node.add_agent(agent, "t")
                reply = await node.ask(AgentLogin(agent_id=agent, at=trio.current_time(), extension=ext,
                                                  queues=("q1",), tenant="t", ready=True), tenant="t")
                assert reply.ok

            async def rung(call_id: str) -> int:
                from engine.messages import RouteToQueue

                node.deliver_nowait(ChannelCreated(call_id=call_id, at=trio.current_time(), destination="1",
                                                   tenant="t"))
                node.runtime._deliver("call", call_id, RouteToQueue(call_id=call_id, at=trio.current_time(),
                                                                   queue_id="q1"))
                await trio.sleep(1)
                return len([c for c in node.ports.media.items
                            if isinstance(c, MediaOriginate) and c.call_id == call_id])

            await s.update(QueueDef(tenant="t", queue_id="q1", strategy="longest-idle", ring_timeout_s=7))
            await trio.sleep(0.1)
            config = node.state_of("queue", "q1", "t").config
            assert (config.strategy, config.ring_timeout_s) == ("longest-idle", 7)
            assert live.queue_updates_sent == 1 and live.queue_updates_pending == 0
            assert await rung("c1") == 1
            return live

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
