"""The simulator's conference rooms (#10 parts 3 and 8): mod_conference in virtual time over the
engine's own room machines (``engine.conference.ConferenceService``, ``engine.fsm.conference``).

Rules
1. The switch side is FreeSWITCH's, as the emulator does it (sim/freeswitch/conference.py): a
   ``MediaConference`` puts the leg in the room (``conference-create`` for the first, then
   ``add-member``), a hangup or a kick takes it out (``del-member``, ``conference-destroy`` for the
   last); member ids come from one pool. The machines see exactly the ``ConferenceMaintenance``
   inputs the ESL mapping would give them.
2. A kick is decided by the machine (``ConferenceService.request``: unknown member NOT_FOUND, a
   non-moderator asker PERMISSION_DENIED) and performed here: ``kick-member``, the member leaves,
   its leg hangs up (the call machine sees ``ChannelHangup``), as the emulator does.
3. Measured from the machines' CTI: rooms used, members joined, kicks, the peak number of members
   in a room and the time members spent in rooms; the report section exists only in runs that
   used a room (older reports stay byte-identical).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from engine.conference import ConferenceService, RoomConfig, hash_pin, switch_room
from engine.messages import ChannelHangup, ConferenceMaintenance, CtiEvent, MediaConference, Reply

if TYPE_CHECKING:
    from sim.core import Simulator

__all__ = ["SimConferences", "CONFERENCE_EVENTS"]

CONFERENCE_EVENTS = frozenset({"CONFERENCE_STARTED", "CONFERENCE_ENDED", "CONFERENCE_MEMBER_JOINED",
                               "CONFERENCE_MEMBER_LEFT", "CONFERENCE_MEMBER_KICKED",
                               "CONFERENCE_MEMBER_MUTED", "CONFERENCE_MEMBER_UNMUTED",
                               "CONFERENCE_FLOOR_CHANGED"})

#: PBKDF2 rounds for the simulator's PINs (the hash format is the product's; fewer rounds keep
#: scripted runs fast)
SIM_PIN_ROUNDS = 1000


class SimConferences:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.service = ConferenceService(self._publish)
        self._next_id = 0
        #: (call id, leg) -> (switch room, member id)
        self.where: dict[tuple[str, str], tuple[str, int]] = {}
        #: switch room -> member id -> (call id, leg)
        self.rooms: dict[str, dict[int, tuple[str, str]]] = {}
        self.used: set[str] = set()
        self.joined = 0
        self.kicked = 0
        self.left = 0
        self.seconds_sum = 0.0
        self.seconds_max = 0.0
        self.peak = 0
        self.cti: list[CtiEvent] = []

    # ------------------------------------------------------------------ configuration
    def add_room(self, number: str, *, tenant: str = "default", moderator_pin: str = "",
                 member_pin: str = "", wait_for_moderator: bool = False, max_members: int = 0,
                 flags: tuple[str, ...] = ()) -> RoomConfig:
        salt = f"sim:{tenant}:{number}".encode().ljust(16, b"\0")[:16]
        room = RoomConfig(tenant=tenant, number=number,
                          moderator_pin_hash=hash_pin(moderator_pin, salt, SIM_PIN_ROUNDS) if moderator_pin else "",
                          member_pin_hash=hash_pin(member_pin, salt, SIM_PIN_ROUNDS) if member_pin else "",
                          wait_for_moderator=wait_for_moderator, max_members=max_members, flags=flags)
        self.service.set_rooms([*self.service.configs.values(), room])
        return room

    # ------------------------------------------------------------------ the switch
    def _event(self, t: float, action: str, room: str, member_id: int = 0, call_id: str = "",
               moderator: bool = False, floor: int = 0, key: str = "") -> None:
        asks = self.service.observe(ConferenceMaintenance(
            room=room, action=action, at=t, node="sim", member_id=member_id,  # type: ignore[arg-type]
            call_id=call_id, moderator=moderator, size=len(self.rooms.get(room, {})), floor=floor, key=key))
        for ask in asks:  # a moderator's key: the switch does what the machine asked
            self._perform(t, room, ask)

    def press(self, t: float, call_id: str, key: str, leg: str = "a") -> None:
        """A member presses ``key`` bound to a caller-control ``event`` action (``*1``, ...)."""
        where = self.where.get((call_id, leg))
        if where is not None:
            self._event(t, "dtmf", where[0], where[1], call_id, key=key)

    def media(self, t: float, cmd: MediaConference) -> None:
        """A leg enters ``cmd.room`` (the switch ran the ``conference`` app)."""
        key = (cmd.call_id, cmd.leg)
        if key in self.where:
            self.leave(t, cmd.call_id, cmd.leg)
        members = self.rooms.get(cmd.room)
        if members is None:
            members = self.rooms[cmd.room] = {}
            self._event(t, "conference-create", cmd.room)
        self._next_id += 1
        members[self._next_id] = key
        self.where[key] = (cmd.room, self._next_id)
        self._event(t, "add-member", cmd.room, self._next_id, cmd.call_id, moderator="moderator" in cmd.flags)
        caller = self.sim.callers.get(cmd.call_id)
        if cmd.leg == "a" and caller is not None and not caller.connected and caller.handle_s < math.inf:
            # a caller that dialled into the room (a flow's conference node) talks there for its
            # handle time, then hangs up, as a connected caller would
            caller.connected = True
            tok = caller.hangup_token = self.sim._token()
            self.sim._at(t + caller.handle_s, self.sim._hangup_after_talk, (cmd.call_id, tok))

    def leave(self, t: float, call_id: str, leg: str) -> None:
        where = self.where.pop((call_id, leg), None)
        if where is None:
            return
        room, member_id = where
        members = self.rooms[room]
        members.pop(member_id, None)
        self._event(t, "del-member", room, member_id, call_id)
        if not members:
            del self.rooms[room]
            self._event(t, "conference-destroy", room)

    def leave_call(self, t: float, call_id: str) -> None:
        """The call is over: every leg of it still in a room leaves."""
        for key in [k for k in self.where if k[0] == call_id]:
            self.leave(t, *key)

    # ------------------------------------------------------------------ control
    def control(self, t: float, number: str, action: str, member_id: int, *, tenant: str = "default",
                by_member: int = 0) -> Reply:
        """Mute/unmute/kick as the API would ask; the machine decides, the switch here performs."""
        reply, asks = self.service.request(tenant, number, action, member_id, at=t, by_member=by_member)
        for ask in asks:
            room = switch_room(tenant, number)
            call_leg = self.rooms.get(room, {}).get(ask.member_id)
            if call_leg is None:
                return Reply(request_id=reply.request_id, ok=False, code="FAILED_PRECONDITION",
                             message=f"-ERR Non-Existant ID {ask.member_id}")
            self._perform(t, room, ask)
        return reply

    def _perform(self, t: float, room: str, ask: Any) -> None:
        call_leg = self.rooms.get(room, {}).get(ask.member_id)
        if call_leg is None:
            return  # -ERR Non-Existant ID: the member left meanwhile
        call_id, leg = call_leg
        if ask.action == "kick":
            self._event(t, "kick-member", room, ask.member_id, call_id)
            self.leave(t, call_id, leg)
            self.sim.deliver("call", call_id, ChannelHangup(call_id=call_id, at=t, leg=leg,
                                                            cause="NORMAL_CLEARING"))
        else:
            self._event(t, f"{ask.action}-member", room, ask.member_id, call_id)

    # ------------------------------------------------------------------ measurement
    def _publish(self, ev: CtiEvent) -> None:
        from sim.core import Observation

        self.cti.append(ev)
        d = ev.data
        name = ev.name
        if name == "CONFERENCE_STARTED":
            self.used.add(str(d.get("room", "")))
        elif name == "CONFERENCE_MEMBER_JOINED":
            self.used.add(str(d.get("room", "")))
            self.joined += 1
            self.peak = max(self.peak, int(d.get("members", 0)))  # type: ignore[call-overload]
        elif name == "CONFERENCE_MEMBER_KICKED":
            self.kicked += 1
        elif name == "CONFERENCE_MEMBER_LEFT":
            self.left += 1
            seconds = float(d.get("seconds", 0.0))  # type: ignore[arg-type]
            self.seconds_sum += seconds
            self.seconds_max = max(self.seconds_max, seconds)
        caller = self.sim.callers.get(ev.call_id) or self.sim.ended_callers.get(ev.call_id)
        if caller is not None and caller.log is not None and name in (
                "CONFERENCE_MEMBER_JOINED", "CONFERENCE_MEMBER_LEFT", "CONFERENCE_MEMBER_KICKED",
                "CONFERENCE_MEMBER_MUTED", "CONFERENCE_MEMBER_UNMUTED"):
            caller.log.append(Observation(ev.at, name.removeprefix("CONFERENCE_MEMBER_").lower()
                                          .replace("joined", "conference_joined")
                                          .replace("left", "conference_left"), dict(d)))

    def active(self) -> bool:
        return bool(self.used)

    def report(self) -> dict[str, Any]:
        return {"rooms": len(self.used), "joined": self.joined, "kicked": self.kicked,
                "peak_members": self.peak,
                "mean_s_in_conference": round(self.seconds_sum / self.left, 3) if self.left else 0.0,
                "max_s_in_conference": round(self.seconds_max, 3)}
