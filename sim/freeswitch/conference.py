"""The emulator's mod_conference (#10 parts 3 and 8): rooms, member ids, the ``conference`` API
and the CUSTOM conference::maintenance events with the headers FreeSWITCH 1.10.12 sends
(shared/esl/captures/fs-1.10.12/04_conference).

Rules
1. Events in FreeSWITCH's order: the first member fires ``conference-create`` (Conference-Size 0)
   then ``add-member`` then ``floor-change`` (Old-ID none, New-ID its id); a member leaving fires
   ``del-member`` (and a ``floor-change`` when it held the floor); the last one ``conference-destroy``.
   A kick fires ``kick-member``, then the member leaves (``del-member``) and, since the dialplan
   after ``conference`` is over, its channel hangs up (NORMAL_CLEARING).
2. Member ids come from one switch-wide pool (never reused), as ``globals.id_pool`` does.
3. Replies as captured: ``+OK mute 3``, ``+OK unmute 3``, ``+OK kicked 4``,
   ``-ERR Non-Existant ID 999``, ``-ERR Conference nosuchroom not found``; ``list`` rows are
   ``<id>;<channel name>;<uuid>;<caller id name>;<caller id number>;<flags>;0;0;100``, newest first,
   flags ``hear|speak|floor|moderator`` (``speak`` absent while muted).
4. Caller controls (the default group of conference.conf.xml): DTMF ``0`` toggles the member's own
   mute (``mute-member``/``unmute-member``), ``#`` leaves the room (hangs up). A moderator's
   ``*1``/``*2``/``*3`` are the moderator group's ``event`` actions (docs/conferences.md): Action
   ``dtmf`` with ``DTMF-Key``; the engine decides what they do.
5. The app argument is ``<room>[@<profile>][+<pin>][+flags{a|b}]``; ``moderator`` and ``mute``
   (join muted) are the flags the emulator honours; a PIN is not asked (the engine's flow does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from sim.freeswitch.channels import Channel, new_uuid

if TYPE_CHECKING:
    from sim.freeswitch.server import FreeSwitchEmulator

__all__ = ["EmuRoom", "EmuMember", "EmuConferences", "parse_conference_arg"]


@dataclass
class EmuMember:
    member_id: int
    uuid: str
    moderator: bool = False
    muted: bool = False
    kicked: bool = False
    #: digits of a multi-key binding being typed (``*1``)
    keys: str = ""


@dataclass
class EmuRoom:
    name: str
    uuid: str = field(default_factory=new_uuid)
    members: dict[int, EmuMember] = field(default_factory=dict)
    floor: int = 0


def parse_conference_arg(arg: str) -> tuple[str, str, set[str]]:
    """``room@profile+pin+flags{a|b}`` -> (room, profile, flags)."""
    flags: set[str] = set()
    m = re.search(r"\+?flags\{([^}]*)\}", arg)
    if m:
        flags = {f for f in m.group(1).split("|") if f}
        arg = arg[:m.start()] + arg[m.end():]
    head = arg.split("+")[0]
    room, _, profile = head.partition("@")
    return room or "default", profile or "default", flags


class EmuConferences:
    def __init__(self, emu: FreeSwitchEmulator) -> None:
        self.emu = emu
        self.rooms: dict[str, EmuRoom] = {}
        self._next_id = 0
        #: every maintenance Action fired, in order: (action, room, member id)
        self.log: list[tuple[str, str, int]] = []
        #: uuid -> (room, member id) of channels in a room
        self.by_uuid: dict[str, tuple[str, int]] = {}

    # ------------------------------------------------------------------ events
    def _fire(self, room: EmuRoom, action: str, member: EmuMember | None = None,
              extra: dict[str, str] | None = None) -> None:
        info = {"Conference-Name": room.name, "Conference-Domain": "127.0.0.1",
                "Conference-Size": str(len(room.members)), "Conference-Ghosts": "0",
                "Conference-Profile-Name": "default", "Conference-Unique-ID": room.uuid}
        ch = None
        if member is not None:
            ch = self.emu.channels.get(member.uuid)
            info.update({"Floor": "true" if room.floor == member.member_id else "false",
                         "Video": "false", "Hear": "true",
                         "Speak": "false" if member.muted else "true", "Talking": "false",
                         "Mute-Detect": "false", "Member-ID": str(member.member_id),
                         "Member-Type": "moderator" if member.moderator else "member",
                         "Member-Ghost": "false", "Energy-Level": "100", "Current-Energy": "0"})
        info.update(extra or {})
        info["Action"] = action
        self.log.append((action, room.name, member.member_id if member else 0))
        self.emu._fire("CUSTOM", ch, subclass="conference::maintenance", extra=info)

    def _floor(self, room: EmuRoom, new: int) -> None:
        old, room.floor = room.floor, new
        member = room.members.get(new)
        self._fire(room, "floor-change", member,
                   {"Old-ID": str(old) if old else "none", "New-ID": str(new) if new else "none"})

    # ------------------------------------------------------------------ the app
    async def join(self, ch: Channel, arg: str) -> str:
        """The ``conference`` app: stay in the room until hangup, transfer or kick."""
        name, _profile, flags = parse_conference_arg(arg)
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = EmuRoom(name)
            self._fire(room, "conference-create")
        self._next_id += 1
        member = EmuMember(self._next_id, ch.uuid, moderator="moderator" in flags,
                           muted="mute" in flags)
        room.members[member.member_id] = member
        self.by_uuid[ch.uuid] = (name, member.member_id)
        ch.conference = name
        self.emu._answer(ch)
        self._fire(room, "add-member", member)
        if not room.floor:
            self._floor(room, member.member_id)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                self.leave(ch)
        return "_none_"  # pragma: no cover - only left by cancellation

    def leave(self, ch: Channel) -> None:
        """The channel leaves its room (hangup, transfer, kick); idempotent."""
        where = self.by_uuid.pop(ch.uuid, None)
        ch.conference = None
        if where is None:
            return
        room = self.rooms.get(where[0])
        if room is None:
            return
        member = room.members.pop(where[1], None)
        if member is None:
            return
        self._fire(room, "del-member", member)
        if room.floor == member.member_id:
            nxt = max(room.members) if room.members else 0
            self._floor(room, nxt)
        if not room.members:
            self._fire(room, "conference-destroy")
            del self.rooms[room.name]

    #: the moderator controls group of docs/conferences.md: keys bound to the ``event`` action
    MODERATOR_EVENT_KEYS = frozenset({"*1", "*2", "*3"})

    def dtmf(self, ch: Channel, digit: str) -> None:
        """Caller controls of the default group: 0 toggles mute, # leaves; a moderator's ``*N``
        bound to the ``event`` action fires Action dtmf with DTMF-Key (and Data), as
        conference_loop_event does."""
        where = self.by_uuid.get(ch.uuid)
        if where is None:
            return
        room = self.rooms[where[0]]
        member = room.members[where[1]]
        if member.moderator and (member.keys or digit == "*"):
            member.keys += digit
            if len(member.keys) == 2:
                keys, member.keys = member.keys, ""
                if keys in self.MODERATOR_EVENT_KEYS:
                    self._fire(room, "dtmf", member, {"DTMF-Key": keys, "Data": ""})
            return
        if digit == "0":
            member.muted = not member.muted
            self._fire(room, "mute-member" if member.muted else "unmute-member", member)
        elif digit == "#":
            self.emu._nursery.start_soon(self.emu.hangup, ch.uuid)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ the api
    async def api(self, arg: str) -> str:
        words = arg.split()
        if not words or words[0] == "list":
            return self._list_all()
        room = self.rooms.get(words[0])
        if room is None:
            return f"-ERR Conference {words[0]} not found\n"
        verb = words[1] if len(words) > 1 else "list"
        if verb == "list":
            return self._rows(room)
        if verb in ("mute", "unmute", "kick"):
            if len(words) < 3:
                return f"-ERR usage: conference <room> {verb} <member_id>\n"
            mid = int(words[2]) if words[2].isdigit() else -1
            member = room.members.get(mid)
            if member is None:
                return f"-ERR Non-Existant ID {words[2]}\n"
            if verb == "kick":
                self._fire(room, "kick-member", member)
                member.kicked = True
                ch = self.emu.channels.get(member.uuid)
                if ch is not None:
                    # the conference app ends (del-member from its own task), then the call hangs up
                    for scope in self.emu._scopes.get(ch.uuid, []):
                        scope.cancel()
                    self.emu._nursery.start_soon(self.emu.hangup, ch.uuid)  # type: ignore[union-attr]
                return f"+OK kicked {mid}\n"
            member.muted = verb == "mute"
            self._fire(room, f"{verb}-member", member)
            return f"+OK {verb} {mid}\n"
        return f"-ERR Unknown conference command {verb}\n"

    def _rows(self, room: EmuRoom) -> str:
        out = []
        for mid in sorted(room.members, reverse=True):
            m = room.members[mid]
            ch = self.emu.channels.get(m.uuid)
            flags = ["hear"] + ([] if m.muted else ["speak"]) + (["floor"] if room.floor == mid else []) \
                + (["moderator"] if m.moderator else [])
            name = ch.name if ch is not None else ""
            cid_name = ch.caller_name if ch is not None else ""
            cid_num = ch.caller_number if ch is not None else ""
            out.append(f"{mid};{name};{m.uuid};{cid_name};{cid_num};{'|'.join(flags)};0;0;100\n")
        return "".join(out)

    def _list_all(self) -> str:
        return "".join(
            f"+OK Conference {r.name} ({len(r.members)} member{'s' if len(r.members) != 1 else ''} "
            "rate: 8000 flags: running|answered|enforce_min|dynamic|exit_sound|enter_sound|json_status)\n"
            + self._rows(r) for r in self.rooms.values()) or "+OK No active conferences.\n"
