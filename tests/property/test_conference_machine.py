"""Property test (hypothesis) of the conference room machine (#10 part 3).

Random streams of conference::maintenance events over a few member ids (duplicated, late, out of
order, after the destroy: media is noisy) and control commands by members and supervisors.
Invariants after every step:
- a kicked member is never a member again, and a member that left is not one either;
- the members are exactly the ids added and not yet deleted or kicked (adds minus dels) in the
  current room lifetime, and CONFERENCE_MEMBER_JOINED minus LEFT/KICKED counts match them;
- every JOINED has exactly one LEFT (kicked or not) by the room's destroy, one CONFERENCE_ENDED per
  room lifetime, and ENDED says started=True exactly for the lifetimes that published STARTED;
- a room configured to wait for a moderator is RUNNING only with a moderator having joined,
  and publishes CONFERENCE_STARTED exactly when that happens;
- a control command asks the switch (MediaConferenceMember) only for a present member, and only
  when the asker is a supervisor (0) or a present moderator; every command gets one Reply;
- a DTMF key asks the switch only when a present moderator pressed a bound key, and only about
  present non-moderators (one kick at most);
- a room with ``max_members`` asks the switch to kick exactly the non-moderator whose join took it
  over the limit, with one CONFERENCE_FULL, and never a moderator or anyone on a join within it.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.fsm.conference import RoomState, new_room, step
from engine.messages import (
    ConferenceControl,
    ConferenceMaintenance,
    MediaConferenceMember,
    PublishCti,
    Reply,
)

IDS = st.integers(min_value=1, max_value=5)
EVENTS = st.lists(st.one_of(
    st.tuples(st.sampled_from(["add-member", "add-member", "del-member", "mute-member",
                               "unmute-member", "kick-member", "floor-change"]), IDS, st.booleans()),
    st.tuples(st.sampled_from(["conference-create", "conference-destroy"]), st.just(0), st.just(False)),
    st.tuples(st.just("control"), IDS, st.sampled_from([0, 1, 2, 3])),
    st.tuples(st.just("dtmf"), IDS, st.sampled_from(["*1", "*2", "*3", "*9"]))), max_size=60)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(events=EVENTS, wait=st.booleans(), cap=st.sampled_from([0, 0, 1, 2, 3]))
def test_room_invariants(events, wait, cap) -> None:
    room = new_room("r", "t", wait_for_moderator=wait, max_members=cap)
    present: set[int] = set()
    gone: set[int] = set()
    moderators: set[int] = set()
    open_joins: set[int] = set()
    started = ended = opened = closed = 0
    for i, (action, mid, flag) in enumerate(events):
        at = float(i)
        if action == "control":
            cmd = ConferenceControl(room="r", action="kick", member_id=mid, at=at, by_member=flag,
                                    request_id=f"q{i}")
            room, effects = step(room, cmd)
            asks = [e for e in effects if isinstance(e, MediaConferenceMember)]
            replies = [e for e in effects if isinstance(e, Reply)]
            assert len(replies) == 1
            allowed = mid in present and (flag == 0 or flag in moderators & present)
            assert bool(asks) == allowed == replies[0].ok
            assert set(room.members) == present  # asking changes nothing
            continue
        ev = ConferenceMaintenance(room="r", action=action, at=at, member_id=mid,  # type: ignore[arg-type]
                                   moderator=flag is True if action == "add-member" else False,
                                   floor=mid if action == "floor-change" else 0,
                                   key=flag if action == "dtmf" else "")
        before = room.state
        room, effects = step(room, ev)
        asked = [e for e in effects if isinstance(e, MediaConferenceMember)]
        names = [e.event.name for e in effects if isinstance(e, PublishCti)]
        joins = action == "add-member" and mid not in present and mid not in gone
        over = joins and cap and flag is not True and len(present) + 1 > cap
        if over:  # the join that took the room over its capacity: that member is kicked
            assert [(e.action, e.member_id) for e in asked] == [("kick", mid)]
            assert names.count("CONFERENCE_FULL") == 1
        elif asked:  # only a present moderator's bound key asks, and only about present non-moderators
            assert action == "dtmf" and mid in present and mid in moderators and flag != "*9"
            assert all(e.member_id in present and e.member_id not in moderators for e in asked)
            assert len(asked) == 1 or flag in ("*1", "*2")
        if not over:
            assert "CONFERENCE_FULL" not in names
        data = [e.event.data for e in effects if isinstance(e, PublishCti)]
        if action == "add-member" and mid not in present and mid not in gone:
            present.add(mid)
            open_joins.add(mid)
            if flag is True:
                moderators.add(mid)
        elif action in ("del-member", "kick-member") and mid in present:
            present.discard(mid)
            gone.add(mid)
        for n, d in zip(names, data, strict=True):
            if n == "CONFERENCE_MEMBER_LEFT":
                assert d["member_id"] in open_joins
                open_joins.discard(d["member_id"])  # type: ignore[arg-type]
        started += names.count("CONFERENCE_STARTED")
        ended += sum(1 for n, d in zip(names, data, strict=True)
                     if n == "CONFERENCE_ENDED" and d["started"])
        opened += before is RoomState.EMPTY and room.state is not RoomState.EMPTY
        closed += names.count("CONFERENCE_ENDED")
        assert closed == opened - (room.state is not RoomState.EMPTY)
        if action == "conference-destroy" and before is not RoomState.EMPTY:
            assert not open_joins, "every joined member is reported gone by the destroy"
            present.clear()
            gone.clear()
            moderators.clear()
        assert set(room.members) == present
        assert not set(room.members) & set(gone)
        assert not set(room.members) & set(room.kicked)
        assert set(open_joins) == present | set(room.kicked)
        if room.state is RoomState.RUNNING and wait:
            assert moderators, "a waiting room runs only once a moderator joined"
        if room.state is RoomState.WAITING:
            assert wait and not (moderators & present) and started == ended
        assert started - ended == (1 if room.state is RoomState.RUNNING else 0)
        assert room.peak >= len(room.members)
