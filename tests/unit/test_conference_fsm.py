"""Conference room machine (engine/fsm/conference.py): the event sequence of the real FreeSWITCH
1.10.12 capture (shared/esl/captures/fs-1.10.12/04_conference) turned into CTI, the moderator wait,
kicks, the control command's checks and its one media effect."""

from __future__ import annotations

import pytest

from engine.fsm.base import IllegalTransition
from engine.fsm.conference import RoomState, new_room, step, waiting
from engine.messages import (
    ConferenceControl,
    ConferenceMaintenance,
    MediaConferenceMember,
    PublishCti,
    Reply,
)


def ev(action, at=1.0, **kw):
    return ConferenceMaintenance(room="r1", action=action, at=at, room_uuid="u1", node="fs1", **kw)


def run(room, *events):
    out = []
    for e in events:
        room, effects = step(room, e)
        out += effects
    return room, out


def cti(effects):
    return [(e.event.name, e.event.call_id, dict(e.event.data)) for e in effects if isinstance(e, PublishCti)]


def test_the_captured_sequence_becomes_cti_events() -> None:
    # the order FreeSWITCH 1.10.12 fired them in the capture: create, add 3, floor 3, add 4,
    # mute 3, unmute 3, kick 4, del 4, floor none, del 3, destroy
    room, effects = run(
        new_room("r1", "t1"),
        ev("conference-create", 0.0),
        ev("add-member", 1.0, member_id=3, channel="ch3", call_id="c3", caller_id="1001"),
        ev("floor-change", 1.0, floor=3),
        ev("add-member", 2.0, member_id=4, channel="ch4", call_id="c4", caller_id="1002"),
        ev("mute-member", 3.0, member_id=3), ev("mute-member", 3.1, member_id=3),
        ev("unmute-member", 4.0, member_id=3),
        ev("kick-member", 5.0, member_id=4, call_id="c4"),
        ev("del-member", 5.5, member_id=4),
        ev("floor-change", 6.0, floor=0),
        ev("del-member", 7.0, member_id=3),
        ev("conference-destroy", 7.0))
    names = [n for n, *_ in cti(effects)]
    assert names == ["CONFERENCE_STARTED", "CONFERENCE_MEMBER_JOINED", "CONFERENCE_FLOOR_CHANGED",
                     "CONFERENCE_MEMBER_JOINED", "CONFERENCE_MEMBER_MUTED", "CONFERENCE_MEMBER_UNMUTED",
                     "CONFERENCE_MEMBER_KICKED", "CONFERENCE_MEMBER_LEFT", "CONFERENCE_FLOOR_CHANGED",
                     "CONFERENCE_MEMBER_LEFT", "CONFERENCE_ENDED"]
    got = cti(effects)
    assert got[1] == ("CONFERENCE_MEMBER_JOINED", "c3", {"room": "r1", "member_id": 3, "moderator": False,
                                                        "caller_id": "1001", "members": 1})
    assert got[7] == ("CONFERENCE_MEMBER_LEFT", "c4", {"room": "r1", "member_id": 4, "kicked": True,
                                                      "seconds": 3.5})
    assert got[9][2]["kicked"] is False and got[9][2]["seconds"] == 6.0
    assert got[10][2] == {"room": "r1", "room_uuid": "u1", "peak": 2, "joined": 2, "started": True,
                          "duration_s": 7.0}
    assert room.state is RoomState.EMPTY and not room.members


def test_a_room_waiting_for_its_moderator_starts_when_one_joins() -> None:
    room, effects = run(new_room("r1", "t1", wait_for_moderator=True), ev("conference-create"),
                        ev("add-member", member_id=1))
    assert room.state is RoomState.WAITING and waiting(room)
    assert [n for n, *_ in cti(effects)] == ["CONFERENCE_MEMBER_JOINED"]
    room, effects = run(room, ev("add-member", 2.0, member_id=2, moderator=True))
    assert room.state is RoomState.RUNNING and not waiting(room) and room.started_at == 2.0
    assert [n for n, *_ in cti(effects)] == ["CONFERENCE_MEMBER_JOINED", "CONFERENCE_STARTED"]
    # destroyed without a moderator ever: ENDED says it never started
    room, effects = run(new_room("r1", wait_for_moderator=True), ev("add-member", member_id=5),
                        ev("del-member", member_id=5), ev("conference-destroy"))
    assert cti(effects)[-1][2]["started"] is False


def test_duplicates_late_events_and_a_kicked_member_never_coming_back() -> None:
    room, _ = run(new_room("r1"), ev("add-member", member_id=3), ev("kick-member", member_id=3))
    assert 3 not in room.members
    room, effects = run(room, ev("add-member", member_id=3), ev("mute-member", member_id=3),
                        ev("kick-member", member_id=3), ev("add-member", member_id=3))
    assert effects == [] and 3 not in room.members
    room, effects = run(room, ev("del-member", member_id=3), ev("del-member", member_id=3),
                        ev("conference-destroy"), ev("del-member", member_id=3),
                        ev("conference-destroy"), ev("mute-member", member_id=9))
    assert [n for n, *_ in cti(effects)] == ["CONFERENCE_MEMBER_LEFT", "CONFERENCE_ENDED"]
    # add-member without a create (the engine connected late) opens the room itself
    room, effects = run(new_room("r1"), ev("add-member", member_id=7))
    assert room.state is RoomState.RUNNING
    assert [n for n, *_ in cti(effects)] == ["CONFERENCE_STARTED", "CONFERENCE_MEMBER_JOINED"]


def test_control_is_checked_then_asks_the_switch() -> None:
    ctl = ConferenceControl(room="r1", action="kick", member_id=4, at=1.0, request_id="q")
    _, effects = step(new_room("r1"), ctl)
    assert effects == [Reply(request_id="q", ok=False, code="NOT_FOUND",
                             message="conference room r1 is not running")]
    room, _ = run(new_room("r1"), ev("add-member", member_id=3, moderator=True),
                  ev("add-member", member_id=4))
    _, effects = step(room, ConferenceControl(room="r1", action="mute", member_id=9, at=1.0, request_id="q"))
    assert [e.code for e in effects] == ["NOT_FOUND"]
    # a plain member may not kick; the moderator may; a supervisor (by_member=0) may
    _, effects = step(room, ConferenceControl(room="r1", action="kick", member_id=3, at=1.0,
                                              by_member=4, request_id="q"))
    assert [e.code for e in effects] == ["PERMISSION_DENIED"]
    for by in (3, 0):
        after, effects = step(room, ConferenceControl(room="r1", action="kick", member_id=4, at=1.0,
                                                      by_member=by, request_id="q"))
        assert effects == [MediaConferenceMember(room="r1", action="kick", member_id=4, node="fs1"),
                           Reply(request_id="q", data={"room": "r1", "member_id": 4, "action": "kick"})]
        assert after == room  # the switch's kick-member event removes the member, not the request


def test_unknown_pairs_are_illegal_transitions() -> None:
    from engine.fsm import conference

    assert len(conference.TABLE) == len(RoomState) * len(conference.ROOM_INPUTS)
    # msgspec checks types only when decoding: an action the table does not know is refused
    with pytest.raises(IllegalTransition, match="state=EMPTY"):
        step(new_room("r1"), ev("play-file"))


def test_a_moderators_keys_ask_the_switch_and_nobody_elses_do() -> None:
    room, _ = run(new_room("r1"), ev("add-member", 1.0, member_id=1, moderator=True),
                  ev("add-member", 2.0, member_id=2), ev("add-member", 3.0, member_id=3),
                  ev("mute-member", 3.5, member_id=3))

    def asks(effects):
        return [(e.action, e.member_id) for e in effects if isinstance(e, MediaConferenceMember)]

    assert asks(step(room, ev("dtmf", member_id=1, key="*1"))[1]) == [("mute", 2)]  # 3 is muted already
    assert asks(step(room, ev("dtmf", member_id=1, key="*2"))[1]) == [("unmute", 3)]
    assert asks(step(room, ev("dtmf", member_id=1, key="*3"))[1]) == [("kick", 3)]  # the last joined
    for who, key in ((2, "*3"), (1, "*9"), (7, "*1")):  # a member, an unbound key, a stranger
        after, effects = step(room, ev("dtmf", member_id=who, key=key))
        assert effects == [] and after == room
    _, effects = step(new_room("r1"), ev("dtmf", member_id=1, key="*3"))
    assert effects == []
