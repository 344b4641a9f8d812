"""EslChannelSource against the FreeSWITCH emulator: what a restarted shard host learns from the
switch itself (issue #8), and how it fails.

Rules: real sockets on 127.0.0.1; the source is called from a worker thread, as the shard host
calls it (``trio.to_thread.run_sync``); every wait is bounded.
"""

from __future__ import annotations

import pickle
import socket
import time

import pytest
import trio

from adapters.freeswitch.channels import (
    VARIABLES,
    ChannelSourceError,
    EslChannelSource,
    live_channels,
)
from adapters.freeswitch.config import EslNodeConfig
from adapters.freeswitch.mapping import originate_line
from engine.cluster.recovery import LiveChannel
from engine.messages import MediaOriginate
from sim.freeswitch import FreeSwitchEmulator
from tests.support.esl import until


def _dial(call_id: str, leg: str, ext: str, **ids: str) -> str:
    """The dial string of the originate the engine sends for an agent leg (call.py ``_ring``)."""
    variables = {"callengine_role": "agent", **{f"callengine_{k}": v for k, v in ids.items()}}
    line = originate_line(MediaOriginate(call_id=call_id, leg=leg, node="fs1", destination=ext,
                                         timeout_s=30, caller_id="2001", variables=variables))
    return line.removeprefix("originate ").rsplit(" ", 1)[0]


def _epoch(ch) -> float:
    return float(ch.created_us // 1_000_000)


def test_a_caller_an_answered_agent_leg_and_a_ringing_offer_become_live_channels() -> None:
    async def main() -> None:
        emu = FreeSwitchEmulator(heartbeat=None)
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            caller = await emu.place_inbound_call("2001", "5000", answer=True,
                                                  variables={"domain_name": "acme"})
            await until(lambda: caller.answer_state == "answered")
            cid = caller.uuid
            talking, cause = await emu.originate(
                _dial(cid, f"{cid}-1", "sofia/internal/1001@127.0.0.1", agent_id="a1", queue_id="sales",
                      offer_id="o1"))
            assert talking is not None, cause
            emu.bridge(caller, talking)
            # what FreeSWITCH sets on both legs while they are bridged (capture 02_bridge_two_legs);
            # the emulator only sets bridge_uuid, which FreeSWITCH keeps after an unbridge
            caller.variables["bridge_to"], talking.variables["bridge_to"] = talking.uuid, caller.uuid
            emu.set_endpoint("1002", answer_after=30)
            n.start_soon(emu.originate, _dial(cid, f"{cid}-2", "sofia/internal/1002@127.0.0.1",
                                              agent_id="a2", queue_id="sales", offer_id="o2"))
            await until(lambda: any(c.uuid == f"{cid}-2" and c.call_state == "RINGING"
                                    for c in emu.channels.values()))
            ringing = emu.channels[f"{cid}-2"]
            foreign, _ = await emu.originate("sofia/internal/1003@127.0.0.1")  # not the engine's
            assert foreign is not None

            source = EslChannelSource(EslNodeConfig(name="fs1", port=emu.port))
            got = await trio.to_thread.run_sync(source)

            assert sorted(got, key=lambda c: c.leg) == sorted([
                LiveChannel(call_id=cid, leg="a", node="fs1", answered=True, bridged_to=f"{cid}-1",
                            direction="inbound", caller_id="2001", destination="5000", tenant="acme",
                            created_at=_epoch(caller)),
                LiveChannel(call_id=cid, leg=f"{cid}-1", node="fs1", answered=True, bridged_to="a",
                            direction="outbound", caller_id="2001", destination="1001", tenant="acme",
                            created_at=_epoch(talking), agent_id="a1", queue_id="sales", offer_id="o1"),
                LiveChannel(call_id=cid, leg=f"{cid}-2", node="fs1", answered=False,
                            direction="outbound", caller_id="2001", destination="1002", tenant="acme",
                            created_at=_epoch(ringing), agent_id="a2", queue_id="sales", offer_id="o2"),
            ], key=lambda c: c.leg)
            n.cancel_scope.cancel()

    trio.run(main)


def test_wrong_password_is_a_typed_auth_error_that_does_not_show_the_password() -> None:
    async def main() -> None:
        emu = FreeSwitchEmulator(heartbeat=None, password="right-one")
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            source = EslChannelSource(EslNodeConfig(name="fs1", port=emu.port, password="Wr0ng-secret"))
            with pytest.raises(ChannelSourceError) as info:
                await trio.to_thread.run_sync(source)
            assert info.value.reason == "auth" and info.value.node == "fs1"
            assert "rejected the ESL password" in str(info.value)
            assert "Wr0ng-secret" not in str(info.value) and "Wr0ng-secret" not in repr(info.value)
            n.cancel_scope.cancel()

    trio.run(main)


def test_switch_down_is_a_typed_error_within_the_timeout() -> None:
    # nothing listens: refused at once
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ChannelSourceError) as info:
        EslChannelSource(EslNodeConfig(name="fs1", port=port), timeout_s=2.0)()
    assert info.value.reason == "unreachable" and "fs1" in str(info.value)
    assert time.monotonic() - t0 < 2.0
    # a switch that accepts and never speaks (hung, or a black hole): bounded by timeout_s
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        source = EslChannelSource(EslNodeConfig(name="fs1", port=s.getsockname()[1]), timeout_s=0.5)
        t0 = time.monotonic()
        with pytest.raises(ChannelSourceError) as info:
            source()
        took = time.monotonic() - t0
    assert info.value.reason == "timeout" and "within 0.5 s" in str(info.value)
    assert 0.4 < took < 1.5


def test_pickled_source_still_reaches_the_switch_with_its_password() -> None:
    async def main() -> None:
        emu = FreeSwitchEmulator(heartbeat=None, password="s3cret-pw")
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            caller = await emu.place_inbound_call("2001", "5000")
            source = EslChannelSource(EslNodeConfig(name="fs2", port=emu.port, password="s3cret-pw"),
                                      timeout_s=3.0)
            data = pickle.dumps(source)
            copy = pickle.loads(data)
            assert "s3cret-pw" not in repr(copy) and copy.timeout_s == 3.0
            got = await trio.to_thread.run_sync(copy)
            assert [(c.call_id, c.leg, c.node) for c in got] == [(caller.uuid, "a", "fs2")]
            n.cancel_scope.cancel()

    trio.run(main)
    err = pickle.loads(pickle.dumps(ChannelSourceError("node 'fs1': refused", "fs1", "unreachable")))
    assert (str(err), err.node, err.reason) == ("node 'fs1': refused", "fs1", "unreachable")


def test_a_channel_gone_between_the_two_requests_is_left_out() -> None:
    rows = [{"uuid": "u1", "direction": "inbound", "callstate": "ACTIVE"},
            {"uuid": "u2", "direction": "inbound", "callstate": "RINGING"}]
    answers = ["-ERR No such channel!\n"] * len(VARIABLES) + ["_undef_"] * len(VARIABLES)
    assert [(c.call_id, c.leg) for c in live_channels(rows, answers, "fs1")] == [("u2", "a")]
