"""Loose ends of the FreeSWITCH adapter, end to end against the emulator on 127.0.0.1:

* the emulator honours ``origination_uuid`` (as FreeSWITCH does), and the adapter still copes with
  a switch that ignores it (it learns the leg's UUID from CHANNEL_CREATE);
* a pending originate whose result was lost with the connection gets an age limit, after which
  reconcile / the link's sweep end the call;
* the events the engine does not use are not rendered by the emulator, nor delivered.

Rules: real sockets on loopback port 0, short real time, every wait bounded by ``fail_after``,
every polling loop bounded in count.
"""

from __future__ import annotations

import pytest
import trio

from adapters.freeswitch.config import EslNodeConfig
from adapters.freeswitch.link import EslLink, MediaNode
from engine.messages import (
    ChannelAnswered,
    ChannelBridged,
    ChannelCreated,
    ChannelHangup,
    MediaBridge,
    MediaOriginate,
)
from sim.freeswitch import FreeSwitchEmulator
from tests.support.esl import MaxRng, Sink, until


def run(body, *, emu_kw=None, link_kw=None, timeout: float = 20.0) -> None:
    async def main():
        emu = FreeSwitchEmulator(**({"heartbeat": 0.2, "answer_delay": 0.02} | (emu_kw or {})))
        sink = Sink()
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            kw = {"heartbeat_s": 0.2, "backoff_base_s": 0.05, "backoff_cap_s": 0.2} | (link_kw or {})
            node = MediaNode("fs1", sink)
            link = EslLink(EslNodeConfig(name="fs1", port=emu.port), node, **kw)
            await n.start(link.run)
            with trio.fail_after(timeout):
                await link.wait_up()
                await body(emu, link, node, sink)
            n.cancel_scope.cancel()
    trio.run(main)


# ------------------------------------------------------------------------------ origination_uuid

@pytest.mark.parametrize("honour", [True, False], ids=["fs-honours", "switch-ignores"])
def test_agent_leg_uuid_with_and_without_origination_uuid(honour: bool) -> None:
    async def body(emu, link, node, sink):
        emu.register_phone("1000")
        caller = await emu.place_inbound_call("2001", "5000")
        await sink.wait_for(ChannelCreated, call_id=caller.uuid)
        leg = "b-0001"
        assert node.send(MediaOriginate(call_id=caller.uuid, leg=leg, destination="1000",
                                        timeout_s=5))
        created = await sink.wait_for(ChannelCreated, call_id=caller.uuid, leg=leg)
        assert created.direction == "outbound"
        await sink.wait_for(ChannelAnswered, call_id=caller.uuid, leg=leg)
        (agent_ch,) = [c for c in emu.channels.values() if c.direction == "outbound"]
        if honour:
            assert agent_ch.uuid == leg  # origination_uuid became the channel's UUID
        else:
            assert agent_ch.uuid != leg
        # either way the adapter resolves the leg to the real channel (learned from CREATE)
        assert node.table.resolve(caller.uuid, leg).uuid == agent_ch.uuid
        assert node.send(MediaBridge(call_id=caller.uuid, leg="a", other_leg=leg))
        await sink.wait_for(ChannelBridged, call_id=caller.uuid)
        await until(lambda: caller.peer == agent_ch.uuid)
    run(body, emu_kw={"honour_origination_uuid": honour})


def test_emulator_refuses_an_origination_uuid_in_use() -> None:
    async def body(emu, link, node, sink):
        emu.register_phone("1000")
        caller = await emu.place_inbound_call("2001", "5000")
        out = await link.bgapi(f"originate {{origination_uuid={caller.uuid}}}user/1000 &park()",
                               timeout=5)
        assert out.startswith("-ERR ")
        assert len(emu.channels) == 1
    run(body)


# ------------------------------------------------------------------------------ originate age limit

def _lost_originate(sink_live: list[str], *, factor: float | None, expect_end: bool) -> None:
    """An originate is written; FreeSWITCH fails it at once, but its BACKGROUND_JOB (and the
    command reply) are lost with the connection, which the emulator then drops."""
    async def body(emu, link, node, sink):
        if factor is not None:
            node.pending_originate_factor = factor
        sink_live.append("click-1")  # the engine believes this call is live on fs1
        emu.stall(0.3)  # everything FS writes from now on waits... and is lost by the drop
        assert node.send(MediaOriginate(call_id="click-1", leg="a", destination="4040",
                                        timeout_s=1))
        await until(lambda: len(node.jobs) == 1)
        await trio.sleep(0.1)  # FS ran the originate: -ERR USER_NOT_REGISTERED, queued
        assert emu.drop_connections() == 1
        await until(lambda: link.reconnects == 1 and link.up)
        # right after the reconnect the originate is still within its age limit: nothing ends
        await trio.sleep(0.3)
        assert not sink.of(ChannelHangup, call_id="click-1")
        if expect_end:
            hung = await sink.wait_for(ChannelHangup, timeout=6, call_id="click-1", leg="a")
            assert hung.cause == "LOSE_RACE"
            assert len(sink.of(ChannelHangup, call_id="click-1")) == 1
            assert not node.jobs and node.jobs_expired == 1
        else:
            await trio.sleep(3.0)
            assert not sink.of(ChannelHangup, call_id="click-1")
            assert node.jobs  # still "in flight", forever
    run(body, link_kw={"rng": MaxRng(), "backoff_base_s": 0.1, "backoff_cap_s": 0.1,
                       "live_calls": lambda name: list(sink_live), "job_sweep_s": 0.1,
                       "heartbeat_s": 1.0},
        emu_kw={"heartbeat": 0.3})


def test_lost_originate_result_is_given_up_after_its_age_limit() -> None:
    _lost_originate([], factor=None, expect_end=True)  # default: 2 x timeout_s = 2 s


def test_without_an_age_limit_the_lost_originate_shields_the_call_forever() -> None:
    # the behaviour the age limit fixes (a huge factor = no limit within the test)
    _lost_originate([], factor=1e6, expect_end=False)


def test_reconcile_itself_ends_the_call_once_the_originate_is_overdue() -> None:
    """Overdue at the moment of a reconnect: reconcile (not the sweep) ends the call."""
    live: list[str] = []

    async def body(emu, link, node, sink):
        live.append("click-2")
        emu.stall(0.2)
        assert node.send(MediaOriginate(call_id="click-2", leg="a", destination="4040",
                                        timeout_s=1))
        await trio.sleep(0.1)
        node.job_deadlines = {j: 0.0 for j in node.job_deadlines}  # overdue already
        before = link.reconciled_hangups
        emu.drop_connections()
        await until(lambda: link.reconnects == 1 and link.up)
        hung = await sink.wait_for(ChannelHangup, call_id="click-2")
        assert hung.leg == "a" and link.reconciled_hangups == before + 1
    run(body, link_kw={"rng": MaxRng(), "backoff_base_s": 0.1, "backoff_cap_s": 0.1,
                       "live_calls": lambda name: list(live), "job_sweep_s": 60.0,
                       "heartbeat_s": 1.0},
        emu_kw={"heartbeat": 0.3})


# ------------------------------------------------------------------------------ device state on login

def test_registry_device_state_on_login_and_bridge_mapping() -> None:
    from adapters.freeswitch.mapping import DeviceEvent
    from adapters.freeswitch.presence import DeviceRegistry, PresenceBridge

    delivered: list = []

    class FakeNode:
        def deliver_nowait(self, m) -> None:
            delivered.append(m)

    reg = DeviceRegistry({"2000": "old-agent"}.get)
    bridge = PresenceBridge(reg, FakeNode())
    st = bridge.on_login("alice", "1000", 1.0)
    assert (st.agent_id, st.registered, st.at) == ("alice", False, 1.0) and delivered == [st]
    out = reg.apply(DeviceEvent(extension="1000", registered=True, at=2.0, contact="sip:x",
                                registration_id="c1"))
    assert [(m.agent_id, m.registered) for m in out] == [("alice", True)]
    assert reg.device_state("alice", "1000", 3.0).registered
    assert bridge.agent_for("2000") == "old-agent"  # the registry's own lookup still answers
    bridge.on_logout("alice")
    assert reg.apply(DeviceEvent(extension="1000", registered=False, at=4.0,
                                 registration_id="c1")) == []


def test_unregistered_agent_is_never_rung_until_its_phone_registers() -> None:
    """Engine end to end: the agent logs in through the PresenceBridge with its phone NOT
    registered on the emulator; a call waits in the queue and no originate is sent. The phone
    registers: the next call is offered to the agent and bridged to its extension."""
    from adapters.freeswitch.nodes import MediaLinks, engine_live_calls
    from adapters.freeswitch.presence import DeviceRegistry, PresenceBridge
    from engine.actors import Ports, TaskSpec, open_node, route_by_destination
    from engine.actors.ports import InMemoryCdrs, InMemoryCti, InMemoryReplies
    from engine.fsm.queue import QueueConfig
    from engine.messages import AgentLogin

    async def main():
        emu = FreeSwitchEmulator(heartbeat=0.5, answer_delay=0.01)
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            registry = DeviceRegistry()
            links = MediaLinks([EslNodeConfig(name="fs1", port=emu.port)], registry=registry,
                               heartbeat_s=0.5)
            originates: list = []
            orig_send = links.send

            def send(cmd) -> None:
                if isinstance(cmd, MediaOriginate):
                    originates.append(cmd)
                orig_send(cmd)

            links.send = send  # type: ignore[method-assign]
            ports = Ports(links, InMemoryCti(), InMemoryCdrs(), InMemoryReplies())
            async with open_node(ports=ports, queues=[QueueConfig(queue_id="sales")],
                                 agents=["alice"], router=route_by_destination({"5000": "sales"}),
                                 media_links=[TaskSpec("esl", links.run)]) as node:
                links.attach(node, engine_live_calls(node, links))
                with trio.fail_after(5):
                    await links.wait_all_up()
                bridge = PresenceBridge(registry, node)
                reply = await bridge.login(AgentLogin(agent_id="alice", at=trio.current_time(),
                                                      extension="1000", queues=("sales",),
                                                      ready=True))
                assert reply.ok
                await until(lambda: not node.runtime.state_of("agent", "alice").phone_registered)
                first = await emu.place_inbound_call("2001", "5000")
                await until(lambda: first.answer_state == "answered")  # the engine took it
                await trio.sleep(0.5)
                assert originates == [] and first.peer is None  # never rung
                await emu.hangup(first.uuid)
                emu.register_phone("1000")
                await until(lambda: node.runtime.state_of("agent", "alice").phone_registered)
                second = await emu.place_inbound_call("2002", "5000")
                await until(lambda: second.peer is not None, timeout=5)
                assert emu.channels[second.peer].destination == "1000"
                assert [o.call_id for o in originates] == [second.uuid]
            n.cancel_scope.cancel()

    async def bounded():
        with trio.fail_after(30):
            await main()

    trio.run(bounded)
