"""Admin on PostgreSQL (pgserver, unix socket): an Admin write through the Api's dispatcher lands in
PostgreSQL and reaches running nodes through LISTEN/NOTIFY (ConfigWatcher + NodeConfig) without a
restart; keys are per tenant (migration 0003)."""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
import trio

from adapters.postgres.bridge import open_postgres
from adapters.postgres.config import (
    AgentDef,
    Did,
    NodeConfig,
    PgConfigStore,
    QueueDef,
    Tenant,
    open_config_watcher,
)
from adapters.postgres.migrate import apply_migrations
from api.admin_pg import ConfigAdminStore
from api.auth import Authenticator, Principal, RateLimiter
from api.dispatch import Api
from api.errors import ApiError
from engine.actors import open_node
from tests.support.pg import fresh_dsn

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def run_pg(fn: Any) -> Any:
    async def main() -> Any:
        with trio.fail_after(60):
            async with open_postgres(fresh_dsn("admin")) as pg:
                await pg.run(apply_migrations)
                return await fn(pg)

    return trio.run(main)


async def fetch(pg: Any, sql: str, *args: Any) -> list[Any]:
    async def go(conn: Any) -> Any:
        return await conn.fetch(sql, *args)

    return await pg.run(go)


def admin(tenant: str) -> Principal:
    return Principal(tenant=tenant, subject=f"root-{tenant}", roles=frozenset({"admin"}), key=tenant)


async def until(predicate: Any, what: str, timeout: float = 10) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"not within {timeout} s: {what}")


def test_admin_writes_reach_running_nodes_through_listen_notify():
    """Node A serves the API (Admin on PostgreSQL) and listens; node B only listens (another
    process would have its own store and watcher). A queue created and then changed through
    Admin, and an agent created, show up on both running nodes."""

    async def body(pg: Any) -> None:
        store_a, store_b = PgConfigStore(pg), PgConfigStore(pg)
        async with open_node(name="a", router=lambda ev: None) as node_a, \
                open_node(name="b", router=lambda ev: None) as node_b, \
                open_config_watcher(store_a) as watcher_a, open_config_watcher(store_b) as watcher_b:
            lives = []
            for store, node in ((store_a, node_a), (store_b, node_b)):
                live = NodeConfig(await store.snapshot())
                store.subscribe(live.apply)
                live.start(node)
                lives.append(live)
            api = Api(node_a, Authenticator("s" * 40), store=ConfigAdminStore(store_a),
                      limiter=RateLimiter(1e6, 1e6))

            async def call(method: str, req: dict[str, Any], tenant: str = "acme") -> Any:
                return await api.invoke(admin(tenant), method, json.dumps(req).encode(), "test")

            await call("Admin/CreateQueue", {"id": "sales", "strategy": "ring-all", "ring_timeout_s": 15})
            rows = await fetch(pg, "SELECT tenant, strategy, ring_timeout_s FROM queues")
            assert [tuple(r) for r in rows] == [("acme", "ring-all", 15.0)]
            await until(lambda: node_b.state_of("queue", "sales", "acme") is not None, "queue on node b")

            await call("Admin/UpdateQueue", {"id": "sales", "strategy": "longest-idle", "ring_timeout_s": 7,
                                             "max_length": 3})
            for node in (node_a, node_b):
                await until(lambda node=node: node.state_of("queue", "sales", "acme").config.ring_timeout_s == 7,
                            f"new queue parameters on node {node.name}")
                config = node.state_of("queue", "sales", "acme").config
                assert (config.strategy, config.max_length) == ("longest-idle", 3), node.name
            assert [live.queue_updates_pending for live in lives] == [0, 0]

            await call("Admin/CreateAgent", {"id": "a1", "extension": "201", "queues": ["sales"],
                                             "skills": {"fr": 50}})
            await until(lambda: node_b.state_of("agent", "a1", "acme") is not None, "agent on node b")
            members = await fetch(pg, "SELECT queue_id, agent_id FROM queue_members")
            assert [tuple(r) for r in members] == [("sales", "a1")]
            # Login on node A takes the extension from the record (get_nowait, kept by the adapter)
            await call("Agents/Login", {"agent_id": "a1", "ready": True})
            assert node_a.state_of("agent", "a1", "acme").extension == "201"

            # a row that fails validation is refused, naming it; nothing reaches the nodes
            with pytest.raises(ApiError) as bad:
                await call("Admin/UpdateQueue", {"id": "sales", "strategy": "coin-toss"})
            assert bad.value.code == "INVALID_ARGUMENT"
            assert bad.value.message.startswith("queues[acme/sales].strategy"), bad.value
            rows = await fetch(pg, "SELECT strategy FROM queues")
            assert [r["strategy"] for r in rows] == ["longest-idle"]
            assert watcher_a.received >= 1 and watcher_b.received >= 1

    run_pg(body)


def test_two_tenants_may_use_the_same_queue_agent_and_did_ids():
    async def body(pg: Any) -> Any:
        store = PgConfigStore(pg)
        admin_store = ConfigAdminStore(store)
        from api.store import AgentRecord, QueueRecord

        for tenant, wrap in (("t1", 1.0), ("t2", 2.0)):
            await admin_store.create(tenant, "queue", QueueRecord(id="sales", wrap_up_s=wrap))
            await admin_store.create(tenant, "agent", AgentRecord(id="a1", queues=["sales"]))
            await store.create(Did(tenant=tenant, number="+3210000", destination="queue:sales"))
        assert (await admin_store.get("t2", "queue", "sales")).wrap_up_s == 2.0
        assert (await admin_store.get("t1", "queue", "sales")).wrap_up_s == 1.0
        await admin_store.delete("t2", "agent", "a1")
        assert (await admin_store.get("t1", "agent", "a1")).queues == ["sales"]
        # the same id in the same tenant is still one row
        with pytest.raises(ApiError) as dup:
            await admin_store.create("t1", "queue", QueueRecord(id="sales"))
        assert dup.value.code == "ALREADY_EXISTS"
        # the agent state log keeps both tenants' "a1" changing state in the same instant
        for tenant in ("t1", "t2", "t1"):
            await fetch(pg, "INSERT INTO agent_state_log (tenant, agent_id, at, state) VALUES"
                            " ($1, 'a1', to_timestamp(0), 'AVAILABLE') ON CONFLICT DO NOTHING", tenant)
        logged = await fetch(pg, "SELECT tenant FROM agent_state_log ORDER BY tenant")
        assert [r["tenant"] for r in logged] == ["t1", "t2"]
        snap = await store.snapshot()
        assert {(q.tenant, q.queue_id) for q in snap.of(QueueDef)} == {("t1", "sales"), ("t2", "sales")}
        assert {(a.tenant, a.agent_id) for a in snap.of(AgentDef)} == {("t1", "a1")}
        assert {t.tenant for t in snap.of(Tenant)} == {"t1", "t2"}
        return snap

    snap = run_pg(body)
    from engine.messages import ChannelCreated

    route = NodeConfig(snap).router()
    assert route(ChannelCreated(call_id="x", at=0, destination="+3210000", tenant="t2")).queue_id == "sales"
