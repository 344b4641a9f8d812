"""Outbound ESL: the emulator's ``socket`` application connects to our server once per call;
connect, myevents, linger, then the engine drives the call over that socket."""

from __future__ import annotations

import trio

from adapters.freeswitch.link import MediaNode
from adapters.freeswitch.outbound import OutboundServer
from engine.actors import Ports, open_node, route_by_destination
from engine.actors.ports import InMemoryCdrs, InMemoryCti, InMemoryReplies
from engine.fsm.queue import QueueConfig
from engine.messages import (
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    ChannelHangupComplete,
    MediaAnswer,
    MediaHangup,
    MediaOriginate,
)
from sim.freeswitch import FreeSwitchEmulator
from tests.support.esl import Sink, until


def test_session_connect_myevents_linger_and_drive_the_call() -> None:
    async def main():
        emu = FreeSwitchEmulator(heartbeat=None)
        sink = Sink()
        node = MediaNode("fs1", sink)
        server = OutboundServer(node)
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            port = await n.start(server.run)
            with trio.fail_after(10):
                ch = await emu.place_inbound_call("2001", "7705", socket=("127.0.0.1", port))
                await until(lambda: sink.of(ChannelCreated, call_id=ch.uuid))
                created = sink.of(ChannelCreated, call_id=ch.uuid)[0]
                assert (created.leg, created.node, created.caller_id) == ("a", "fs1", "2001")
                session = node.sessions[ch.uuid]
                (fs_side,) = [c for c in emu.connections if c.outbound]
                assert fs_side.myevents == ch.uuid and fs_side.linger == -1
                # commands for this call go over its own socket
                assert node.send(MediaAnswer(call_id=ch.uuid))
                await until(lambda: sink.of(ChannelAnswered, call_id=ch.uuid))
                assert session.conn.bytes_out > 0
                # an originate from the session: its failure comes back as BACKGROUND_JOB
                assert node.send(MediaOriginate(call_id=ch.uuid, leg=f"{ch.uuid}-1",
                                                destination="4040"))
                await until(lambda: sink.of(ChannelHangup, leg=f"{ch.uuid}-1"))
                assert sink.of(ChannelHangup, leg=f"{ch.uuid}-1")[0].cause == \
                    "USER_NOT_REGISTERED"
                node.send(MediaHangup(call_id=ch.uuid, cause="NORMAL_CLEARING"))
                await until(lambda: sink.of(ChannelHangup, call_id=ch.uuid, leg="a"))
                # linger: HANGUP_COMPLETE still arrives, then we exit and the socket closes
                await until(lambda: sink.of(ChannelHangupComplete, call_id=ch.uuid))
                await until(lambda: session.closed)
                assert session.linger_notice and not node.sessions
                assert server.sessions_started == 1 and server.session_errors == 0
            n.cancel_scope.cancel()

    trio.run(main)


def test_engine_over_outbound_sockets_one_cdr_per_call() -> None:
    async def main():
        emu = FreeSwitchEmulator(heartbeat=None)
        cdrs = InMemoryCdrs()
        node = MediaNode("fs1")
        ports = Ports(node, InMemoryCti(), cdrs, InMemoryReplies())
        server = OutboundServer(node)
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            port = await n.start(server.run)
            async with open_node(ports=ports, queues=[QueueConfig(queue_id="sales")],
                                 router=route_by_destination({"7705": "sales"})) as engine:
                node.sink = engine
                with trio.fail_after(15):
                    chans = [await emu.place_inbound_call(f"20{i:02d}", "7705",
                                                          socket=("127.0.0.1", port))
                             for i in range(10)]
                    # the engine routes each to the queue and answers it over its socket
                    await until(lambda: all(c.answer_state == "answered" for c in chans))
                    for c in chans:
                        await emu.hangup(c.uuid)
                    await until(lambda: len(cdrs.items) == 10)
                    await until(lambda: not node.sessions)
            counts = cdrs.by_call()
            assert set(counts) == {c.uuid for c in chans} and set(counts.values()) == {1}
            assert {c.disposition for c in cdrs.items} == {"abandoned"}
            assert server.sessions_started == 10 and server.session_errors == 0
            n.cancel_scope.cancel()

    trio.run(main)


def test_garbage_on_one_session_ends_only_that_session() -> None:
    async def main():
        emu = FreeSwitchEmulator(heartbeat=None)
        sink = Sink()
        node = MediaNode("fs1", sink)
        server = OutboundServer(node)
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            port = await n.start(server.run)
            with trio.fail_after(10):
                a = await emu.place_inbound_call("2001", "7705", socket=("127.0.0.1", port))
                await until(lambda: a.uuid in node.sessions)
                emu.send_malformed()  # to every connection: here the one session
                await until(lambda: server.session_errors == 1)
                b = await emu.place_inbound_call("2002", "7705", socket=("127.0.0.1", port))
                await until(lambda: sink.of(ChannelCreated, call_id=b.uuid))
                assert server.sessions_started == 2
            n.cancel_scope.cancel()

    trio.run(main)
