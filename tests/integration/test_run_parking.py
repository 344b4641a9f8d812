"""Parking and pickup through ``callengine run`` (``open_engine``, in process): the API's Park claims a
slot from the node's lot, Pickup finds its call in the lot (by slot) or in the ringing view
(directed, group), both fed by the machines' CTI events; pickup groups are the extensions'
``pickup_groups`` rows in (embedded) PostgreSQL, written while the node runs; the FreeSWITCH
emulator (real ESL on 127.0.0.1) rings and bridges. Typed refusals for a taken slot, a slot out of
range, an empty slot, nothing ringing, and an agent picking up at someone else's extension.
Every wait is bounded."""

from __future__ import annotations

import pytest
import trio

from api.auth import issue_token
from tests.support.engine import SECRET, run_engine
from tests.support.engine import until as _until
from tests.support.nats import http_call

TENANT = "default"
PHONES = ("1001", "1002", "1005")


def _dialled(emu, leg: str) -> str:
    """The dial string of the originate that created ``leg``."""
    return next((line for line in emu.command_log if f"origination_uuid={leg}," in line), "")


async def _extensions(engine) -> None:
    """1001 and 1002 in pickup group "sales", 1005 in none; written while the node runs (NOTIFY
    brings them to the router and the groups)."""
    from adapters.postgres.config import Extension

    await engine.store.create(Extension(tenant=TENANT, extension="1001", pickup_groups=("sales",)))
    await engine.store.create(Extension(tenant=TENANT, extension="1002", pickup_groups=("sales",)))
    await engine.store.create(Extension(tenant=TENANT, extension="1005"))
    await _until(lambda: engine.config.snapshot.get(Extension, TENANT, "1005") is not None)


@pytest.mark.timeout(120)
def test_park_and_pickups_through_the_api_of_callengine_run(monkeypatch) -> None:
    out: dict = {}

    async def body(engine, emu) -> None:
        await _extensions(engine)
        admin = issue_token(SECRET, tenant=TENANT, sub="root", roles=("admin",))

        async def api(method: str, params: dict, tok: str = admin) -> tuple[int, dict]:
            return await http_call(engine.stack, f"CallControl/{method}", params, tok)

        # nothing rings a member of 1002's group yet
        out["group_none"] = await api("Pickup", {"kind": "group", "extension": "1002"})
        # a caller dials 1001 (a phone that does not answer): group pickup by 1002
        emu.set_endpoint("1001", outcome="no_answer")
        ch = await emu.place_inbound_call("2001", "1001")
        await _until(lambda: any("user/1001" in line for line in emu.command_log))
        await trio.sleep(0.05)
        out["group"] = await api("Pickup", {"kind": "group", "extension": "1002"})
        await _until(lambda: ch.peer is not None and "user/1002" in _dialled(emu, ch.peer))
        out["group_picked"] = ch.up
        call_id = out["group"][1].get("call_id", "")
        # park it: the lowest free slot; listed; a second park into 701 by another call refused
        out["park"] = await api("Park", {"call_id": call_id, "timeout_s": 30})
        await _until(lambda: engine.node.runtime.state_of("call", call_id).state.name == "PARKED")
        out["listed"] = await http_call(engine.stack, "Parking/List", {}, admin)
        out["bad_slot"] = await api("Park", {"call_id": call_id, "slot": "abc"})
        # a second caller rings 1001; 1005 takes it by directed pickup
        ch2 = await emu.place_inbound_call("2002", "1001")
        await _until(lambda: sum("user/1001" in line for line in emu.command_log) == 2)
        await trio.sleep(0.05)
        call2 = ch2.uuid
        out["taken"] = await api("Park", {"call_id": call2, "slot": "701"})
        out["directed"] = await api("Pickup", {"kind": "directed", "target": "1001", "extension": "1005"})
        await _until(lambda: ch2.peer is not None and "user/1005" in _dialled(emu, ch2.peer))
        # an agent at 1005 may pick up only at its own extension
        status, body = await http_call(engine.stack, "Admin/CreateAgent", {"id": "a1", "extension": "1005"},
                                       admin)
        assert status == 200, body
        agent = issue_token(SECRET, tenant=TENANT, sub="a1", roles=("agent",), agent_id="a1")
        out["agent_other_ext"] = await api("Pickup", {"slot": "701", "extension": "1002"}, agent)
        out["empty_slot"] = await api("Pickup", {"slot": "702"}, agent)
        # the agent picks the parked call up by slot at its own extension (the default)
        out["slot"] = await api("Pickup", {"slot": "701"}, agent)
        await _until(lambda: ch.peer is not None and "user/1005" in _dialled(emu, ch.peer), 10)
        out["listed_after"] = await http_call(engine.stack, "Parking/List", {}, admin)
        await emu.hangup(ch.uuid)
        await emu.hangup(ch2.uuid)
        await _until(lambda: not emu.channels, 10)

    run_engine(monkeypatch, body, phones=PHONES)
    status, body = out["group_none"]
    assert status == 404 and body["code"] == "not_found", body
    status, body = out["group"]
    assert status == 200 and body["call_id"], body
    assert out["group_picked"]
    status, body = out["park"]
    assert status == 200 and body["data"] == {"slot": "701"}, body
    assert out["listed"] == (200, {"items": [{"slot": "701", "call_id": body["call_id"]}]}), out["listed"]
    status, body = out["bad_slot"]
    assert status == 400 and body["code"] == "invalid_argument", body
    status, body = out["taken"]
    assert status == 409 and body["code"] == "already_exists", body
    status, body = out["directed"]
    assert status == 200, body
    status, body = out["agent_other_ext"]
    assert status == 403 and body["code"] == "permission_denied", body
    status, body = out["empty_slot"]
    assert status == 404 and "702" in body["message"], body
    status, body = out["slot"]
    assert status == 200 and body["data"] == {"slot": "701"}, body
    assert out["listed_after"] == (200, {"items": []}), out["listed_after"]


@pytest.mark.parametrize("in_process", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["in_process", "ray"])
@pytest.mark.timeout(180)
def test_feature_code_pickups_from_a_phone(monkeypatch, in_process: bool) -> None:
    """A phone dials ``**1001`` (directed), ``*8`` (group) or a park slot: its own channel becomes the
    picked-up call's answered party (bridged to the caller; the feature call ends with one CDR and
    does not hang the phone up). Nothing to pick up: the phone is hung up. An outside caller
    dialling a slot number picks nothing up."""
    if not in_process:
        pytest.importorskip("ray")
    out: dict = {}

    async def body(engine, emu) -> None:
        await _extensions(engine)
        admin = issue_token(SECRET, tenant=TENANT, sub="root", roles=("admin",))
        emu.set_endpoint("1001", outcome="no_answer")

        def state_of(call_id: str) -> str:
            c = engine.node.runtime.state_of("call", call_id)
            return c.state.name if c is not None else "GONE"

        # directed: 2001 rings 1001; phone 1005 dials **1001
        caller = await emu.place_inbound_call("2001", "1001")
        await _until(lambda: any("user/1001" in line for line in emu.command_log))
        await trio.sleep(0.05)
        picker = await emu.place_inbound_call("1005", "**1001")
        await _until(lambda: caller.peer == picker.uuid)
        await _until(lambda: state_of(caller.uuid) == "ACTIVE")  # on Ray: the gateway's view
        out["directed"] = (caller.up, picker.up, state_of(caller.uuid), picker.variables.get(
            "callengine_call_id"), picker.answered_us > 0)
        await _until(lambda: state_of(picker.uuid) == "GONE")
        # the feature call's CDR (answered, its own), the caller's call goes on
        await trio.sleep(0.1)
        out["directed_after"] = (caller.up, picker.up, caller.peer == picker.uuid)
        # the picker hangs up: the caller's call ends with the conversation
        await emu.hangup(picker.uuid)
        await _until(lambda: state_of(caller.uuid) == "GONE")
        await _until(lambda: not emu.channels, 10)

        # group: 2002 rings 1001; phone 1002 (same group) dials *8
        caller = await emu.place_inbound_call("2002", "1001")
        await _until(lambda: sum("user/1001" in line for line in emu.command_log) == 2)
        await trio.sleep(0.05)
        picker = await emu.place_inbound_call("1002", "*8")
        await _until(lambda: caller.peer == picker.uuid)
        out["group"] = caller.up and picker.up
        # nothing ringing the group any more: 1005 (no group) dialling *8 is hung up
        nobody = await emu.place_inbound_call("1005", "*8")
        await _until(lambda: not nobody.up)
        out["nothing"] = nobody.hangup_cause
        await emu.hangup(caller.uuid)
        await _until(lambda: not emu.channels, 10)

        # slot: a call parked in 701 by the API; an outside caller dialling 701 gets nothing,
        # phone 1002 dialling 701 takes it
        emu.set_endpoint("1001", outcome="answer")
        caller = await emu.place_inbound_call("2003", "1001")
        await _until(lambda: state_of(caller.uuid) == "ACTIVE")
        status, body = await http_call(engine.stack, "CallControl/Park", {"call_id": caller.uuid}, admin)
        assert status == 200 and body["data"] == {"slot": "701"}, body
        await _until(lambda: state_of(caller.uuid) == "PARKED")
        outsider = await emu.place_inbound_call("5550100", "701")  # no route: waits, then hangs up
        await trio.sleep(0.3)
        out["outsider"] = (state_of(caller.uuid), caller.peer == outsider.uuid)
        await emu.hangup(outsider.uuid)
        picker = await emu.place_inbound_call("1002", "701")
        await _until(lambda: caller.peer == picker.uuid)
        await _until(lambda: state_of(caller.uuid) == "ACTIVE")
        out["slot"] = (state_of(caller.uuid), caller.up, picker.up)
        status, body = await http_call(engine.stack, "Parking/List", {}, admin)
        out["listed_after"] = (status, body)
        await emu.hangup(caller.uuid)
        await _until(lambda: not emu.channels, 10)
        # CDRs in PostgreSQL: each call exactly one
        rows: list = []

        async def cdr_rows() -> None:
            rows[:] = await engine.pg.run(lambda conn: conn.fetch(
                "SELECT call_id, destination, disposition, started_at, hangup_cause FROM cdrs"))
        with trio.fail_after(15):
            while len(rows) < 8:  # every call, the last one included
                await engine.cdr_writer.flush()
                await cdr_rows()
                await trio.sleep(0.05)
        out["cdrs"] = sorted((r["destination"], r["disposition"]) for r in rows)
        out["cdr_ids"] = [r["call_id"] for r in rows]
        out["cdr_rows"] = sorted((r["call_id"][:8], r["destination"], r["disposition"], str(r["started_at"]),
                                  r["hangup_cause"]) for r in rows)

    run_engine(monkeypatch, body, in_process=in_process, phones=PHONES)
    up, picker_up, state, var, answered = out["directed"]
    assert up and picker_up and state == "ACTIVE" and answered, out["directed"]
    assert var and var != "", var  # the picker's channel now names the caller's call
    assert out["directed_after"] == (True, True, True)
    assert out["group"]
    assert out["nothing"] == "NO_ROUTE_DESTINATION", out["nothing"]
    assert out["outsider"] == ("PARKED", False), out["outsider"]
    assert out["slot"] == ("ACTIVE", True, True), out["slot"]
    assert out["listed_after"] == (200, {"items": []}), out["listed_after"]
    assert len(out["cdr_ids"]) == len(set(out["cdr_ids"])) == 8, " | ".join(map(str, out["cdr_rows"]))
    assert out["cdrs"] == sorted([("1001", "answered"), ("**1001", "answered"), ("1001", "answered"),
                                  ("*8", "answered"), ("*8", "failed"), ("1001", "answered"),
                                  ("701", "abandoned"), ("701", "answered")]), out["cdrs"]
