"""Admin on a ConfigStore (api/admin_pg.py), with the in-memory ConfigStore, through the Api's
dispatcher (the Admin service methods): records <-> rows, typed errors naming the row, the
get_nowait cache, and Admin + NodeConfig on one node (PostgreSQL itself: tests/integration)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from adapters.postgres import config as c
from api.admin_pg import ConfigAdminStore
from api.auth import Authenticator, Principal, RateLimiter
from api.dispatch import Api
from api.errors import ApiError
from engine.actors import open_node

FLOW = {"start": "h", "nodes": {"h": {"type": "hangup"}}}


def principal(tenant: str = "t1", roles: tuple[str, ...] = ("admin",), agent_id: str = "") -> Principal:
    return Principal(tenant=tenant, subject=f"root-{tenant}", roles=frozenset(roles), agent_id=agent_id,
                     key=f"k-{tenant}")


class Harness:
    def __init__(self, api: Api, config: c.InMemoryConfigStore, node: Any) -> None:
        self.api, self.config, self.node = api, config, node

    async def call(self, method: str, body: dict[str, Any], tenant: str = "t1") -> Any:
        return await self.api.invoke(principal(tenant), method, json.dumps(body).encode(), "test")

    async def fails(self, method: str, body: dict[str, Any], tenant: str = "t1") -> ApiError:
        with pytest.raises(ApiError) as e:
            await self.call(method, body, tenant)
        return e.value


def run(fn) -> Any:
    async def main() -> Any:
        with trio.fail_after(20):
            config = c.InMemoryConfigStore()
            store = ConfigAdminStore(config)
            async with open_node(router=lambda ev: None) as node:
                api = Api(node, Authenticator("s" * 40), store=store, limiter=RateLimiter(1e6, 1e6))
                return await fn(Harness(api, config, node))

    return trio.run(main)


def test_extension_crud_maps_to_extension_rows():
    async def body(h: Harness):
        rec = await h.call("Admin/CreateExtension", {"id": "1001", "name": "Alice", "sip_user": "alice"})
        assert (rec.id, rec.name, rec.sip_user) == ("1001", "Alice", "alice")
        row = await h.config.get(c.Extension, "t1", "1001")
        assert (row.name, row.user_id, row.enabled) == ("Alice", "alice", True)
        assert (await h.config.get(c.Tenant, "t1")).tenant == "t1"  # created on the first write
        # a field the record does not carry survives an update
        await h.config.put(c.Extension(tenant="t1", extension="1001", name="Alice", caller_id="+3212"))
        rec = await h.call("Admin/UpdateExtension", {"id": "1001", "name": "Alice B", "voicemail": True})
        row = await h.config.get(c.Extension, "t1", "1001")
        assert (row.name, row.voicemail, row.caller_id) == ("Alice B", True, "+3212")
        assert (await h.call("Admin/GetExtension", {"id": "1001"})).name == "Alice B"
        assert [r.id for r in (await h.call("Admin/ListExtensions", {})).items] == ["1001"]
        assert (await h.call("Admin/DeleteExtension", {"id": "1001"})).id == "1001"
        with pytest.raises(c.NotFound):
            await h.config.get(c.Extension, "t1", "1001")
        assert (await h.fails("Admin/GetExtension", {"id": "1001"})).code == "NOT_FOUND"

    run(body)


def test_queue_crud_starts_the_actor_and_keeps_fields_the_record_lacks():
    async def body(h: Harness):
        rec = await h.call("Admin/CreateQueue", {"id": "sales", "strategy": "round-robin", "wrap_up_s": 5})
        assert rec.strategy == "round-robin"
        assert h.node.state_of("queue", "sales", "t1") is not None
        row = await h.config.get(c.QueueDef, "t1", "sales")
        assert (row.strategy, row.wrap_up_s) == ("round-robin", 5)
        await h.config.put(c.QueueDef(tenant="t1", queue_id="sales", strategy="round-robin", short_abandon_s=9))
        await h.call("Admin/UpdateQueue", {"id": "sales", "strategy": "ring-all", "max_length": 3})
        row = await h.config.get(c.QueueDef, "t1", "sales")
        assert (row.strategy, row.max_length, row.short_abandon_s) == ("ring-all", 3, 9)
        got = await h.call("Admin/GetQueue", {"id": "sales"})
        assert (got.strategy, got.max_length) == ("ring-all", 3)
        assert h.api.store_get_nowait("t1", "queue", "sales").strategy == "ring-all"
        await h.call("Admin/DeleteQueue", {"id": "sales"})
        assert h.node.state_of("queue", "sales", "t1") is None
        assert h.api.store_get_nowait("t1", "queue", "sales") is None
        assert await h.config.list(c.QueueDef, "t1") == []

    run(body)


def test_agent_is_an_agent_row_with_member_and_skill_rows():
    async def body(h: Harness):
        for q in ("sales", "support"):
            await h.call("Admin/CreateQueue", {"id": q})
        rec = await h.call("Admin/CreateAgent", {"id": "a1", "extension": "201", "queues": ["support", "sales"],
                                                 "skills": {"fr": 80, "nl": 20}})
        assert rec.queues == ["sales", "support"] and rec.skills == {"fr": 80, "nl": 20}
        members = await h.config.list(c.QueueMember, "t1")
        assert {(m.queue_id, m.agent_id) for m in members} == {("sales", "a1"), ("support", "a1")}
        assert {s.skill for s in await h.config.list(c.Skill, "t1")} == {"fr", "nl"}
        assert h.node.state_of("agent", "a1", "t1") is not None
        # a penalty set elsewhere survives; the lists are replaced
        await h.config.put(c.QueueMember(tenant="t1", queue_id="sales", agent_id="a1", penalty=4))
        await h.call("Admin/UpdateAgent", {"id": "a1", "name": "Ann", "extension": "202", "queues": ["sales"],
                                           "skills": {"fr": 90, "de": 10}})
        got = await h.call("Admin/GetAgent", {"id": "a1"})
        assert (got.name, got.extension, got.queues, got.skills) == ("Ann", "202", ["sales"], {"de": 10, "fr": 90})
        assert [(m.queue_id, m.penalty) for m in await h.config.list(c.QueueMember, "t1")] == [("sales", 4)]
        assert h.api.store_get_nowait("t1", "agent", "a1") == got
        # Agents.Login finds the configured extension through get_nowait
        reply = await h.call("Agents/Login", {"agent_id": "a1", "ready": True})
        assert reply.agent_id == "a1"
        assert h.node.state_of("agent", "a1", "t1").extension == "202"
        assert [r.id for r in (await h.call("Admin/ListAgents", {})).items] == ["a1"]
        await h.call("Agents/Logout", {"agent_id": "a1"})
        await h.call("Admin/DeleteAgent", {"id": "a1"})
        assert await h.config.list(c.QueueMember, "t1") == [] and await h.config.list(c.AgentSkill, "t1") == []

    run(body)


def test_flow_versions_and_name():
    async def body(h: Harness):
        rec = await h.call("Admin/CreateFlow", {"id": "main", "name": "Main line", "definition": FLOW})
        assert (rec.name, rec.definition) == ("Main line", {**FLOW, "id": "main"})
        await h.call("Admin/UpdateFlow", {"id": "main", "name": "v2", "definition": FLOW})
        assert [f.version for f in await h.config.flow_versions("t1", "main")] == [1, 2]
        got = await h.call("Admin/GetFlow", {"id": "main"})
        assert (got.name, got.definition["start"]) == ("v2", "h")
        await h.call("Admin/DeleteFlow", {"id": "main"})
        assert await h.config.flow_versions("t1", "main") == []

    run(body)


def test_typed_errors_name_the_row():
    async def body(h: Harness):
        await h.call("Admin/CreateQueue", {"id": "sales"})
        e = await h.fails("Admin/CreateQueue", {"id": "sales"})
        assert e.code == "ALREADY_EXISTS" and "queues[t1/sales]" in e.message
        for method, req in (("Admin/GetQueue", {"id": "nope"}), ("Admin/UpdateQueue", {"id": "nope"}),
                            ("Admin/DeleteQueue", {"id": "nope"}), ("Admin/UpdateAgent", {"id": "nope"}),
                            ("Admin/UpdateFlow", {"id": "nope", "definition": FLOW})):
            e = await h.fails(method, req)
            assert e.code == "NOT_FOUND" and "[t1/nope]" in e.message, (method, e)
        e = await h.fails("Admin/CreateQueue", {"id": "q9", "strategy": "coin-toss"})
        assert e.code == "INVALID_ARGUMENT" and e.message.startswith("queues[t1/q9].strategy:"), e
        e = await h.fails("Admin/UpdateQueue", {"id": "sales", "ring_timeout_s": 0})
        assert e.code == "INVALID_ARGUMENT" and e.message.startswith("queues[t1/sales].ring_timeout_s"), e
        e = await h.fails("Admin/CreateExtension", {"id": "abc"})
        assert e.code == "INVALID_ARGUMENT" and e.message.startswith("extensions[t1/abc].extension:"), e
        e = await h.fails("Admin/CreateFlow", {"id": "f9", "definition": {}})
        assert e.code == "INVALID_ARGUMENT" and e.message.startswith("flows[t1/f9].document"), e
        e = await h.fails("Admin/CreateAgent", {"id": "a9", "skills": {"fr": 0}})
        assert e.code == "INVALID_ARGUMENT" and e.message.startswith("agent_skills[t1/a9/fr].level"), e
        # an agent in a queue that does not exist: refused, and the agent row is gone again
        e = await h.fails("Admin/CreateAgent", {"id": "a9", "queues": ["ghost"]})
        assert e.code == "FAILED_PRECONDITION" and "queue_members[t1/ghost/a9]" in e.message, e
        assert await h.config.list(c.AgentDef, "t1") == []
        assert (await h.fails("Admin/GetAgent", {"id": "a9"})).code == "NOT_FOUND"
        # the database is down
        h.config.unavailable = True
        for method, req in (("Admin/CreateQueue", {"id": "q2"}), ("Admin/GetQueue", {"id": "sales"}),
                            ("Admin/ListAgents", {}), ("Admin/UpdateExtension", {"id": "1"})):
            assert (await h.fails(method, req)).code == "UNAVAILABLE", method
        h.config.unavailable = False
        assert (await h.call("Admin/GetQueue", {"id": "sales"})).id == "sales"

    run(body)


def test_two_tenants_same_ids():
    async def body(h: Harness):
        for tenant in ("t1", "t2"):
            await h.call("Admin/CreateQueue", {"id": "sales", "wrap_up_s": 1 if tenant == "t1" else 2}, tenant)
            await h.call("Admin/CreateAgent", {"id": "a1", "queues": ["sales"]}, tenant)
            await h.config.create(c.Did(tenant=tenant, number="555", destination="queue:sales"))
        assert (await h.call("Admin/GetQueue", {"id": "sales"}, "t2")).wrap_up_s == 2
        assert (await h.call("Admin/GetQueue", {"id": "sales"}, "t1")).wrap_up_s == 1
        await h.call("Admin/DeleteAgent", {"id": "a1"}, "t2")
        assert (await h.call("Admin/GetAgent", {"id": "a1"}, "t1")).queues == ["sales"]
        return await h.config.snapshot()

    snap = run(body)
    from engine.messages import ChannelCreated

    live = c.NodeConfig(snap)
    route = live.router()
    # the number is held by two tenants: the call's tenant decides; without one, no guess
    assert route(ChannelCreated(call_id="x", at=0, destination="555", tenant="t2")).queue_id == "sales"
    assert route(ChannelCreated(call_id="x", at=0, destination="555", tenant="default")) is None


def test_changes_made_elsewhere_reach_get_nowait_and_prime_loads_everything():
    async def main():
        config = c.InMemoryConfigStore()
        await config.create(c.Tenant(tenant="t1"))
        await config.create(c.QueueDef(tenant="t1", queue_id="sales"))
        await config.create(c.AgentDef(tenant="t1", agent_id="a1", extension="201"))
        await config.create(c.QueueMember(tenant="t1", queue_id="sales", agent_id="a1"))
        store = ConfigAdminStore(config)
        assert store.get_nowait("t1", "agent", "a1") is None
        await store.prime()
        assert store.get_nowait("t1", "agent", "a1").queues == ["sales"]
        await config.update(c.AgentDef(tenant="t1", agent_id="a1", extension="299"))
        await config.create(c.Skill(tenant="t1", skill="fr"))
        await config.create(c.AgentSkill(tenant="t1", agent_id="a1", skill="fr", level=7))
        await config.delete(c.QueueDef, "t1", "sales")  # cascades to the member row
        rec = store.get_nowait("t1", "agent", "a1")
        assert (rec.extension, rec.queues, rec.skills) == ("299", [], {"fr": 7})
        assert store.get_nowait("t1", "queue", "sales") is None

    trio.run(main)


def test_admin_and_node_config_on_one_node():
    """Actors Admin started before NodeConfig hears of them (PostgreSQL's order: the NOTIFY comes
    after the commit) are adopted, not started twice; an Admin update reaches the running queue
    through NodeConfig (UpdateQueueConfig); a row deleted and re-created elsewhere starts again."""

    async def body(h: Harness):
        await h.call("Admin/CreateQueue", {"id": "sales", "strategy": "ring-all"})
        await h.call("Admin/CreateAgent", {"id": "a1", "queues": ["sales"]})
        live = c.NodeConfig(await h.config.snapshot())
        h.config.subscribe(live.apply)
        live.start(h.node)  # both actors run already
        await h.call("Admin/UpdateQueue", {"id": "sales", "strategy": "longest-idle", "ring_timeout_s": 7})
        with trio.fail_after(5):
            while h.node.state_of("queue", "sales", "t1").config.ring_timeout_s != 7:
                await trio.sleep(0.01)
        assert h.node.state_of("queue", "sales", "t1").config.strategy == "longest-idle"
        await h.call("Admin/DeleteQueue", {"id": "sales"})
        assert h.node.state_of("queue", "sales", "t1") is None
        await h.config.create(c.QueueDef(tenant="t1", queue_id="sales", max_length=2))  # another writer
        assert h.node.state_of("queue", "sales", "t1").config.max_length == 2
        assert live.queue_updates_pending == 0

    run(body)
