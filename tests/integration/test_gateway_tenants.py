"""Two tenants on the Ray path (engine/cluster/gateway.py Rule 8, shard.py Rule 5).

Tenants ``acme`` and ``globex`` both have queue ``q1`` and agent ``a1`` (their phones are
``acme-a1`` and ``globex-a1``). The gateway runs over two real Ray shard hosts, driven like
``callengine run`` drives it (``add_queue``/``add_agent`` as ``NodeConfig`` does, commands through the
``ClusterNode`` facade with the API's ``tenant=``, media through ``put``). A call of each tenant must
ring that tenant's agent only, and every CTI event of a call carries the call's tenant. A shard
host re-announcing its agents to a restarted peer (``resync``) does so in their tenant too.
"""

from __future__ import annotations

import time

import pytest
import trio

ray = pytest.importorskip("ray")

from engine.cluster.fakeswitch import FakeSwitch  # noqa: E402
from engine.cluster.host import HostConfig, ShardHostCore  # noqa: E402
from engine.fsm.queue import QueueConfig  # noqa: E402
from engine.messages import AgentLogin, MediaOriginate  # noqa: E402
from engine.run import EpochClock  # noqa: E402
from tests.support.raygw import feed_switch, make_cluster, make_gateway  # noqa: E402
from tests.support.raygw import until as wait_until  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

TENANTS = ("acme", "globex")


def test_two_tenants_with_the_same_agent_and_queue_ids_stay_apart(tmp_path) -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
             log_to_driver=False)
    cluster = make_cluster(tmp_path, prefix="gt")
    switch = FakeSwitch(talk_s=60.0, ext_to_agent={f"{t}-a1": "a1" for t in TENANTS})
    gw, media, cti, cdrs = make_gateway(cluster, switch, tmp_path, {"100": "q1"})
    node = gw.node
    out: dict = {}

    async def until(cond, timeout: float = 30.0) -> None:
        await wait_until(cond, timeout)

    def agent_state(tenant: str) -> str:
        state = node.state_of("agent", "a1", tenant)
        return state.state.name if state is not None else ""

    async def main() -> None:
        async with trio.open_nursery() as n:
            await n.start(gw.run)
            n.start_soon(feed_switch, gw, switch)
            for t in TENANTS:
                node.add_queue(QueueConfig(queue_id="q1", tenant=t))
                node.add_agent("a1", t)
            for t in TENANTS:
                reply = await node.ask(AgentLogin(agent_id="a1", at=time.time(), extension=f"{t}-a1", queues=("q1",),
                                                  ready=True, tenant=t, request_id=f"login-{t}"),
                                       timeout=10, tenant=t)
                assert reply.ok, (t, reply)
            # both are on the shards, each in its own tenant (the view is refreshed from the shards)
            await until(lambda: all(agent_state(t) == "AVAILABLE" for t in TENANTS)
                        and len(node.runtime.states("agent")) == 2 and len(node.runtime.states("queue")) == 2)
            calls = {}
            for t in TENANTS:
                call_id = calls[t] = switch.new_call("100", tenant=t)
                await until(lambda cid=call_id: cid in switch.bridged)
                await until(lambda t=t: agent_state(t) == "ON_CALL")
            out["originates"] = [c for c in media.commands if type(c) is MediaOriginate]
            for t in TENANTS:
                switch.hangup(calls[t])
            await until(lambda: all(cdrs.by_call().get(c) == 1 for c in calls.values()))
            await until(lambda: all({"CALL_CREATED", "CALL_ANSWERED", "CALL_ENDED"}
                                    <= {e.name for e in cti.items if e.call_id == c} for c in calls.values()))
            await gw.drain(timeout=5)
            out["calls"] = calls
            out["agent_tenants"] = {(e.tenant, e.queue_id) for e in cti.items
                                    if e.agent_id == "a1"}
            n.cancel_scope.cancel()

    try:
        trio.run(main, clock=EpochClock())
    finally:
        cluster.shutdown()
        ray.shutdown()
    calls = out["calls"]
    # each tenant's call rang its own tenant's phone, once
    rung = {c.call_id: c.destination for c in out["originates"]}
    assert rung == {calls[t]: f"{t}-a1" for t in TENANTS}, rung
    # every CTI event of a call is in the call's tenant
    for t in TENANTS:
        tenants = {e.tenant for e in cti.items if e.call_id == calls[t]}
        assert tenants == {t}, (t, tenants)
    assert {tenant for tenant, _ in out["agent_tenants"]} == set(TENANTS)
    assert cdrs.by_call() == {calls[t]: 1 for t in TENANTS}


def test_a_restarted_peer_gets_the_status_of_a_tenants_agents_under_their_tenant_keys() -> None:
    """``ShardHostCore.resync`` (a peer restarted): the agents re-announce themselves to that peer's
    queues in their own tenant (``acme/q1``), not to a default tenant's ``q1``; a waiting caller
    likewise re-queues in its own tenant. No Ray: the host core with a capturing link."""
    from engine.cluster.placement import Directory
    from engine.cluster.wire import Envelope, decode_batch, encode_batch
    from engine.messages import AgentStatus

    d = Directory(shards=("s0", "s1"), entities={"agent/acme/a1": "s1", "queue/acme/q1": "s0", "queue/q1": "s1"})
    sent: list = []
    host = ShardHostCore("s1", HostConfig(directory=d, snapshot_interval_s=0),
                       send=lambda dest, payload: sent.append((dest, payload)))
    try:
        host.add_entities([QueueConfig(queue_id="q1")], [("a1", "acme")])
        host.deliver_batch(encode_batch("ingress", [Envelope("agent", "acme/a1", AgentLogin(
            agent_id="a1", at=time.time(), extension="acme-a1", queues=("q1",), ready=True, tenant="acme"))], 1, 7))

        def to_s0() -> list:
            return [(e.actor_id, type(e.message).__name__) for dest, payload in sent if dest == "s0"
                    for e in decode_batch(payload).items if type(e) is Envelope]

        deadline = time.monotonic() + 5
        while not to_s0() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert to_s0() and all(key == "acme/q1" for key, _ in to_s0()), to_s0()  # the login's own status
        before = len(to_s0())
        assert host.resync("s0") == 1
        deadline = time.monotonic() + 5
        while len(to_s0()) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert to_s0()[before:] == [("acme/q1", AgentStatus.__name__)], to_s0()
        # the default tenant's q1 (here, on s1) heard nothing from acme's agent
        q1 = next(q for q in host.states("queue") if q.queue_id == "q1" and q.config.tenant == "default")
        assert "a1" not in q1.members
    finally:
        host.stop()
