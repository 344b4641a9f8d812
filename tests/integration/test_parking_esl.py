"""Parking and pickup end to end (#10 part 4): the engine's node against the FreeSWITCH emulator over
real ESL on 127.0.0.1 (ESL commands sent, switch events, CTI events, the CDR), and the emulator's
valet parking and ``intercept`` seen through a plain ESL link.

Rules: real sockets on port 0, short real time, every wait bounded (``trio.fail_after``/``until``).
"""

from __future__ import annotations

import trio

from adapters.freeswitch.config import EslNodeConfig
from engine.actors.ports import InMemoryCdrs, InMemoryCti
from engine.messages import Park, Pickup
from sim.freeswitch import FreeSwitchEmulator
from tests.support.esl import node_on_emulator, ring_the_destination, until


def run(body, *, timeout: float = 20.0) -> None:
    async def main():
        cdrs, cti = InMemoryCdrs(), InMemoryCti()
        async with trio.open_nursery() as n:
            async with node_on_emulator(n, cti=cti, cdrs=cdrs, router=ring_the_destination,
                                        phones=("1001", "1002", "1005", "3000")) as (emu, node, _):
                with trio.fail_after(timeout):
                    await body(emu, node, cdrs, cti)
            n.cancel_scope.cancel()
    trio.run(main)


async def _talking(emu, cti, caller="2001", ext="1001"):
    """A caller talking to extension ``ext``; returns (caller channel, call id)."""
    ch = await emu.place_inbound_call(caller, ext)
    await until(lambda: ch.peer is not None)
    (created,) = cti.named("CALL_CREATED")
    return ch, created.call_id


def _lines(emu, word):
    return [line for line in emu.command_log if word in line]


def test_park_with_music_then_pickup_by_slot_bridges_the_picker_and_writes_one_cdr() -> None:
    async def body(emu, node, cdrs, cti):
        ch, call_id = await _talking(emu, cti)
        agent_leg = ch.peer
        reply = await node.ask(Park(call_id=call_id, at=trio.current_time(), slot="701", timeout_s=30))
        assert reply.ok and reply.data == {"slot": "701"}
        # ESL: the parker's leg hung up, the caller transferred into the valet parking context
        await until(lambda: emu.valet.get(("callengine", "701")) == ch.uuid)
        assert _lines(emu, f"api uuid_transfer {ch.uuid} park+701 XML callengine_park")
        await until(lambda: agent_leg not in emu.channels or not emu.channels[agent_leg].up)
        assert ch.variables["emulator_music"] == "local_stream://moh"  # the caller hears hold music
        assert [a for a, *_ in emu.valet_log] == ["hold"]
        assert cti.named("CALL_PARKED")[0].data["slot"] == "701"
        reply = await node.ask(Pickup(call_id=call_id, at=trio.current_time(), extension="1005"))
        assert reply.ok and reply.data == {"slot": "701"}
        await until(lambda: ch.peer is not None)
        assert "user/1005" in _lines(emu, f"callengine_leg={ch.peer},")[0]
        assert _lines(emu, "user/1005") and _lines(emu, f"uuid_bridge {ch.uuid} ")
        await until(lambda: [a for a, *_ in emu.valet_log] == ["hold", "exit"])
        assert ("callengine", "701") not in emu.valet and "emulator_music" not in ch.variables
        (picked,) = cti.named("CALL_PICKED_UP")
        assert picked.data == {"extension": "1005", "slot": "701", "kind": "slot"}
        assert not cti.named("CALL_PARK_TIMEOUT")
        await emu.hangup(ch.uuid)
        await until(lambda: len(cdrs.items) == 1)
        (cdr,) = cdrs.items
        assert cdr.disposition == "answered" and cdr.hold_s > 0
        await until(lambda: not emu.channels)
    run(body)


def test_park_timeout_rings_the_parker_back_then_the_fallback_then_hangs_up() -> None:
    async def body(emu, node, cdrs, cti):
        ch, call_id = await _talking(emu, cti)
        emu.set_endpoint("1001", outcome="busy")  # the parker is on another call by now
        emu.set_endpoint("3000", outcome="reject")
        reply = await node.ask(Park(call_id=call_id, at=trio.current_time(), slot="702", timeout_s=0.3,
                                    fallback="3000"))
        assert reply.ok
        await until(lambda: len(cdrs.items) == 1, timeout=10)
        timeouts = [e.data["target"] for e in cti.named("CALL_PARK_TIMEOUT")]
        assert timeouts == ["1001", "3000"]
        dials = [line for line in _lines(emu, "originate ") if "user/" in line]
        # the first ring to 1001 (before parking), one ring back to the parker, one to the fallback
        assert [("user/1001" in d, "user/3000" in d) for d in dials] == [(True, False), (True, False),
                                                                        (False, True)], dials
        (cdr,) = cdrs.items
        assert cdr.disposition == "answered" and cdr.call_id == call_id
        await until(lambda: not emu.channels)
    run(body)


def test_park_timeout_answered_by_the_parker_reconnects() -> None:
    async def body(emu, node, cdrs, cti):
        ch, call_id = await _talking(emu, cti)
        assert (await node.ask(Park(call_id=call_id, at=trio.current_time(), timeout_s=0.2))).ok
        await until(lambda: len(cti.named("CALL_ANSWERED")) == 2)
        assert [e.data["target"] for e in cti.named("CALL_PARK_TIMEOUT")] == ["1001"]
        await until(lambda: ch.peer is not None)
        assert ch.up and not cdrs.items
        assert "user/1001" in _lines(emu, f"callengine_leg={ch.peer},")[0]
        await emu.hangup(ch.uuid)
        await until(lambda: len(cdrs.items) == 1)
    run(body)


def test_directed_pickup_of_a_ringing_extension() -> None:
    async def body(emu, node, cdrs, cti):
        emu.set_endpoint("1001", outcome="no_answer")
        ch = await emu.place_inbound_call("2001", "1001")
        await until(lambda: len(cti.named("CALL_RINGING")) == 1)
        call_id = cti.named("CALL_CREATED")[0].call_id
        reply = await node.ask(Pickup(call_id=call_id, at=trio.current_time(), extension="1002",
                                      kind="directed", target="1001"))
        assert reply.ok
        await until(lambda: ch.peer is not None)
        assert "user/1002" in _lines(emu, f"callengine_leg={ch.peer},")[0]
        assert _lines(emu, f"api uuid_kill {call_id}-1 PICKED_OFF")  # the ringing leg was picked off
        (picked,) = cti.named("CALL_PICKED_UP")
        assert picked.data["kind"] == "directed" and picked.data["picked_from"] == "1001"
        await emu.hangup(ch.uuid)
        await until(lambda: len(cdrs.items) == 1)
        assert cdrs.items[0].disposition == "answered"
    run(body)


def test_emulator_valet_park_and_intercept_over_plain_esl() -> None:
    """What the engine relies on from the emulator's parking and intercept, through a plain ESL link."""
    from adapters.freeswitch.link import EslLink, MediaNode
    from tests.support.esl import Sink

    async def main():
        emu = FreeSwitchEmulator(heartbeat=0.5, answer_delay=0.01, ring_delay=0.002)
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            link = EslLink(EslNodeConfig(name="fs1", port=emu.port), MediaNode("fs1", Sink()), heartbeat_s=0.5)
            await n.start(link.run)
            with trio.fail_after(10):
                await link.wait_up()
                a = await emu.place_inbound_call("2001", "5000")
                assert await link.api(f"uuid_transfer {a.uuid} park+711 XML callengine_park") == "+OK\n"
                await until(lambda: emu.valet.get(("callengine", "711")) == a.uuid)
                assert a.answer_state == "answered" and a.variables["emulator_music"] == "local_stream://moh"
                # a second channel into the same slot is bridged to the parked one (valet retrieval)
                b = await emu.place_inbound_call("1005", "5001")
                assert await link.api(f"uuid_transfer {b.uuid} park+711 XML callengine_park") == "+OK\n"
                await until(lambda: a.peer == b.uuid)
                assert [x for x, *_ in emu.valet_log] == ["hold", "bridge"] and not emu.valet
                # intercept: a ringing leg whose caller is bridged to it is taken by the picker
                emu.register_phone("1001")
                emu.set_endpoint("1001", outcome="no_answer")
                c = await emu.place_inbound_call("2002", "5002")
                emu.queue_app(c.uuid, "bridge", "user/1001")  # the caller's dialplan rings 1001
                await until(lambda: any(x.originator == c.uuid for x in emu.channels.values()))
                (target,) = [u for u, x in emu.channels.items() if x.originator == c.uuid]
                picker = await emu.place_inbound_call("1002", "**1001")
                assert await link.api(f"uuid_transfer {picker.uuid} intercept:{target} inline") == "+OK\n"
                await until(lambda: picker.peer == c.uuid)
                assert emu.channels[target].hangup_cause == "PICKED_OFF" if target in emu.channels else True
                assert emu.intercept_log == [(picker.uuid, target, c.uuid)]
                # an unknown uuid: the picker is left as it was
                lone = await emu.place_inbound_call("1003", "**9")
                assert await link.api(f"uuid_transfer {lone.uuid} intercept:nope inline") == "+OK\n"
                await trio.sleep(0.05)
                assert lone.peer is None and len(emu.intercept_log) == 1
            n.cancel_scope.cancel()

    trio.run(main)


def test_media_intercept_mapped_to_esl_picks_a_ringing_leg_off_in_the_emulator() -> None:
    """MediaIntercept through the mapping, over a plain ESL link: the picker gets the caller."""
    from adapters.freeswitch.link import EslLink, MediaNode
    from adapters.freeswitch.mapping import Target, map_command
    from engine.messages import MediaIntercept
    from tests.support.esl import Sink

    async def main():
        emu = FreeSwitchEmulator(heartbeat=0.5, answer_delay=0.01, ring_delay=0.002)
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            link = EslLink(EslNodeConfig(name="fs1", port=emu.port), MediaNode("fs1", Sink()), heartbeat_s=0.5)
            await n.start(link.run)
            with trio.fail_after(10):
                await link.wait_up()
                emu.register_phone("1001")
                emu.set_endpoint("1001", outcome="no_answer")
                caller = await emu.place_inbound_call("2002", "1001")
                emu.queue_app(caller.uuid, "bridge", "user/1001")
                await until(lambda: any(x.originator == caller.uuid for x in emu.channels.values()))
                (ringing,) = [u for u, x in emu.channels.items() if x.originator == caller.uuid]
                picker = await emu.place_inbound_call("1002", "**1001")
                uuids = {("pick", "a"): picker.uuid, ("target", "t1"): ringing}
                (line,) = map_command(MediaIntercept(call_id="pick", other_call_id="target", other_leg="t1"),
                                      lambda call, leg: Target(uuids[(call, leg)]))
                assert line == f"api uuid_transfer {picker.uuid} intercept:{ringing} inline\n\n".encode()
                assert await link.api(line.decode()[4:].strip()) == "+OK\n"
                await until(lambda: picker.peer == caller.uuid)
                await until(lambda: ringing not in emu.channels or emu.channels[ringing].hangup_cause == "PICKED_OFF")
                assert emu.intercept_log == [(picker.uuid, ringing, caller.uuid)]
            n.cancel_scope.cancel()

    trio.run(main)
