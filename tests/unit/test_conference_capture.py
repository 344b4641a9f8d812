"""The real FreeSWITCH 1.10.12 conference capture (shared/esl/captures/fs-1.10.12/04_conference)
through ``mapping.map_conference`` and the room machine: the header names and the event order are
FreeSWITCH's own, not the emulator's. Skipped when the captures are not next to the repo."""

from __future__ import annotations

from adapters.freeswitch.mapping import map_conference
from engine.fsm.conference import RoomState, new_room, step
from engine.messages import PublishCti
from tests.unit.test_esl_mapping import events, needs_captures


@needs_captures
def test_the_recorded_room_becomes_the_expected_cti() -> None:
    mapped = [m for m in (map_conference(e, 1.0, "fs1") for e in events("04_conference")) if m is not None]
    # play-file / play-file-done are not delivered; every action the machine follows is
    assert [m.action for m in mapped] == [
        "conference-create", "add-member", "floor-change", "add-member", "mute-member", "unmute-member",
        "kick-member", "del-member", "floor-change", "del-member", "conference-destroy"]
    assert {m.room for m in mapped} == {"esl_cap_room"}
    assert {m.room_uuid for m in mapped} == {"82d43b19-78a0-4590-8421-9d5b15ad1420"}
    joins = [m for m in mapped if m.action == "add-member"]
    assert [(m.member_id, m.caller_id, m.moderator, m.size) for m in joins] == [(3, "1001", False, 1),
                                                                             (4, "1002", False, 2)]
    assert joins[0].channel == "f4a80322-80cd-4f4d-8f06-bef7c87ba704"
    assert [m.floor for m in mapped if m.action == "floor-change"] == [3, 0]  # New-ID 3, then "none"
    room, names = new_room("esl_cap_room"), []
    for m in mapped:
        room, effects = step(room, m)
        names += [e.event.name for e in effects if isinstance(e, PublishCti)]
    assert names == ["CONFERENCE_STARTED", "CONFERENCE_MEMBER_JOINED", "CONFERENCE_FLOOR_CHANGED",
                     "CONFERENCE_MEMBER_JOINED", "CONFERENCE_MEMBER_MUTED", "CONFERENCE_MEMBER_UNMUTED",
                     "CONFERENCE_MEMBER_KICKED", "CONFERENCE_MEMBER_LEFT", "CONFERENCE_FLOOR_CHANGED",
                     "CONFERENCE_MEMBER_LEFT", "CONFERENCE_ENDED"]
    assert room.state is RoomState.EMPTY
