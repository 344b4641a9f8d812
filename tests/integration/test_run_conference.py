"""Conferences through ``callengine run`` (``open_engine``, in process): the room is a
``conference_rooms`` row in embedded PostgreSQL (migration 0011, picked up live), a caller is moved
into it over HTTP with the moderator PIN, the engine's conference connection turns the emulator's
conference::maintenance events into CTI on the node's hub, a kick over HTTP reaches the switch, and
the CDR stored in PostgreSQL names the room. FreeSWITCH is the emulator over real ESL on 127.0.0.1;
every wait is bounded."""

from __future__ import annotations

import pytest
import trio

from api.auth import issue_token
from tests.support.engine import SECRET, run_engine_plainly
from tests.support.engine import until as _until
from tests.support.nats import http_call

TENANT = "default"


@pytest.mark.timeout(120)
def test_run_join_by_pin_cti_kick_and_the_cdr_in_postgres(monkeypatch) -> None:
    run_engine_plainly(monkeypatch, _exercise, phones=("2001",))


async def _exercise(engine, emu) -> None:
    from adapters.postgres.config import ConferenceRoom, Extension

    admin = issue_token(SECRET, tenant=TENANT, sub="root", roles=("admin",))
    store = engine.store
    await store.create(Extension(tenant=TENANT, extension="2001"))
    # the room through the API (admin): the PIN is hashed by the server and never shown again
    agent = issue_token(SECRET, tenant=TENANT, sub="a1", roles=("agent",))
    status, body = await http_call(engine.stack, "Conferences/PutRoom", {"room": "3000", "moderator_pin": "43"}, admin)
    assert (status, body["code"]) == (400, "invalid_argument"), body  # a PIN is 4 to 12 digits
    status, body = await http_call(engine.stack, "Conferences/PutRoom", {"room": "3000", "flags": ["moderator"]}, admin)
    assert (status, body["code"]) == (400, "invalid_argument"), body  # moderator comes from the PIN only
    status, body = await http_call(engine.stack, "Conferences/PutRoom", {"room": "3000"}, agent)
    assert status == 403, body
    status, body = await http_call(engine.stack, "Conferences/PutRoom", {
        "room": "3000", "name": "Board", "moderator_pin": "4321", "max_members": 5}, admin)
    assert status == 200 and body == {"room": "3000", "name": "Board", "moderator_pin": True, "member_pin": False,
                                      "max_members": 5, "wait_for_moderator": False, "flags": []}, body
    row = await store.get(ConferenceRoom, TENANT, "3000")
    assert row.moderator_pin_hash.startswith("pbkdf2_sha256$") and "4321" not in row.moderator_pin_hash
    stored = await engine.pg.run(lambda conn: conn.fetch("SELECT after::text FROM audit_log WHERE tbl = 'conference_rooms'"))
    assert stored and not any("4321" in r[0] for r in stored)  # the row's audit trail holds the hash only
    conferences = engine.stack.api.conferences
    await _until(lambda: (TENANT, "3000") in conferences.configs)  # LISTEN/NOTIFY brought the row
    with trio.fail_after(15):
        await engine.links.wait_all_up()
        await _until(lambda: bool(conferences.source) and engine.stack.api.conferences.send_api is not None)

    async def api(method: str, params: dict) -> tuple[int, dict]:
        return await http_call(engine.stack, method, params, admin)

    caller = await emu.place_inbound_call("5550100", "2001")
    await _until(lambda: caller.peer is not None)
    partner = caller.peer
    with engine.stack.hub.subscribe(TENANT, capacity=10000) as sub:
        status, body = await api("CallControl/JoinConference", {"call_id": caller.uuid, "room": "3000", "pin": "1"})
        assert (status, body["code"]) == (403, "permission_denied"), body
        status, body = await api("CallControl/JoinConference", {"call_id": caller.uuid, "room": "3000",
                                                                "pin": "4321"})
        assert status == 200, body
        await _until(lambda: len(conferences.members(TENANT, "3000")) == 2)
        await _until(lambda: sum(type(e[0]).__name__ == "ConferenceMemberJoined" for e in sub.buffer) == 2)
        status, room = await api("Conferences/Get", {"room": "3000"})
        assert status == 200 and room["running"], room
        assert sorted(m["moderator"] for m in room["members"]) == [False, True], room  # one moderator
        member = next(m["member_id"] for m in room["members"] if not m["moderator"])
        status, body = await api("Conferences/Kick", {"room": "3000", "member_id": member})
        assert status == 200 and body["action"] == "kick", body
        assert any(f"api conference 3000-{TENANT} kick {member}" == c for c in emu.command_log)
        await _until(lambda: any(type(e[0]).__name__ == "ConferenceMemberKicked" for e in sub.buffer))
        await _until(lambda: not caller.up)
        for ch in list(emu.channels.values()):
            if ch.up:
                await emu.hangup(ch.uuid)
        await _until(lambda: any(type(e[0]).__name__ == "ConferenceEnded" for e in sub.buffer))
        names = [type(e[0]).__name__ for e in sub.buffer if type(e[0]).__name__.startswith("Conference")]
    assert names[0] == "ConferenceStarted" and names[-1] == "ConferenceEnded", names
    assert partner not in emu.channels or not emu.channels[partner].up

    async def stored() -> list:
        return await engine.pg.run(lambda conn: conn.fetch(
            "SELECT call_id, conference FROM cdrs WHERE call_id = $1", caller.uuid))

    with trio.fail_after(15):
        while not (rows := await stored()):
            await trio.sleep(0.05)
    assert [tuple(r) for r in rows] == [(caller.uuid, f"3000-{TENANT}")]

    # join by flow: DID 7000 runs a flow whose conference node names room 3000 and sets no PIN
    # itself; run fills the room's PIN hashes in, so the moderator PIN typed on the phone counts
    from adapters.postgres.config import Did, Flow

    await store.create(Flow(tenant=TENANT, flow_id="dialin", document={
        "id": "dialin", "start": "room", "nodes": {"room": {
            "type": "conference", "room": "3000", "prompt": "pin.wav", "timeout_s": 3}}}))
    await store.create(Did(tenant=TENANT, number="7000", destination="flow:dialin"))
    await _until(lambda: engine.config.snapshot.get(Did, TENANT, "7000") is not None)
    with engine.stack.hub.subscribe(TENANT, capacity=10000) as sub:
        dialin = await emu.place_inbound_call("5550101", "7000")
        await _until(lambda: (dialin.application, dialin.application_data) == ("playback", "pin.wav"))
        await emu.send_dtmf(dialin.uuid, "4321#")
        await _until(lambda: len(conferences.members(TENANT, "3000")) == 1)
        (only,) = conferences.members(TENANT, "3000")
        assert only.moderator and only.channel == dialin.uuid
        assert any(f"uuid_transfer {dialin.uuid} conference:3000-{TENANT}@default+flags{{moderator}} inline" in c
                   for c in emu.command_log)
        # the room's capacity holds for dial-ins too (the flow cannot see the live room): with
        # max_members 2, the second caller (a member: no digits, the room has no member PIN) gets
        # in, the third is kicked at once with CONFERENCE_FULL
        status, body = await http_call(engine.stack, "Conferences/PutRoom", {"room": "3000", "max_members": 2}, admin)
        assert status == 200 and body["max_members"] == 2 and body["moderator_pin"], body
        await _until(lambda: conferences.configs[(TENANT, "3000")].max_members == 2)
        callers = []
        for n, number in enumerate(("5550102", "5550103"), start=2):
            ch = await emu.place_inbound_call(number, "7000")
            await _until(lambda ch=ch: (ch.application, ch.application_data) == ("playback", "pin.wav"))
            await emu.send_dtmf(ch.uuid, "#")
            await _until(lambda n=n: conferences.statistics()["members"] >= n or any(
                type(e[0]).__name__ == "ConferenceFull" for e in sub.buffer))
            callers.append(ch)
        second, third = callers
        await _until(lambda: any(type(e[0]).__name__ == "ConferenceFull" for e in sub.buffer))
        full = next(e[0] for e in sub.buffer if type(e[0]).__name__ == "ConferenceFull")
        assert (full.members, full.max_members, full.call_id) == (3, 2, third.uuid), full
        assert any(f"api conference 3000-{TENANT} kick {full.member_id}" == c for c in emu.command_log)
        await _until(lambda: not third.up)
        assert second.up and dialin.up and len(conferences.members(TENANT, "3000")) == 2
        await emu.hangup(second.uuid)
        await emu.hangup(dialin.uuid)
        await _until(lambda: any(type(e[0]).__name__ == "ConferenceEnded" for e in sub.buffer))
    # a PIN left out keeps the stored one; "" removes it; DeleteRoom removes the room everywhere
    status, body = await http_call(engine.stack, "Conferences/PutRoom", {"room": "3000", "name": "Board 2",
                                                                           "member_pin": "1111"}, admin)
    assert status == 200 and (body["moderator_pin"], body["member_pin"], body["name"]) == (True, True, "Board 2")
    status, body = await http_call(engine.stack, "Conferences/PutRoom", {"room": "3000", "moderator_pin": ""}, admin)
    assert status == 200 and (body["moderator_pin"], body["member_pin"]) == (False, True), body
    status, body = await http_call(engine.stack, "Conferences/DeleteRoom", {"room": "3000"}, admin)
    assert status == 200 and body["room"] == "3000"
    await _until(lambda: (TENANT, "3000") not in conferences.configs)
    status, body = await http_call(engine.stack, "Conferences/Get", {"room": "3000"}, admin)
    assert status == 404, body
