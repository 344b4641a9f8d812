"""Several FreeSWITCH nodes: one link each, calls bound to their node, commands routed there,
click-to-call originates on a healthy node (two emulators on 127.0.0.1)."""

from __future__ import annotations

import trio

from adapters.freeswitch.config import EslNodeConfig
from adapters.freeswitch.nodes import MediaLinks
from engine.messages import (
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    MediaAnswer,
    MediaHangup,
    MediaOriginate,
)
from sim.freeswitch import FreeSwitchEmulator
from tests.support.esl import Sink, until


def run(body) -> None:
    async def main():
        fs1, fs2 = (FreeSwitchEmulator(heartbeat=0.2, hostname=h) for h in ("fs1", "fs2"))
        sink = Sink()
        async with trio.open_nursery() as n:
            await n.start(fs1.run)
            await n.start(fs2.run)
            links = MediaLinks([EslNodeConfig(name="fs1", port=fs1.port),
                                EslNodeConfig(name="fs2", port=fs2.port)], sink,
                               heartbeat_s=0.2, backoff_base_s=0.05, backoff_cap_s=0.2)
            await n.start(links.run)
            with trio.fail_after(3):
                await links.wait_all_up()
            await until(lambda: all(node.heartbeats for node in links.nodes.values()))
            with trio.fail_after(20):
                await body(fs1, fs2, links, sink)
            n.cancel_scope.cancel()
    trio.run(main)


def test_calls_are_bound_to_their_node_and_commands_go_there() -> None:
    async def body(fs1, fs2, links, sink):
        c1 = await fs1.place_inbound_call("2001", "5000")
        c2 = await fs2.place_inbound_call("2002", "5000")
        await until(lambda: len(sink.of(ChannelCreated)) == 2)
        assert sink.of(ChannelCreated, call_id=c1.uuid)[0].node == "fs1"
        assert sink.of(ChannelCreated, call_id=c2.uuid)[0].node == "fs2"
        assert links.node_of(c1.uuid) == "fs1" and links.node_of(c2.uuid) == "fs2"
        # commands without a node (as a click-to-call machine sends them) follow the binding
        links.send(MediaAnswer(call_id=c2.uuid))
        await until(lambda: sink.of(ChannelAnswered, call_id=c2.uuid))
        assert c2.answer_state == "answered" and c1.answer_state != "answered"
        links.send(MediaHangup(call_id=c1.uuid, node="fs1", cause="USER_BUSY"))
        await until(lambda: sink.of(ChannelHangup, call_id=c1.uuid))
        assert sink.of(ChannelHangup, call_id=c1.uuid)[0].cause == "USER_BUSY"
        assert c2.uuid in fs2.channels and c1.uuid not in fs1.channels
        assert {h.name: h.healthy for h in links.health()} == {"fs1": True, "fs2": True}
    run(body)


def test_originate_picks_the_healthy_node_when_the_other_is_down() -> None:
    async def body(fs1, fs2, links, sink):
        fs1.register_phone("1000")
        fs2.register_phone("1000")
        # fs1 stops answering: its heartbeats stop, the watchdog takes the link down
        fs1.stall(30)
        await until(lambda: not links.nodes["fs1"].healthy(), timeout=3)
        assert links.pick().name == "fs2"
        for i in range(3):
            links.send(MediaOriginate(call_id=f"ctc-{i}", leg="a", destination="1000"))
        await until(lambda: len(sink.of(ChannelAnswered)) == 3)
        assert {m.node for m in sink.of(ChannelAnswered)} == {"fs2"}
        assert {m.leg for m in sink.of(ChannelAnswered)} == {"a"}
        assert {links.node_of(f"ctc-{i}") for i in range(3)} == {"fs2"}
        assert len(fs2.channels) == 3 and not fs1.channels
        # later commands of those calls follow them to fs2
        links.send(MediaHangup(call_id="ctc-0"))
        await until(lambda: sink.of(ChannelHangup, call_id="ctc-0"))
        with trio.fail_after(2):
            await links.links["fs1"].wait_down()
        assert links.links["fs1"].last_error.startswith("HeartbeatLost")
    run(body)


def test_no_healthy_node_drops_and_counts() -> None:
    async def body(fs1, fs2, links, sink):
        fs1.stall(30)
        fs2.stall(30)
        await until(lambda: links.pick() is None, timeout=3)
        links.send(MediaOriginate(call_id="ctc-x", leg="a", destination="1000"))
        assert links.unroutable == 1 and links.node_of("ctc-x") is None
    run(body)


def test_least_loaded_healthy_node_gets_new_calls() -> None:
    async def body(fs1, fs2, links, sink):
        for fs in (fs1, fs2):
            fs.register_phone("1000")
        c = await fs1.place_inbound_call("2001", "5000")
        await until(lambda: sink.of(ChannelCreated, call_id=c.uuid))
        links.send(MediaOriginate(call_id="ctc-1", leg="a", destination="1000"))
        assert links.node_of("ctc-1") == "fs2"
    run(body)
