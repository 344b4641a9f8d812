"""The gateway over real Ray shard hosts (engine/cluster/gateway.py), with a fake switch as media.

One local Ray (``address="local"``: never another session's cluster) with two shard hosts. The
gateway is driven like ``callengine run`` drives it: media events in through ``put`` (the ESL
links' sink), commands through the ``ClusterNode`` facade's ``ask`` (the API's path), queues and
agents through ``add_queue``/``add_agent`` (``NodeConfig``'s path); its egress hands media
commands to the fake switch and CTI events / CDRs / replies to in-memory ports.
"""

from __future__ import annotations

import time

import pytest
import trio

ray = pytest.importorskip("ray")

from engine.actors.errors import ActorExists  # noqa: E402
from engine.cluster.fakeswitch import FakeSwitch  # noqa: E402
from engine.cluster.gateway import Gateway, GatewayError  # noqa: E402
from engine.fsm.queue import QueueConfig  # noqa: E402
from engine.messages import AgentLogin, Hangup, MediaOriginate  # noqa: E402
from engine.run import EpochClock  # noqa: E402
from tests.support.raygw import feed_switch, make_cluster, make_gateway, until  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
             log_to_driver=False)
    yield
    ray.shutdown()


def test_gateway_rejects_bad_poll_settings() -> None:
    with pytest.raises(GatewayError):
        Gateway(object(), object(), busy_poll_s=0.0)


def test_gateway_calls_asks_cti_cdrs_over_ray(local_ray, tmp_path) -> None:
    cluster = make_cluster(tmp_path)
    switch = FakeSwitch(talk_s=60.0, ext_to_agent={"x-a1": "a1", "x-a2": "a2"})
    gw, media, cti, cdrs = make_gateway(cluster, switch, tmp_path, {"100": "q1"})
    node = gw.node
    out: dict = {}

    async def main() -> None:
        async with trio.open_nursery() as n:
            await n.start(gw.run)
            n.start_soon(feed_switch, gw, switch)
            node.add_queue(QueueConfig(queue_id="q1"))
            node.add_agent("a1")
            node.add_agent("a2")
            with pytest.raises(ActorExists):
                node.add_agent("a1")
            # the view shows what was just created, before any refresh
            assert node.state_of("agent", "a1") is not None and node.state_of("queue", "q1") is not None
            for a in ("a1", "a2"):
                reply = await node.ask(AgentLogin(agent_id=a, at=time.time(), extension=f"x-{a}", queues=("q1",),
                                                  ready=True, request_id=f"login-{a}"), timeout=10)
                assert reply.ok and reply.request_id == f"login-{a}", reply
            await until(lambda: all(s.state.name == "AVAILABLE" for s in node.runtime.states("agent"))
                        and len(node.runtime.states("agent")) == 2)
            call_id = switch.new_call("100")
            # routed once by the gateway: the call reaches an agent, the switch bridges it
            await until(lambda: call_id in switch.bridged)
            await until(lambda: node.runtime.state_of("call", call_id) is not None
                        and node.runtime.state_of("call", call_id).agent_id != "")
            out["originates"] = [c for c in media.commands if type(c) is MediaOriginate]
            out["mirror"] = dict(gw.mirror.channels)
            reply = await node.ask(Hangup(call_id=call_id, at=time.time()), timeout=10)
            assert reply.ok, reply
            await until(lambda: call_id in switch.ended)
            await until(lambda: cdrs.by_call().get(call_id) == 1)
            await until(lambda: {"CALL_CREATED", "CALL_ENDED"} <= {e.name for e in cti.items if e.call_id == call_id})
            await until(lambda: not gw.mirror.channels)
            out["drained"] = await gw.drain(timeout=5)
            out["stats"] = gw.statistics()
            out["call_id"] = call_id
            n.cancel_scope.cancel()

    try:
        trio.run(main, clock=EpochClock())
    finally:
        cluster.shutdown()
    assert len(out["originates"]) == 1, out["originates"]
    assert cdrs.by_call() == {out["call_id"]: 1}
    # the mirror saw the caller and the agent leg (with its agent) while they talked
    leg = out["originates"][0].leg
    agent = out["originates"][0].variables.get("callengine_agent_id")
    assert agent in ("a1", "a2")
    mirror = {k[1]: (v.agent_id, v.answered, v.bridged_to) for k, v in out["mirror"].items()}
    assert mirror == {"a": ("", True, leg), leg: (agent, True, "a")}, mirror
    assert out["stats"]["calls_created"] == 1 and out["stats"]["asks_waiting"] == 0
