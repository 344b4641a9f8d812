"""engine/conference.py without a switch: PINs, join checks per tenant, the live rooms fed from
maintenance events, and mute/unmute/kick replies decided by the switch's answer."""

from __future__ import annotations

import pytest
import trio

from engine.conference import (
    ConferenceError,
    ConferenceService,
    RoomConfig,
    check_pin,
    hash_pin,
    parse_switch_room,
    switch_room,
)
from engine.messages import ConferenceMaintenance

SALT = b"s" * 16


def rooms():
    return [RoomConfig(tenant="t1", number="3000", moderator_pin_hash=hash_pin("4321", SALT, 1000),
                       member_pin_hash=hash_pin("1111", SALT, 1000), max_members=2),
            RoomConfig(tenant="t1", number="3001", wait_for_moderator=True, flags=("mute",)),
            RoomConfig(tenant="t2", number="3000")]


def ev(action, room="3000-t1", **kw):
    return ConferenceMaintenance(room=room, action=action, at=kw.pop("at", 1.0), node="fs1", **kw)


def test_pins_are_hashed_and_checked() -> None:
    h = hash_pin("123456")
    assert "123456" not in h and check_pin("123456", h) and not check_pin("123457", h)
    assert not check_pin("1234", "garbage") and not check_pin("", h)
    with pytest.raises(ConferenceError) as e:
        hash_pin("12a4")
    assert e.value.code == "INVALID_ARGUMENT"


def test_join_check_by_pin_tenant_and_size() -> None:
    s = ConferenceService(lambda e: None, rooms())
    assert switch_room("t1", "3000") == "3000-t1" and parse_switch_room("3000-t1") == ("t1", "3000")
    assert parse_switch_room("esl_cap_room") == ("", "esl_cap_room")
    mod = s.join_check("t1", "3000", "4321")
    assert mod.moderator and mod.flags == ("moderator",) and mod.room == "3000-t1"
    mem = s.join_check("t1", "3000", "1111")
    assert not mem.moderator and mem.flags == ()
    for pin in ("", "9999"):
        with pytest.raises(ConferenceError) as e:
            s.join_check("t1", "3000", pin)
        assert e.value.code == "PERMISSION_DENIED"
    assert s.join_check("t1", "3001").flags == ("mute", "wait-mod")  # no PIN needed, room flags kept
    assert s.join_check("t2", "3000").room == "3000-t2"  # another tenant's 3000
    with pytest.raises(ConferenceError) as e:
        s.join_check("t2", "3001")
    assert e.value.code == "NOT_FOUND"
    s.observe(ev("add-member", member_id=1))
    s.observe(ev("add-member", member_id=2))
    with pytest.raises(ConferenceError) as e:
        s.join_check("t1", "3000", "1111")
    assert e.value.code == "RESOURCE_EXHAUSTED"


def test_events_become_tenant_cti_and_control_follows_the_switch() -> None:
    published = []
    sent = []
    answer = {"text": "+OK kicked 2\n"}

    async def send_api(node, cmd):
        sent.append((node, cmd))
        if answer["text"] is None:
            raise OSError("connection lost")
        return answer["text"]

    s = ConferenceService(published.append, rooms(), send_api=send_api,
                          call_of=lambda uuid: {"ch1": "call-1"}.get(uuid, ""))
    s.observe(ev("add-member", room="3001-t1", member_id=1, channel="ch1"))
    assert [(e.name, e.tenant, e.call_id) for e in published] == [
        ("CONFERENCE_MEMBER_JOINED", "t1", "call-1")]  # waiting room: no STARTED yet
    s.observe(ev("add-member", room="3001-t1", member_id=2, moderator=True))
    assert published[-1].name == "CONFERENCE_STARTED"
    assert s.member_of_call("t1", "3001", "call-1") == 1

    async def main():
        r = await s.control("t1", "3001", "kick", 2, at=2.0)
        assert r.ok and sent == [("fs1", "conference 3001-t1 kick 2")]
        answer["text"] = "-ERR Non-Existant ID 2\n"
        r = await s.control("t1", "3001", "kick", 2, at=2.0)
        assert not r.ok and r.code == "FAILED_PRECONDITION" and "Non-Existant" in r.message
        answer["text"] = None
        r = await s.control("t1", "3001", "mute", 1, at=2.0)
        assert r.code == "UNAVAILABLE"
        r = await s.control("t1", "3001", "deafen", 1, at=2.0)
        assert r.code == "INVALID_ARGUMENT"
        r = await s.control("t2", "3000", "kick", 1, at=2.0)  # t2's room is not running
        assert r.code == "NOT_FOUND"
    trio.run(main)
    assert len(sent) == 3
    # a bad event is counted, never raised into the ESL reader
    s.observe(ev("play-file"))
    assert s.errors == 1
    s.observe(ev("conference-destroy", room="3001-t1"))
    assert not s.live and published[-1].name == "CONFERENCE_ENDED"


def test_members_of_a_room_that_waits_for_its_moderator_get_wait_mod() -> None:
    from engine.conference import fill_flow_rooms
    from engine.flows import interpreter as I
    from engine.flows.model import ConferenceNode, Flow

    s = ConferenceService(lambda e: None, rooms())
    assert s.join_check("t1", "3001").flags == ("mute", "wait-mod")  # FreeSWITCH plays them music
    assert s.join_check("t1", "3001", moderator=True).flags == ("mute", "moderator")
    flow = Flow(id="f", start="r", nodes={"r": ConferenceNode(room="3001")})
    filled = fill_flow_rooms(flow, {"3001": s.configs[("t1", "3001")]}.get)
    assert I.start(filled, call_id="c", at=0.0).outcome == I.ToConference(room="3001", flags=("mute", "wait-mod"))
    mod = ConferenceNode(room="3001", prompt="p.wav", moderator_pin_hash=hash_pin("4321", SALT, 1000),
                         flags=("mute", "wait-mod"))
    assert I._into_room(mod, moderator=True).flags == ("mute", "moderator")
