"""Blind and attended transfers end to end: the engine's node against the FreeSWITCH emulator over
real ESL on 127.0.0.1 (ESL commands sent, switch events, CTI events, the CDR).

The caller is bridged to the party it talks to; a transfer must move the caller out of that bridge
BEFORE the party's leg is hung up, or the switch ends the caller together with its bridged partner
(found here: a blind transfer used to end the call with cause BLIND_TRANSFER).

Rules: real sockets on port 0, short real time, every wait bounded (``trio.fail_after``/``until``).
"""

from __future__ import annotations

import trio

from engine.messages import (
    AttendedTransferComplete,
    AttendedTransferStart,
    BlindTransfer,
)
from tests.integration.test_parking_esl import _lines, _talking, run
from tests.support.esl import until


def test_blind_transfer_keeps_the_caller_and_bridges_the_target() -> None:
    async def body(emu, node, cdrs, cti):
        ch, call_id = await _talking(emu, cti)
        first = ch.peer
        reply = await node.ask(BlindTransfer(call_id=call_id, at=trio.current_time(), target="1002"))
        assert reply.ok, reply
        # the caller leaves the bridge first (parked), then the transferring party is hung up
        await until(lambda: bool(_lines(emu, f"uuid_kill {first}")))
        moved = _lines(emu, f"api uuid_transfer {ch.uuid} park inline")
        killed = _lines(emu, f"uuid_kill {first}")
        assert moved and killed, list(emu.command_log)[-12:]
        assert emu.command_log.index(moved[0]) < emu.command_log.index(killed[0])
        await until(lambda: ch.peer is not None and ch.peer != first)
        assert ch.up
        assert "user/1002" in _lines(emu, f"callengine_leg={ch.peer},")[0]
        (moved_ev,) = cti.named("CALL_TRANSFERRED")
        assert moved_ev.data["target"] == "1002" and moved_ev.data["kind"] == "blind"
        assert len(cti.named("CALL_ANSWERED")) == 2
        assert not cdrs.items and not cti.named("CALL_ENDED")
        await emu.hangup(ch.uuid)
        await until(lambda: len(cdrs.items) == 1)
        (cdr,) = cdrs.items
        assert cdr.disposition == "answered" and cdr.call_id == call_id and cdr.transfers == 1
        await until(lambda: not emu.channels)
    run(body)


def test_blind_transfer_unanswered_target_ends_the_call_with_one_cdr() -> None:
    async def body(emu, node, cdrs, cti):
        ch, call_id = await _talking(emu, cti)
        emu.set_endpoint("1002", outcome="busy")
        assert (await node.ask(BlindTransfer(call_id=call_id, at=trio.current_time(), target="1002"))).ok
        await until(lambda: len(cdrs.items) == 1)
        assert len(cti.named("CALL_ENDED")) == 1
        await until(lambda: not emu.channels)
    run(body)


def test_attended_transfer_connects_the_caller_to_the_consulted_party() -> None:
    async def body(emu, node, cdrs, cti):
        ch, call_id = await _talking(emu, cti)
        first = ch.peer
        reply = await node.ask(AttendedTransferStart(call_id=call_id, at=trio.current_time(), target="1002",
                                                     timeout_s=5))
        assert reply.ok
        await until(lambda: bool(cti.named("CALL_CONSULT_ANSWERED")))
        reply = await node.ask(AttendedTransferComplete(call_id=call_id, at=trio.current_time()))
        assert reply.ok, reply
        await until(lambda: ch.peer is not None and ch.peer != first)
        assert ch.up and not cdrs.items and not cti.named("CALL_ENDED")
        assert _lines(emu, f"uuid_kill {first}")
        assert "user/1002" in _lines(emu, f"callengine_leg={ch.peer},")[0]
        await emu.hangup(ch.uuid)
        await until(lambda: len(cdrs.items) == 1)
        assert cdrs.items[0].transfers == 1
        await until(lambda: not emu.channels)
    run(body)
