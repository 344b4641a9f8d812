"""Conference room state machine (#10 part 3): one per live mod_conference room.

Rule 1: every decision about a room's members lives in this file; FreeSWITCH is the authority on
        who is in the room, so the machine follows its conference::maintenance events and only
        *asks* for mute/unmute/kick (an effect), it never assumes one happened.
Rule 2: pure: no I/O, no trio, no clock reads: time arrives inside the events.
Rule 3: one table ``{(state, input kind): handler}``; a missing pair is ``IllegalTransition``.
        Media is noisy: duplicate, late and unknown-member events are explicit no-ops.

Theory of operation
mod_conference fires ``conference-create`` when the first channel enters a room, ``add-member`` /
``del-member`` for each channel (``Member-ID`` is unique per switch and never reused), ``mute-member``
/ ``unmute-member`` / ``kick-member`` (a kick is followed by the member's ``del-member``),
``floor-change`` (``New-ID``) and ``conference-destroy`` after the last member left.

States: ``EMPTY`` (no room on the switch), ``WAITING`` (members, but the room is configured to
wait for a moderator and none is in: FreeSWITCH's ``wait-mod`` keeps them on music), ``RUNNING``.
``CONFERENCE_STARTED`` is published when the room starts RUNNING (created without waiting, or the
first moderator joining a WAITING room); ``CONFERENCE_ENDED`` at ``conference-destroy``.
A member kicked is removed at ``kick-member`` (``CONFERENCE_MEMBER_KICKED``), its later
``del-member`` publishes ``CONFERENCE_MEMBER_LEFT`` with ``kicked=True``; a kicked member id is
never a member again. An ``add-member`` while EMPTY (the create was missed: the engine connected
late) creates the room implicitly.

Capacity: a room with ``max_members`` asks the switch to kick a non-moderator whose ``add-member``
takes the room over it (``CONFERENCE_FULL``, then the switch's kick events), however the member
came in (a flow's dial-in, a transfer, the API, whose own check can race another join). The member
stays a member until the switch reports the kick. Moderators always get in and count.

``ConferenceControl`` (mute/unmute/kick by the API or by a moderator's DTMF) is refused with
``NOT_FOUND`` for an empty room or an unknown member, and ``PERMISSION_DENIED`` when ``by_member``
is not a moderator of this room; else the machine emits ``MediaConferenceMember`` (``api
conference <room> <verb> <id>``) and a Reply; the host turns a ``-ERR`` from the switch into a
failed reply instead.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import msgspec

from engine.fsm.base import IllegalTransition, Out
from engine.messages import (
    ConferenceControl,
    ConferenceMaintenance,
    Effect,
    MediaConferenceMember,
)

__all__ = ["RoomState", "Member", "Room", "new_room", "step", "TABLE", "ROOM_INPUTS", "check_pin",
           "switch_room", "parse_switch_room"]


def check_pin(pin: str, hashed: str) -> bool:
    """Constant-time check of ``pin`` against ``engine.conference.hash_pin``'s PBKDF2 string;
    a malformed hash or an empty PIN is False. Pure (the flow interpreter checks PINs with it)."""
    try:
        scheme, rounds, salt, digest = hashed.split("$")
        if scheme != "pbkdf2_sha256" or not pin:
            return False
        got = hashlib.pbkdf2_hmac("sha256", pin.encode(), bytes.fromhex(salt), int(rounds))
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def switch_room(tenant: str, number: str) -> str:
    """The room's name on FreeSWITCH: ``<number>-<tenant>`` (mod_conference names are switch-wide)."""
    return f"{number}-{tenant}"


def parse_switch_room(name: str) -> tuple[str, str]:
    """(tenant, number) of a switch room name; a room not made by us: ("", name)."""
    number, sep, tenant = name.partition("-")
    return (tenant, number) if sep and number.isdigit() and tenant else ("", name)


class RoomState(enum.Enum):
    #: no conference of this name on the switch
    EMPTY = "empty"
    #: members are in, no moderator yet, and the room waits for one
    WAITING = "waiting"
    #: the conference runs
    RUNNING = "running"


class Member(msgspec.Struct, frozen=True, kw_only=True):
    member_id: int
    channel: str = ""
    call_id: str = ""
    caller_id: str = ""
    moderator: bool = False
    muted: bool = False
    joined_at: float = 0.0


class Room(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    tenant: str = ""
    state: RoomState = RoomState.EMPTY
    #: configuration: members wait (no CONFERENCE_STARTED) until a moderator joins
    wait_for_moderator: bool = False
    #: configuration: at most this many members (0 = no limit); see Capacity above
    max_members: int = 0
    room_uuid: str = ""
    node: str = ""
    members: dict[int, Member] = {}
    #: members kicked and not yet reported gone (their del-member is still to come)
    kicked: dict[int, Member] = {}
    #: every member id seen leaving (del-member or kick): never a member again
    gone: frozenset[int] = frozenset()
    floor: int = 0
    started_at: float | None = None
    created_at: float | None = None
    peak: int = 0
    joined_total: int = 0


def new_room(name: str, tenant: str = "", *, wait_for_moderator: bool = False, max_members: int = 0) -> Room:
    return Room(name=name, tenant=tenant, wait_for_moderator=wait_for_moderator, max_members=max(0, max_members))


S = RoomState
Handler = Callable[[Room, Any, Out], Room]

#: input kinds: every maintenance action, and the control command
ROOM_INPUTS: tuple[str, ...] = ("conference-create", "add-member", "del-member", "mute-member",
                                "unmute-member", "kick-member", "floor-change",
                                "conference-destroy", "control", "dtmf")

#: a moderator's keys (FreeSWITCH caller-control ``event`` actions bound in the moderator's
#: controls group, docs/conferences.md): DTMF-Key -> what the engine does
MODERATOR_KEYS: dict[str, str] = {"*1": "mute_others", "*2": "unmute_others", "*3": "kick_last"}

TABLE: dict[tuple[RoomState, str], Handler] = {}


def _on(states: tuple[RoomState, ...], *kinds: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for st in states:
            for kind in kinds:
                assert (st, kind) not in TABLE, (st, kind)
                TABLE[(st, kind)] = fn
        return fn
    return register


def _kind(event: ConferenceMaintenance | ConferenceControl) -> str:
    return "control" if isinstance(event, ConferenceControl) else event.action


def step(room: Room, event: ConferenceMaintenance | ConferenceControl) -> tuple[Room, list[Effect | MediaConferenceMember]]:
    """One input -> the new room and its effects (PublishCti, Reply, MediaConferenceMember)."""
    handler = TABLE.get((room.state, _kind(event)))
    if handler is None:
        raise IllegalTransition(room.state, event, "conference")
    out = Out()
    new = handler(room, event, out)
    return new, out.effects  # type: ignore[return-value]


def _cti(out: Out, name: str, room: Room, at: float, **data: Any) -> None:
    out.cti(name, room.tenant, at, room=room.name, **data)


def _noop(room: Room, event: Any, out: Out) -> Room:
    return room


def _has_moderator(members: dict[int, Member]) -> bool:
    return any(m.moderator for m in members.values())


# ---- create / destroy ----------------------------------------------------------------------


def _open(room: Room, ev: ConferenceMaintenance, out: Out) -> Room:
    room = msgspec.structs.replace(room, room_uuid=ev.room_uuid or room.room_uuid,
                                   node=ev.node or room.node, created_at=ev.at, floor=0,
                                   members={}, kicked={}, peak=0, joined_total=0,
                                   started_at=None)
    if room.wait_for_moderator:
        return msgspec.structs.replace(room, state=S.WAITING)
    _cti(out, "CONFERENCE_STARTED", room, ev.at, room_uuid=room.room_uuid)
    return msgspec.structs.replace(room, state=S.RUNNING, started_at=ev.at)


_on((S.EMPTY,), "conference-create")(_open)
_on((S.WAITING, S.RUNNING), "conference-create")(_noop)  # duplicate


@_on((S.WAITING, S.RUNNING), "conference-destroy")
def _destroy(room: Room, ev: ConferenceMaintenance, out: Out) -> Room:
    for m in sorted(room.members.values(), key=lambda m: m.member_id):
        _left(out, room, m, ev.at, kicked=False)  # no del-member came for it: say it left
    for m in sorted(room.kicked.values(), key=lambda m: m.member_id):
        _left(out, room, m, ev.at, kicked=True)
    since = room.created_at if room.created_at is not None else ev.at
    _cti(out, "CONFERENCE_ENDED", room, ev.at, room_uuid=room.room_uuid, peak=room.peak,
         joined=room.joined_total, started=room.started_at is not None,
         duration_s=round(max(0.0, ev.at - since), 3))
    return msgspec.structs.replace(room, state=S.EMPTY, members={}, kicked={}, gone=frozenset(), floor=0,
                                   started_at=None, created_at=None)


_on((S.EMPTY,), "conference-destroy", "del-member", "mute-member", "unmute-member",
    "kick-member", "floor-change", "dtmf")(_noop)  # late events of a room already gone


# ---- members -------------------------------------------------------------------------------


@_on((S.EMPTY, S.WAITING, S.RUNNING), "add-member")
def _add(room: Room, ev: ConferenceMaintenance, out: Out) -> Room:
    if ev.member_id <= 0 or ev.member_id in room.members or ev.member_id in room.gone:
        return room  # duplicate, or a member that already left
    if room.state is S.EMPTY:
        room = _open(room, msgspec.structs.replace(ev, action="conference-create"), out)
    member = Member(member_id=ev.member_id, channel=ev.channel, call_id=ev.call_id,
                    caller_id=ev.caller_id, moderator=ev.moderator, joined_at=ev.at)
    members = {**room.members, ev.member_id: member}
    room = msgspec.structs.replace(room, members=members, peak=max(room.peak, len(members)),
                                   joined_total=room.joined_total + 1)
    _cti(out, "CONFERENCE_MEMBER_JOINED", room, ev.at, call_id=ev.call_id,
         member_id=ev.member_id, moderator=ev.moderator, caller_id=ev.caller_id,
         members=len(members))
    if room.state is S.WAITING and ev.moderator:
        _cti(out, "CONFERENCE_STARTED", room, ev.at, room_uuid=room.room_uuid)
        room = msgspec.structs.replace(room, state=S.RUNNING, started_at=ev.at)
    if room.max_members and not ev.moderator and len(members) > room.max_members:
        _cti(out, "CONFERENCE_FULL", room, ev.at, call_id=ev.call_id, member_id=ev.member_id,
             members=len(members), max_members=room.max_members)
        out.add(MediaConferenceMember(room=room.name, action="kick", member_id=ev.member_id, node=room.node))  # type: ignore[arg-type]
    return room


def _left(out: Out, room: Room, m: Member, at: float, *, kicked: bool) -> None:
    _cti(out, "CONFERENCE_MEMBER_LEFT", room, at, call_id=m.call_id, member_id=m.member_id,
         kicked=kicked, seconds=round(max(0.0, at - m.joined_at), 3))


@_on((S.WAITING, S.RUNNING), "del-member")
def _del(room: Room, ev: ConferenceMaintenance, out: Out) -> Room:
    gone = room.kicked.get(ev.member_id)
    if gone is not None:
        _left(out, room, gone, ev.at, kicked=True)
        return msgspec.structs.replace(
            room, kicked={k: v for k, v in room.kicked.items() if k != ev.member_id})
    m = room.members.get(ev.member_id)
    if m is None:
        return room  # duplicate or never seen
    members = {k: v for k, v in room.members.items() if k != ev.member_id}
    _left(out, room, m, ev.at, kicked=False)
    floor = 0 if room.floor == ev.member_id else room.floor
    return msgspec.structs.replace(room, members=members, gone=room.gone | {ev.member_id},
                                   floor=floor)


@_on((S.WAITING, S.RUNNING), "kick-member")
def _kick(room: Room, ev: ConferenceMaintenance, out: Out) -> Room:
    m = room.members.get(ev.member_id)
    if m is None:
        return room
    members = {k: v for k, v in room.members.items() if k != ev.member_id}
    _cti(out, "CONFERENCE_MEMBER_KICKED", room, ev.at, call_id=m.call_id, member_id=m.member_id,
         seconds=round(max(0.0, ev.at - m.joined_at), 3))
    floor = 0 if room.floor == ev.member_id else room.floor
    return msgspec.structs.replace(room, members=members, kicked={**room.kicked, m.member_id: m},
                                   gone=room.gone | {ev.member_id}, floor=floor)


def _mute(muted: bool) -> Handler:
    def handler(room: Room, ev: ConferenceMaintenance, out: Out) -> Room:
        m = room.members.get(ev.member_id)
        if m is None or m.muted == muted:
            return room  # unknown member, or a duplicate
        members = {**room.members, m.member_id: msgspec.structs.replace(m, muted=muted)}
        _cti(out, "CONFERENCE_MEMBER_MUTED" if muted else "CONFERENCE_MEMBER_UNMUTED", room,
             ev.at, call_id=m.call_id, member_id=m.member_id)
        return msgspec.structs.replace(room, members=members)
    handler.__name__ = "_mute" if muted else "_unmute"
    return handler


_on((S.WAITING, S.RUNNING), "mute-member")(_mute(True))
_on((S.WAITING, S.RUNNING), "unmute-member")(_mute(False))


@_on((S.WAITING, S.RUNNING), "floor-change")
def _floor(room: Room, ev: ConferenceMaintenance, out: Out) -> Room:
    new = ev.floor if ev.floor in room.members else 0
    if new == room.floor:
        return room
    _cti(out, "CONFERENCE_FLOOR_CHANGED", room, ev.at, member_id=new,
         call_id=room.members[new].call_id if new else "")
    return msgspec.structs.replace(room, floor=new)


# ---- control (API / DTMF) ------------------------------------------------------------------


@_on((S.WAITING, S.RUNNING), "dtmf")
def _moderator_key(room: Room, ev: ConferenceMaintenance, out: Out) -> Room:
    """A moderator's key (``MODERATOR_KEYS``): mute / unmute every other non-moderator member, or
    kick the non-moderator who joined last. Anyone else's key, an unknown key: nothing."""
    asker = room.members.get(ev.member_id)
    what = MODERATOR_KEYS.get(ev.key)
    if asker is None or not asker.moderator or what is None:
        return room
    others = sorted((m for m in room.members.values() if not m.moderator), key=lambda m: m.member_id)
    if what == "kick_last":
        targets = [max(others, key=lambda m: (m.joined_at, m.member_id))] if others else []
        action = "kick"
    else:
        action = "mute" if what == "mute_others" else "unmute"
        targets = [m for m in others if m.muted != (action == "mute")]
    for m in targets:
        out.add(MediaConferenceMember(room=room.name, action=action, member_id=m.member_id,  # type: ignore[arg-type]
                                      node=room.node))
    return room


@_on((S.EMPTY, S.WAITING, S.RUNNING), "control")
def _control(room: Room, cmd: ConferenceControl, out: Out) -> Room:
    if room.state is S.EMPTY:
        out.reply(cmd.request_id, "NOT_FOUND", f"conference room {room.name} is not running")
        return room
    if cmd.member_id not in room.members:
        out.reply(cmd.request_id, "NOT_FOUND",
                  f"member {cmd.member_id} is not in conference room {room.name}")
        return room
    if cmd.by_member:
        asker = room.members.get(cmd.by_member)
        if asker is None or not asker.moderator:
            out.reply(cmd.request_id, "PERMISSION_DENIED",
                      f"member {cmd.by_member} is not a moderator of conference room {room.name}")
            return room
    out.add(MediaConferenceMember(room=room.name, action=cmd.action, member_id=cmd.member_id,  # type: ignore[arg-type]
                                  node=room.node))
    out.reply(cmd.request_id, room=room.name, member_id=cmd.member_id, action=cmd.action)
    return room


def moderators(room: Room) -> list[int]:
    return sorted(k for k, m in room.members.items() if m.moderator)


def waiting(room: Room) -> bool:
    """True while members wait for a moderator (FreeSWITCH plays them music)."""
    return room.state is S.WAITING and bool(room.members) and not _has_moderator(room.members)
