"""Scripted callers: a small API for call-flow tests, over the simulator.

Rules
1. A script reads like what a tester would do on a phone: call a DID, expect a prompt, press
   digits, expect a queue, expect an agent with a skill to answer within 30 s, hang up.
2. Every ``expect_*`` advances *virtual* time only as far as needed (at most ``within`` seconds),
   so scripts are fast and deterministic. A failed expectation raises ``AssertionError`` listing
   everything the caller observed, with times.
3. The world is the real thing: the scenario's queues and agents, the production call, agent and
   queue machines and the production flow interpreter. Background traffic is off unless asked for.

Example::

    world = World.from_file("examples/office/scenario.yaml")
    caller = world.call("+15550100")
    caller.expect_prompt("welcome.wav")
    caller.press("2")
    caller.expect_queue("support")
    agent = caller.expect_answered(within=30, skill="support")
    caller.hangup()
    caller.expect_ended()
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable
from typing import Any

from sim.core import CallerModel, Observation, Simulator
from sim.scenario import Scenario, load_scenario

__all__ = ["World", "ScriptedCall"]


class World:
    """A simulated switch, agents and queues that scripted callers can dial into."""

    def __init__(self, scenario: Scenario, *, seed: int | None = None, traffic: bool = False,
                 start_at: float = 0.0) -> None:
        self.scenario = scenario
        self.sim = Simulator(scenario, seed, traffic=traffic)
        # let agents log in (scheduled at their login times) before the first call
        self.sim.run_until(start_at)

    @classmethod
    def from_file(cls, path: str | pathlib.Path, **kwargs: Any) -> World:
        return cls(load_scenario(path), **kwargs)

    @property
    def now(self) -> float:
        return self.sim.now

    def call(self, did: str, caller_id: str = "+15550000000", *, talk_s: float = math.inf) -> ScriptedCall:
        """Dial ``did`` now. ``talk_s``: once connected, the caller hangs up after that long."""
        call_id = self.sim.place_call(did, caller_id, handle_s=talk_s)
        caller = self.sim.callers.get(call_id) or self.sim.ended_callers[call_id]
        return ScriptedCall(self, call_id, caller)

    def advance(self, seconds: float) -> None:
        self.sim.run_until(self.sim.now + seconds)

    def agent(self, agent_id: str) -> Any:
        return self.sim.agents[agent_id]

    # ---- parking and pickup (#10 part 4) --------------------------------------------------------

    def pickup_groups(self, groups: dict[str, list[str]], tenant: str = "default") -> None:
        """The tenant's pickup groups: group name -> member extensions."""
        self.sim.ringing_view.set_groups(tenant, groups)

    def pick_up_slot(self, slot: str, extension: str, tenant: str = "default") -> str:
        """``extension`` picks up the call parked in ``slot`` now; returns its call id."""
        call_id = self.sim.pickup_slot(slot, extension, tenant)
        assert call_id, f"no call is parked in slot {slot} of tenant {tenant}"
        self.sim.run_until(self.sim.now)
        return call_id

    def pick_up_directed(self, target: str, extension: str, tenant: str = "default") -> str:
        """``extension`` takes the call ringing ``target`` now; returns its call id."""
        call_id = self.sim.pickup_directed(target, extension, tenant)
        assert call_id, f"nothing is ringing {target} in tenant {tenant}"
        self.sim.run_until(self.sim.now)
        return call_id

    def pick_up_group(self, extension: str, tenant: str = "default") -> str:
        """``extension`` takes the oldest call ringing another member of its pickup group now."""
        call_id = self.sim.pickup_group(extension, tenant)
        assert call_id, f"nothing rings the pickup group of {extension} in tenant {tenant}"
        self.sim.run_until(self.sim.now)
        return call_id


    # ---- voicemail (#10 part 1; sim/voicemail.py) -----------------------------------------------

    def mailbox(self, box: str, pin: str, tenant: str = "default") -> None:
        """Give mailbox ``box`` a PIN so its owner can retrieve messages."""
        self.sim.stats.voicemail.set_pin(box, pin, tenant)

    def retrieve_voicemail(self, box: str, keys: str, tenant: str = "default") -> list[Any]:
        """The owner of ``box`` presses ``keys`` in the voicemail menu (PIN, ``#``, then 1 / 9 / 7 /
        ``#``); returns the menu's actions (``engine.voicemail``)."""
        return self.sim.stats.voicemail.retrieve(box, keys, tenant)


    # ---- conferences (#10 part 3; sim/conference.py) --------------------------------------------

    def conference_room(self, number: str, *, tenant: str = "default", moderator_pin: str = "",
                        member_pin: str = "", wait_for_moderator: bool = False, max_members: int = 0,
                        flags: tuple[str, ...] = ()) -> None:
        """Configure conference room ``number`` (PINs are hashed as the product stores them)."""
        self.sim.conferences.add_room(number, tenant=tenant, moderator_pin=moderator_pin,
                                      member_pin=member_pin, wait_for_moderator=wait_for_moderator,
                                      max_members=max_members, flags=flags)

    def conference_members(self, number: str, tenant: str = "default") -> list[Any]:
        """The room's live members (``engine.fsm.conference.Member``), by member id."""
        return self.sim.conferences.service.members(tenant, number)

    def conference_control(self, number: str, action: str, member_id: int, *, tenant: str = "default",
                           by_member: int = 0) -> Any:
        """Mute/unmute/kick now, as a supervisor (``by_member=0``) or a member would through the API;
        returns the machine's reply."""
        reply = self.sim.conferences.control(self.sim.now, number, action, member_id, tenant=tenant,
                                             by_member=by_member)
        self.sim.run_until(self.sim.now)
        return reply


class ScriptedCall:
    def __init__(self, world: World, call_id: str, caller: CallerModel) -> None:
        self.world = world
        self.call_id = call_id
        self._caller = caller
        self._cursor = 0

    @property
    def log(self) -> list[Observation]:
        assert self._caller.log is not None
        return self._caller.log

    @property
    def state(self) -> Any:
        """The call machine's state (None once the call has ended and its actor stopped)."""
        return self.world.sim.calls.get(self.call_id)

    def _expect(self, what: str, within: float, match: Callable[[Observation], bool]) -> Observation:
        sim = self.world.sim
        deadline = sim.now + within
        log = self.log

        def found() -> Observation | None:
            for i in range(self._cursor, len(log)):
                if match(log[i]):
                    self._cursor = i + 1
                    return log[i]
            return None

        hit = found()
        if hit is None:
            seen = [len(log)]

            def stop() -> bool:
                if len(log) != seen[0]:
                    seen[0] = len(log)
                    return any(match(o) for o in log[self._cursor:])
                return False

            sim.run_until(deadline, stop)
            hit = found()
        if hit is None:
            lines = "\n".join(f"  {o.at:9.3f}s {o.kind} {o.detail}" for o in log) or "  (nothing)"
            raise AssertionError(f"call {self.call_id}: expected {what} within {within:g}s "
                                 f"(until t={deadline:.3f}s); the caller observed:\n{lines}")
        return hit

    def expect_prompt(self, file: str, within: float = 10.0) -> Observation:
        return self._expect(f"prompt {file!r}", within, lambda o: o.kind == "prompt" and o.detail["file"] == file)

    def expect_queue(self, queue: str, within: float = 10.0) -> Observation:
        return self._expect(f"to enter queue {queue!r}", within, lambda o: o.kind == "queue" and o.detail["queue"] == queue)

    def expect_ringing(self, destination: str, within: float = 10.0) -> Observation:
        return self._expect(f"{destination!r} to ring", within,
                            lambda o: o.kind == "ringing" and o.detail["destination"] == destination)

    def expect_trunk(self, gateway: str, within: float = 10.0) -> Observation:
        """An outbound call dials out through trunk gateway ``gateway`` (failover included)."""
        return self._expect(f"a trunk leg through gateway {gateway!r}", within,
                            lambda o: o.kind == "ringing" and o.detail.get("gateway") == gateway)

    def expect_answered(self, within: float = 30.0, *, skill: str | None = None, agent: str | None = None,
                        destination: str | None = None) -> str:
        """Wait until someone answers; return the agent id ("" for a non-agent destination)."""
        specs = self.world.sim.specs

        def ok(o: Observation) -> bool:
            if o.kind != "answered":
                return False
            who = o.detail["agent"]
            if agent is not None and who != agent:
                return False
            if destination is not None and o.detail["destination"] != destination:
                return False
            return skill is None or (bool(who) and skill in specs[who].skills)

        label = "an answer" + (f" by an agent with skill {skill!r}" if skill else "") + (f" by {agent!r}" if agent else "")
        return self._expect(label, within, ok).detail["agent"]

    def expect_voicemail(self, within: float = 15.0) -> Observation:
        return self._expect("voicemail recording", within, lambda o: o.kind == "voicemail")

    def leave_message(self, seconds: float) -> None:
        """When a voicemail recording starts, talk ``seconds`` and fall silent (the switch's silence
        detection then ends the message); without it the caller talks until the time limit."""
        self.world.sim.stats.voicemail.message_s[self.call_id] = seconds

    def expect_voicemail_left(self, within: float = 200.0) -> Observation:
        return self._expect("a voicemail message", within, lambda o: o.kind == "voicemail_new")

    def expect_voicemail_abandoned(self, within: float = 60.0) -> Observation:
        return self._expect("an abandoned voicemail", within, lambda o: o.kind == "voicemail_abandoned")

    def expect_ended(self, within: float = 10.0, disposition: str | None = None) -> Observation:
        return self._expect(f"the call to end{f' as {disposition!r}' if disposition else ''}", within,
                            lambda o: o.kind == "ended" and (disposition is None or o.detail["disposition"] == disposition))

    def park(self, slot: str = "", *, timeout_s: float = 60.0, fallback: str = "") -> str:
        """The party talking to this caller parks it now; returns the slot."""
        slot = self.world.sim.park(self.call_id, slot, timeout_s=timeout_s, fallback=fallback)
        self.world.sim.run_until(self.world.sim.now)
        return slot

    def expect_parked(self, within: float = 5.0) -> Observation:
        return self._expect("to be parked", within, lambda o: o.kind == "parked")

    def expect_park_timeout(self, target: str, within: float = 120.0) -> Observation:
        """The park timed out and rings ``target`` (the parker, then the fallback)."""
        return self._expect(f"the park to time out to {target!r}", within,
                            lambda o: o.kind == "park_timeout" and o.detail["target"] == target)

    def expect_picked_up(self, kind: str = "slot", within: float = 5.0) -> Observation:
        return self._expect(f"a {kind} pickup", within, lambda o: o.kind == "picked_up" and o.detail["kind"] == kind)

    def join_conference(self, number: str, pin: str = "", *, tenant: str = "default") -> Any:
        """Move this call into conference room ``number`` now, as the API's JoinConference does
        (the PIN decides; raises ``engine.conference.ConferenceError`` as the API refuses)."""
        from engine.messages import JoinConference

        sim = self.world.sim
        d = sim.conferences.service.join_check(tenant, number, pin)
        call = sim.calls.get(self.call_id)
        room_flags = tuple(f for f in d.flags if f != "moderator")
        flags, connected = (room_flags, d.flags) if call is not None and call.connected else (d.flags, ())
        sim._at(sim.now, sim._command, (self.call_id, JoinConference(
            call_id=self.call_id, at=sim.now, room=d.room, flags=flags, connected_flags=connected)))
        sim.run_until(sim.now)
        return d

    def expect_conference(self, within: float = 5.0) -> Observation:
        """This call's first (or next) leg entered a conference room."""
        return self._expect("to join a conference", within, lambda o: o.kind == "conference_joined")

    def expect_kicked(self, within: float = 5.0) -> Observation:
        return self._expect("to be kicked from the conference", within, lambda o: o.kind == "kicked")

    def conference_key(self, key: str) -> None:
        """In a room, press a moderator key now: ``*1`` mutes the others, ``*2`` unmutes them,
        ``*3`` kicks the one who joined last (FreeSWITCH's caller-control ``event`` action)."""
        self.world.sim.conferences.press(self.world.sim.now, self.call_id, key)
        self.world.sim.run_until(self.world.sim.now)

    # ---- recordings (#10 part 2; docs/recordings.md) -------------------------------------------

    def start_recording(self, consent: str = "", **options: Any) -> None:
        """Start recording this call now, after the announcement ``consent`` ("" = none)."""
        self.world.sim.record(self.call_id, "start", consent=consent, **options)
        self.world.sim.run_until(self.world.sim.now)

    def pause_recording(self, **options: Any) -> None:
        self.world.sim.record(self.call_id, "pause", **options)
        self.world.sim.run_until(self.world.sim.now)

    def resume_recording(self) -> None:
        self.world.sim.record(self.call_id, "resume")
        self.world.sim.run_until(self.world.sim.now)

    def stop_recording(self, **options: Any) -> None:
        self.world.sim.record(self.call_id, "stop", **options)
        self.world.sim.run_until(self.world.sim.now)

    def expect_recording(self, event: str = "started", within: float = 10.0) -> Observation:
        """The recording ``event`` happened (consent, started, paused, resumed, stopped, failed)."""
        return self._expect(f"the recording to be {event}", within, lambda o: o.kind == f"recording_{event}")

    def press(self, digits: str) -> None:
        """Press ``digits`` now, 0.3 s apart."""
        self.world.sim.press(self.call_id, digits)

    def hangup(self) -> None:
        self.world.sim.hangup(self.call_id)
        self.world.sim.run_until(self.world.sim.now)

    def wait(self, seconds: float) -> None:
        self.world.advance(seconds)
