"""Conferences end to end (#10 part 3): the engine's node and the conference service against the
FreeSWITCH emulator over real ESL on 127.0.0.1: the ESL commands sent (uuid_transfer into the
room with the member flags, ``conference <room> mute|unmute|kick <id>``), the conference::maintenance
events turned into typed CTI, the moderator PIN, the switch's ``-ERR`` as a failed reply, and one
CDR per call in a conference.

Rules: real sockets on port 0, short real time, every wait bounded (``trio.fail_after``/``until``).
"""

from __future__ import annotations

import trio

from adapters.freeswitch.config import EslNodeConfig
from adapters.freeswitch.link import open_authenticated
from api.events import ConferenceMemberJoined, ConferenceMemberLeft, to_wire
from engine.actors.ports import InMemoryCdrs, InMemoryCti
from engine.conference import ConferenceEsl, ConferenceService, RoomConfig, hash_pin, switch_room
from engine.messages import JoinConference
from sim.freeswitch import FreeSwitchEmulator
from tests.support.esl import node_on_emulator, ring_the_destination, until

ROOM = switch_room("default", "3000")
SALT = b"0123456789abcdef"


def run(body, *, timeout: float = 20.0) -> None:
    async def main():
        cdrs, cti = InMemoryCdrs(), InMemoryCti()
        async with trio.open_nursery() as n:
            async with node_on_emulator(n, cti=cti, cdrs=cdrs, router=ring_the_destination,
                                        phones=("1001", "1002", "1003")) as (emu, node, links):

                def call_of(uuid: str) -> str:
                    info = links.nodes["fs1"].table.by_uuid.get(uuid)
                    return info.call_id if info is not None else ""

                service = ConferenceService(cti.publish, [RoomConfig(
                    tenant="default", number="3000", moderator_pin_hash=hash_pin("4321", SALT),
                    member_pin_hash=hash_pin("1111", SALT))], call_of=call_of)
                esl = ConferenceEsl([link.config for link in links.links.values()], service)
                await n.start(esl.run)
                with trio.fail_after(5):
                    await esl.wait_all_up()
                with trio.fail_after(timeout):
                    if body.__code__.co_argcount == 6:
                        from api.auth import Authenticator
                        from api.dispatch import Api

                        api = Api(node, Authenticator("s" * 40))
                        api.conferences = service
                        await body(emu, node, cdrs, cti, service, api)
                    else:
                        await body(emu, node, cdrs, cti, service)
            n.cancel_scope.cancel()
    trio.run(main)


async def _talking(emu, cti, caller, ext):
    before = len(cti.named("CALL_CREATED"))
    ch = await emu.place_inbound_call(caller, ext)
    await until(lambda: ch.peer is not None)
    created = cti.named("CALL_CREATED")[before]
    return ch, created.call_id


async def _join(node, service, call_id, pin=""):
    d = service.join_check("default", "3000", pin)
    reply = await node.ask(JoinConference(call_id=call_id, at=trio.current_time(), room=d.room,
                                          flags=d.flags))
    assert reply.ok, reply
    return d


def _lines(emu, word):
    return [line for line in emu.command_log if word in line]


def test_join_mute_kick_over_esl_becomes_cti_and_one_cdr_per_call() -> None:
    async def body(emu, node, cdrs, cti, service):
        a, call_a = await _talking(emu, cti, "2001", "1001")
        b, call_b = await _talking(emu, cti, "2002", "1002")
        d = await _join(node, service, call_a, pin="4321")  # the moderator PIN
        assert d.moderator and d.flags == ("moderator",)
        await until(lambda: _lines(emu, f"api uuid_transfer {a.uuid} conference:{ROOM}@default+flags{{moderator}} inline"))
        await _join(node, service, call_b, pin="1111")
        await until(lambda: _lines(emu, f"api uuid_transfer {b.uuid} conference:{ROOM}@default inline"))
        # four members: each caller and the extension it talked to; the first is the moderator
        await until(lambda: len(cti.named("CONFERENCE_MEMBER_JOINED")) == 4)
        assert len(cti.named("CONFERENCE_STARTED")) == 1
        joined = [to_wire(e, seq=1) for e in cti.named("CONFERENCE_MEMBER_JOINED")]
        assert all(isinstance(j, ConferenceMemberJoined) and j.room == ROOM for j in joined)
        by_call = {j.call_id: j for j in joined}
        assert set(by_call) == {call_a, call_b}  # both legs of a call are that call's members
        moderators = [j.member_id for j in joined if j.moderator]
        assert len(moderators) == 1  # caller A (the PIN's flags are for the caller's leg)
        members = service.members("default", "3000")
        assert [m.member_id for m in members] == sorted(j.member_id for j in joined)
        victim = next(m for m in members if m.channel == b.uuid)
        # a plain member may not kick; the server's -ERR for an unknown id is a failed reply
        plain = next(m for m in members if not m.moderator)
        r = await service.control("default", "3000", "kick", victim.member_id, at=1.0,
                                  by_member=plain.member_id)
        assert r.code == "PERMISSION_DENIED" and not _lines(emu, "conference " + ROOM + " kick")
        r = await service.control("default", "3000", "mute", victim.member_id, at=1.0,
                                  by_member=moderators[0])
        assert r.ok, r
        assert _lines(emu, f"api conference {ROOM} mute {victim.member_id}")
        await until(lambda: len(cti.named("CONFERENCE_MEMBER_MUTED")) == 1)
        assert cti.named("CONFERENCE_MEMBER_MUTED")[0].data["member_id"] == victim.member_id
        r = await service.control("default", "3000", "unmute", victim.member_id, at=1.0)
        assert r.ok
        await until(lambda: len(cti.named("CONFERENCE_MEMBER_UNMUTED")) == 1)
        r = await service.control("default", "3000", "kick", victim.member_id, at=1.0)
        assert r.ok
        assert _lines(emu, f"api conference {ROOM} kick {victim.member_id}")
        await until(lambda: len(cti.named("CONFERENCE_MEMBER_KICKED")) == 1)
        await until(lambda: any(e.data.get("kicked") for e in cti.named("CONFERENCE_MEMBER_LEFT")))
        left = to_wire(cti.named("CONFERENCE_MEMBER_LEFT")[0], seq=1)
        assert isinstance(left, ConferenceMemberLeft) and left.kicked and left.call_id == call_b
        assert victim.member_id not in [m.member_id for m in service.members("default", "3000")]
        # the kicked caller's channel hangs up: its call ends with exactly one CDR
        await until(lambda: len(cdrs.items) == 1)
        assert cdrs.items[0].call_id == call_b and cdrs.items[0].conference == ROOM  # the CDR names the room
        # everyone else leaves: the room is destroyed, every call has one CDR
        for ch in list(emu.channels.values()):
            if ch.up:
                await emu.hangup(ch.uuid)
        await until(lambda: len(cti.named("CONFERENCE_ENDED")) == 1)
        await until(lambda: len(cdrs.items) == 2)
        assert sorted(c.call_id for c in cdrs.items) == sorted([call_a, call_b])
        ended = cti.named("CONFERENCE_ENDED")[0].data
        assert ended["peak"] == 4 and ended["joined"] == 4 and ended["started"] is True
        assert len(cti.named("CONFERENCE_MEMBER_LEFT")) == 4
        assert not service.live and service.errors == 0
        await until(lambda: not emu.channels)
    run(body)


def test_pins_room_full_and_switch_errors() -> None:
    async def body(emu, node, cdrs, cti, service):
        import pytest

        from engine.conference import ConferenceError

        with pytest.raises(ConferenceError) as e:
            service.join_check("default", "3000", "9999")
        assert e.value.code == "PERMISSION_DENIED"
        with pytest.raises(ConferenceError) as e:
            service.join_check("default", "3999", "1111")
        assert e.value.code == "NOT_FOUND"
        with pytest.raises(ConferenceError) as e:
            service.join_check("other", "3000", "1111")  # another tenant's room 3000 does not exist
        assert e.value.code == "NOT_FOUND"
        # not running: NOT_FOUND from the machine, nothing sent
        r = await service.control("default", "3000", "kick", 1, at=1.0)
        assert r.code == "NOT_FOUND" and not _lines(emu, "api conference")
        # the switch answering -ERR (member gone meanwhile): a failed reply, not an OK
        esl = service.send_api
        assert esl is not None
        assert (await esl("fs1", "conference nosuchroom list")).startswith("-ERR Conference nosuchroom not found")
    run(body)


def test_the_emulator_speaks_mod_conference_over_plain_esl() -> None:
    """The emulator's side alone, as FreeSWITCH 1.10.12 does it in the capture: event order and
    headers, member ids from one pool, list rows, replies, caller controls (0 = mute toggle)."""
    async def main():
        emu = FreeSwitchEmulator(heartbeat=None, answer_delay=0.01, ring_delay=0.002)
        async with trio.open_nursery() as n:
            await n.start(emu.run)
            conn = await open_authenticated(EslNodeConfig(name="fs1", port=emu.port))
            seen = []

            async def on_event(ev):
                if ev.get("Event-Subclass") == "conference::maintenance":
                    seen.append(ev)

            conn.on_event = on_event
            n.start_soon(conn.serve)
            from adapters.freeswitch import codec
            await conn.command(codec.event("plain", "CUSTOM", "conference::maintenance"))
            with trio.fail_after(10):
                a = await emu.place_inbound_call("1001", "7704")
                b = await emu.place_inbound_call("1002", "7704")
                assert (await conn.api(f"uuid_transfer {a.uuid} conference:r9@default+flags{{moderator}} inline")) == "+OK\n"
                assert (await conn.api(f"uuid_transfer {b.uuid} conference:r9@default inline")) == "+OK\n"
                await until(lambda: len(seen) == 4)
                assert [e.get("Action") for e in seen] == ["conference-create", "add-member",
                                                           "floor-change", "add-member"]
                ids = [int(e.get("Member-ID")) for e in seen if e.get("Action") == "add-member"]
                assert ids[1] == ids[0] + 1
                assert [e.get("Member-Type") for e in seen if e.get("Action") == "add-member"] == [
                    "moderator", "member"]
                assert seen[2].get("Old-ID") == "none" and seen[2].get("New-ID") == str(ids[0])
                assert seen[3].get("Unique-ID") == b.uuid and seen[3].get("Conference-Size") == "2"
                assert seen[3].get("Caller-Caller-ID-Number") == "1002"
                rows = (await conn.api("conference r9 list")).splitlines()
                assert [r.split(";")[0] for r in rows] == [str(ids[1]), str(ids[0])]
                assert rows[1].split(";")[5] == "hear|speak|floor|moderator"
                assert await conn.api(f"conference r9 mute {ids[1]}") == f"+OK mute {ids[1]}\n"
                assert (await conn.api("conference r9 list")).splitlines()[0].split(";")[5] == "hear"
                assert await conn.api("conference r9 kick 999") == "-ERR Non-Existant ID 999\n"
                assert await conn.api("conference nosuch list") == "-ERR Conference nosuch not found\n"
                await emu.send_dtmf(b.uuid, "0")  # caller controls: unmute itself
                await until(lambda: seen[-1].get("Action") == "unmute-member")
                assert seen[-2].get("Action") == "mute-member" and seen[-2].get("Speak") == "false"
                await emu.send_dtmf(a.uuid, "*3")  # the moderator's event key: Action dtmf, DTMF-Key
                await until(lambda: seen[-1].get("Action") == "dtmf")
                assert (seen[-1].get("DTMF-Key"), seen[-1].get("Member-ID"), seen[-1].get("Member-Type")) == (
                    "*3", str(ids[0]), "moderator")
                assert await conn.api(f"conference r9 kick {ids[1]}") == f"+OK kicked {ids[1]}\n"
                await until(lambda: seen[-1].get("Action") == "del-member")
                assert [e.get("Action") for e in seen[-2:]] == ["kick-member", "del-member"]
                await until(lambda: b.uuid not in emu.channels or not emu.channels[b.uuid].up)
                await emu.hangup(a.uuid)
                await until(lambda: seen[-1].get("Action") == "conference-destroy")
                assert [e.get("Action") for e in seen[-3:]] == ["del-member", "floor-change",
                                                                "conference-destroy"]
                assert seen[-2].get("New-ID") == "none" and not emu.conferences.rooms
            n.cancel_scope.cancel()
    trio.run(main)


def _who(role, tenant="default", agent_id=""):
    from api.auth import Principal

    return Principal(tenant=tenant, subject=f"{role}-{tenant}", roles=frozenset({role}), agent_id=agent_id)


async def _invoke(api, who, method, **params):
    import json

    from api.errors import ApiError

    try:
        return "OK", await api.invoke(who, method, json.dumps(params).encode(), "test")
    except ApiError as exc:
        return exc.code, str(exc)


def test_api_join_by_pin_then_moderator_controls_with_roles_and_tenants() -> None:
    async def body(emu, node, cdrs, cti, service, api):
        sup, agent, other = _who("supervisor"), _who("agent", agent_id="a9"), _who("supervisor", "t2")
        a, call_a = await _talking(emu, cti, "2001", "1001")
        partner = a.peer
        code, _ = await _invoke(api, sup, "CallControl/JoinConference", call_id=call_a, room="3000", pin="0000")
        assert code == "PERMISSION_DENIED"  # wrong PIN: nothing sent
        code, _ = await _invoke(api, agent, "CallControl/JoinConference", call_id=call_a, room="3000",
                                moderator=True)
        assert code in ("PERMISSION_DENIED", "NOT_FOUND")  # not its call, and no PIN-less moderator
        code, _ = await _invoke(api, other, "CallControl/JoinConference", call_id=call_a, room="3000",
                                pin="4321")
        assert code == "NOT_FOUND"  # another tenant sees neither the call nor the room
        assert not _lines(emu, "conference:")
        code, resp = await _invoke(api, sup, "CallControl/JoinConference", call_id=call_a, room="3000",
                                   pin="4321")
        assert code == "OK" and resp.data["room"] == "3000", resp
        # the moderator flag goes to the leg the caller talks to (the extension acting), not the caller
        await until(lambda: _lines(emu, f"uuid_transfer {partner} conference:{ROOM}@default+flags{{moderator}} inline"))
        await until(lambda: _lines(emu, f"uuid_transfer {a.uuid} conference:{ROOM}@default inline"))
        await until(lambda: len(service.members("default", "3000")) == 2)
        code, room = await _invoke(api, sup, "Conferences/Get", room="3000")
        assert code == "OK" and room.running and sorted(mb.moderator for mb in room.members) == [False, True]
        assert [mb.member_id for mb in service.members("default", "3000") if mb.channel == partner] == [
            next(mb.member_id for mb in room.members if mb.moderator)]  # the extension's leg moderates
        caller = next(mb for mb in room.members if mb.call_id == call_a and not mb.moderator)
        code, _ = await _invoke(api, other, "Conferences/Get", room="3000")
        assert code == "NOT_FOUND"
        code, _ = await _invoke(api, agent, "Conferences/Get", room="3000")
        assert code == "PERMISSION_DENIED"  # the role gate: staff only
        code, _ = await _invoke(api, agent, "Conferences/Kick", room="3000", member_id=caller.member_id)
        assert code == "PERMISSION_DENIED"  # an agent without a moderating call in the room
        code, _ = await _invoke(api, other, "Conferences/Kick", room="3000", member_id=caller.member_id)
        assert code == "NOT_FOUND"
        code, _ = await _invoke(api, sup, "Conferences/Kick", room="3000", member_id=0)
        assert code == "INVALID_ARGUMENT"
        code, _ = await _invoke(api, sup, "Conferences/Mute", room="3000", member_id=999)
        assert code == "NOT_FOUND"
        assert not _lines(emu, "api conference ")
        code, resp = await _invoke(api, sup, "Conferences/Mute", room="3000", member_id=caller.member_id)
        assert code == "OK" and resp.action == "mute"
        await until(lambda: len(cti.named("CONFERENCE_MEMBER_MUTED")) == 1)
        code, room = await _invoke(api, sup, "Conferences/List")
        assert code == "OK" and [r.room for r in room.items] == ["3000"]
        assert [mb.muted for mb in room.items[0].members if mb.member_id == caller.member_id] == [True]
        code, _ = await _invoke(api, sup, "Conferences/Kick", room="3000", member_id=caller.member_id)
        assert code == "OK"
        await until(lambda: len(cti.named("CONFERENCE_MEMBER_KICKED")) == 1)
        # the kicked caller hangs up; its partner is alone in the room until it leaves too
        await until(lambda: not a.up)
        for ch in list(emu.channels.values()):
            if ch.up:
                await emu.hangup(ch.uuid)
        await until(lambda: len(cdrs.items) == 1 and len(cti.named("CONFERENCE_ENDED")) == 1)
        assert cdrs.items[0].call_id == call_a
    run(body)


def test_blind_transfer_to_a_room_number_moves_the_caller_alone_and_releases_the_partner() -> None:
    async def body(emu, node, cdrs, cti, service, api):
        sup = _who("supervisor")
        a, call_a = await _talking(emu, cti, "2001", "1001")
        partner = a.peer
        code, resp = await _invoke(api, sup, "CallControl/BlindTransfer", call_id=call_a, target="3000")
        assert code == "OK" and resp.data["room"] == "3000", resp
        # the caller's leg into the room first (no PIN: the transferring party vouches), then the
        # party it talked to is hung up
        await until(lambda: _lines(emu, f"uuid_transfer {a.uuid} conference:{ROOM}@default inline"))
        await until(lambda: partner not in emu.channels or not emu.channels[partner].up)
        kill = [i for i, c in enumerate(emu.command_log) if partner in c and "uuid_kill" in c]
        move = [i for i, c in enumerate(emu.command_log) if f"uuid_transfer {a.uuid} conference:" in c]
        assert move and kill and move[0] < kill[0], list(emu.command_log)
        await until(lambda: [m.channel for m in service.members("default", "3000")] == [a.uuid])
        assert a.up
        (moved,) = cti.named("CALL_TRANSFERRED")
        assert moved.data == {"target": ROOM, "kind": "blind"}
        assert not service.members("default", "3000")[0].moderator
        await emu.hangup(a.uuid)
        await until(lambda: len(cdrs.items) == 1 and len(cti.named("CONFERENCE_ENDED")) == 1)
        (cdr,) = cdrs.items
        assert (cdr.call_id, cdr.conference, cdr.transfers, cdr.disposition) == (call_a, ROOM, 1, "answered")
        # an ordinary number is still an ordinary blind transfer (no room 3999 for this tenant)
        b, call_b = await _talking(emu, cti, "2002", "1002")
        code, resp = await _invoke(api, sup, "CallControl/BlindTransfer", call_id=call_b, target="1003")
        assert code == "OK" and "room" not in resp.data
        await until(lambda: _lines(emu, "user/1003"))
        await emu.hangup(b.uuid)
        await until(lambda: len(cdrs.items) == 2)
    run(body)


def test_a_moderators_keys_mute_the_others_and_kick_the_last_over_esl() -> None:
    async def body(emu, node, cdrs, cti, service):
        a, call_a = await _talking(emu, cti, "2001", "1001")
        b, call_b = await _talking(emu, cti, "2002", "1002")
        await _join(node, service, call_a, pin="4321")  # the caller's own leg moderates
        await until(lambda: len(service.members("default", "3000")) == 2)
        await _join(node, service, call_b, pin="1111")
        await until(lambda: len(service.members("default", "3000")) == 4)
        members = service.members("default", "3000")
        (mod,) = [m for m in members if m.moderator]
        assert mod.channel == a.uuid
        others = sorted(m.member_id for m in members if not m.moderator)
        await emu.send_dtmf(b.uuid, "*1")  # a member's keys: nothing (its own caller controls only)
        await emu.send_dtmf(a.uuid, "*1")  # mute everyone else
        await until(lambda: len(cti.named("CONFERENCE_MEMBER_MUTED")) == 3)
        assert sorted(e.data["member_id"] for e in cti.named("CONFERENCE_MEMBER_MUTED")) == others
        assert sorted(int(line.split()[-1]) for line in _lines(emu, f"api conference {ROOM} mute ")) == others
        await emu.send_dtmf(a.uuid, "*2")  # and unmute them
        await until(lambda: len(cti.named("CONFERENCE_MEMBER_UNMUTED")) == 3)
        last = max((m for m in members if not m.moderator), key=lambda m: (m.joined_at, m.member_id))
        await emu.send_dtmf(a.uuid, "*3")  # kick the one who joined last
        await until(lambda: len(cti.named("CONFERENCE_MEMBER_KICKED")) == 1)
        assert cti.named("CONFERENCE_MEMBER_KICKED")[0].data["member_id"] == last.member_id
        assert _lines(emu, f"api conference {ROOM} kick {last.member_id}")
        await until(lambda: not emu.channels.get(last.channel) or not emu.channels[last.channel].up)
        for ch in list(emu.channels.values()):
            if ch.up:
                await emu.hangup(ch.uuid)
        await until(lambda: len(cdrs.items) == 2 and len(cti.named("CONFERENCE_ENDED")) == 1)
        assert service.errors == 0
    run(body)
