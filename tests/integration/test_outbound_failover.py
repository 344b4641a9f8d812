"""Outbound routing end to end: the engine's node (outbound_router + ledger) against the FreeSWITCH
emulator over real ESL on 127.0.0.1, with two emulated trunks (gateways) scripted per test.

Rules: real sockets on port 0, short real time, every wait bounded (``trio.fail_after``/``until``).
"""

from __future__ import annotations

import pytest
import trio

from adapters.freeswitch.config import EslNodeConfig
from engine.actors.ports import InMemoryCdrs, InMemoryCti
from engine.routing.outbound import OutboundConfig, OutboundRoute, Trunk
from engine.routing.router import outbound_router
from engine.routing.usage import LedgerCti, TrunkLedger
from sim.freeswitch import FreeSwitchEmulator
from tests.support.esl import node_on_emulator, until

CONFIG = OutboundConfig(
    trunks=(Trunk(trunk_id="A", gateway="gw_a", max_concurrent=2),
            Trunk(trunk_id="B", gateway="gw_b", max_concurrent=2)),
    routes=(OutboundRoute(route_id="out", pattern="_0.", priority=10, trunks=("A", "B")),),
)


def run(body, *, timeout: float = 20.0) -> None:
    async def main():
        cdrs, cti, ledger = InMemoryCdrs(), InMemoryCti(), TrunkLedger()
        router = outbound_router({"default": CONFIG}, ledger)
        async with trio.open_nursery() as n:
            async with node_on_emulator(n, cti=LedgerCti(ledger, cti), cdrs=cdrs, router=router) as (emu, node, _):
                with trio.fail_after(timeout):
                    await body(emu, node, cdrs, cti, ledger)
            n.cancel_scope.cancel()
    trio.run(main)


def _originates(emu) -> list[str]:
    return [line for line in emu.command_log if "originate " in line]


@pytest.mark.parametrize("outcome,cause", [("busy", "USER_BUSY"), ("down", "GATEWAY_DOWN"),
                                           ("no_route", "NO_ROUTE_DESTINATION")])
def test_trunk_a_fails_over_to_b_which_answers_and_the_cdr_names_b(outcome, cause) -> None:
    async def body(emu, node, cdrs, cti, ledger):
        emu.set_gateway("gw_a", outcome=outcome)
        emu.set_gateway("gw_b", outcome="answer")
        ch = await emu.place_inbound_call("2001", "0044201234")
        await until(lambda: ch.peer is not None)
        # the ESL originates the engine sent, in order: trunk A, then trunk B
        dials = _originates(emu)
        assert len(dials) == 2, dials
        assert "sofia/gateway/gw_a/0044201234 " in dials[0] and "callengine_trunk_id=A" in dials[0]
        assert "sofia/gateway/gw_b/0044201234 " in dials[1]
        assert emu.gateway_log == [("gw_a", "0044201234"), ("gw_b", "0044201234")]
        assert emu.channels[ch.peer].variables["emulator_gateway"] == "gw_b"
        (fo,) = cti.named("CALL_TRUNK_FAILOVER")
        assert fo.data == {"from_trunk": "A", "to_trunk": "B", "cause": cause}
        assert ledger.usage("default") == {"B": 1}
        await emu.hangup(ch.uuid)
        await until(lambda: len(cdrs.items) == 1)
        (cdr,) = cdrs.items
        assert (cdr.trunk, cdr.disposition, cdr.destination) == ("B", "answered", "0044201234")
        await until(lambda: not emu.channels)
        assert ledger.usage("default") == {}
    run(body)


def test_congestion_then_trunk_limits_then_an_emergency_call_over_the_limit() -> None:
    async def body(emu, node, cdrs, cti, ledger):
        emu.set_gateway("gw_a", outcome="congestion")
        emu.set_gateway("gw_b", outcome="answer")
        # B takes calls up to its limit of 2 (A congested: every call fails over to B)
        chans = []
        for i in range(2):
            chans.append(await emu.place_inbound_call(f"20{i}", "0099887766"))
            await until(lambda c=chans[-1]: c.peer is not None)
        assert ledger.usage("default") == {"B": 2}
        assert len(cti.named("CALL_TRUNK_FAILOVER")) == 2
        # now A is full too (its own limit): the third ordinary call is refused, never dialled
        emu.set_gateway("gw_a", outcome="answer")
        a_calls = [await emu.place_inbound_call(f"21{i}", "0011") for i in range(2)]
        for c in a_calls:
            await until(lambda c=c: c.peer is not None)
        assert ledger.usage("default") == {"A": 2, "B": 2}
        before = len(_originates(emu))
        refused = await emu.place_inbound_call("2099", "0055")
        await until(lambda: any(c.call_id == refused.uuid for c in cdrs.items))
        (cdr,) = [c for c in cdrs.items if c.call_id == refused.uuid]
        assert cdr.hangup_cause == "NORMAL_CIRCUIT_CONGESTION" and cdr.trunk == ""
        assert len(_originates(emu)) == before
        assert emu.gateways["gw_a"].peak <= 2 and emu.gateways["gw_b"].peak <= 2
        # an emergency number is never blocked: dialled on trunk A over its limit
        sos = await emu.place_inbound_call("2098", "112")
        await until(lambda: sos.peer is not None)
        assert "sofia/gateway/gw_a/112 " in _originates(emu)[-1]
        assert ledger.usage("default") == {"A": 3, "B": 2}
        for c in [*chans, *a_calls, sos]:
            await emu.hangup(c.uuid)
        await until(lambda: len(cdrs.items) == 6)
        assert sorted(c.trunk for c in cdrs.items) == ["", "A", "A", "A", "B", "B"]
        assert cdrs.by_call() and set(cdrs.by_call().values()) == {1}
    run(body)


def test_emulated_gateways_answer_refuse_and_count_over_esl() -> None:
    """What the engine relies on from the emulator's trunks, seen through a plain ESL link."""
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
                emu.set_gateway("gw_busy", outcome="busy")
                emu.set_gateway("gw_cong", outcome="congestion")
                emu.set_gateway("gw_noroute", outcome="no_route")
                emu.set_gateway("gw_down", outcome="down")
                emu.set_gateway("gw_two", max_calls=2)
                expect = {"gw_busy": "-ERR USER_BUSY\n", "gw_cong": "-ERR NORMAL_CIRCUIT_CONGESTION\n",
                          "gw_noroute": "-ERR NO_ROUTE_DESTINATION\n", "gw_down": "-ERR GATEWAY_DOWN\n",
                          "gw_unknown": "-ERR INVALID_GATEWAY\n"}
                for gw, reply in expect.items():
                    assert await link.bgapi(f"originate sofia/gateway/{gw}/0044 &park()", timeout=5) == reply
                assert not emu.gateways["gw_down"].peak  # down: no channel at all
                results = [await link.bgapi("originate {origination_caller_id_number=2001}"
                                            f"sofia/gateway/gw_two/00{i} &park()", timeout=5) for i in range(3)]
                assert [r[:3] for r in results] == ["+OK", "+OK", "-ER"]
                assert results[2] == "-ERR NORMAL_CIRCUIT_CONGESTION\n"  # the carrier's own limit
                assert emu.gateway_calls("gw_two") == 2 and emu.gateways["gw_two"].peak == 2
                assert emu.gateways["gw_two"].dialled == [("000", "2001"), ("001", "2001"), ("002", "2001")]
                assert [g for g, _ in emu.gateway_log] == [*expect, "gw_two", "gw_two", "gw_two"]
            n.cancel_scope.cancel()

    trio.run(main)
