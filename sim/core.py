"""The deterministic call-centre simulator: the production state machines in virtual time.

Rules
1. Seeded and synchronous: one ``random.Random`` per purpose, seeded from the scenario seed and a
   name (string seeding is stable across runs and platforms); no wall clock, no threads, no set
   iteration. The same scenario and seed give the same event sequence and a byte-identical report.
2. Nothing here decides about a call, an agent or a queue. ``engine.fsm.call``, ``agent`` and
   ``queue`` (and through the call machine, ``engine.flows``) decide; the simulator only performs
   their effects in virtual time and plays the outside world: the switch (media), the callers and
   the agents' hands.
3. Invariants are checked after every step; a violation stops the run with an ``InvariantViolation``
   naming the seed, the virtual time and what broke (the CLI prints a replay command).

Theory of operation
Pending work lives in a heap of ``(time, sequence, action, argument)``; the sequence number makes
ties deterministic (first scheduled, first run). Messages that actors send each other are delivered
at the same virtual time through a FIFO (``_now``), drained after every heap event, so a burst of
routing messages settles before time moves on. Timers are heap entries with a token; cancelling or
restarting a key forgets the token, and a fired entry whose token is stale is dropped.

The outside world:
* *Switch*: ``MediaOriginate`` to an agent's extension rings that agent, who answers after
  ``answer_delay_s`` unless the offer is let ring out (``no_answer_p``); ``MediaPlay`` finishes
  after the prompt's duration; ``MediaBridge`` of the caller starts the conversation;
  ``MediaHangup`` removes a leg.
* *Callers* arrive by a Poisson process per traffic stream (rate constant within an interval), get
  a handle time and a patience at birth, press DTMF when a menu prompt ends (by the scenario's
  probabilities), abandon when their patience, counted from entering a queue, runs out, and hang
  up when the conversation has lasted their handle time.
* *Trunks*: a ``MediaOriginate`` through a gateway reaches the scenario's emulated trunk, which
  is down (GATEWAY_DOWN), over its carrier limit (congestion), busy or congested by its
  probabilities, or answers after ``answer_delay_s``. An ``outbound`` DID is planned by
  ``engine.routing.outbound.plan`` with the trunks' live calls as usage; the call machine fails over.
* *Agents* log in and out on schedule and come back from NOT_READY(missed_offers) after
  ``recover_s``.

Measurements come from what the machines publish (``QUEUE_ENTERED`` / ``QUEUE_LEFT`` CTI events,
CDRs, agent state changes); see ``sim.report``.
"""

from __future__ import annotations

import heapq
import math
import random
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from engine.flows.interpreter import FlowRun
from engine.flows.model import MenuNode
from engine.fsm import agent as agent_fsm
from engine.fsm import call as call_fsm
from engine.fsm import queue as queue_fsm
from engine.fsm.agent import AgentState
from engine.fsm.call import CallState
from engine.messages import (
    AgentLogin,
    AgentLogout,
    AgentReady,
    CancelTimer,
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    DtmfReceived,
    EnterFlow,
    Hangup,
    HangupCause,
    MediaBridge,
    MediaBroadcast,
    MediaConference,
    MediaHangup,
    MediaOriginate,
    MediaPlay,
    MediaRecordStart,
    MediaStopPlayback,
    Park,
    PauseRecording,
    Pickup,
    PlaybackFinished,
    PublishCti,
    QueueCall,
    RecordingStopped,
    ReserveAgent,
    ResumeRecording,
    RouteToQueue,
    Send,
    SendMedia,
    StartRecording,
    StartTimer,
    Stop,
    StopRecording,
    TimerFired,
    WriteCdr,
)
from engine.parking import ParkingLot, RingingView
from engine.routing.outbound import DialPlan, plan, to_route
from engine.routing.router import REFUSAL_CAUSES, refusal
from sim.recordings import RECORDING_EVENT_NAMES
from sim.scenario import (
    AgentSpec,
    Dist,
    Scenario,
    SimTrunk,
    Traffic,
    expand_agents,
    outbound_config,
)
from sim.voicemail import VOICEMAIL_EVENTS, record_end

__all__ = ["Simulator", "InvariantViolation", "CallerModel", "Observation"]

_PARKING_EVENTS = frozenset({"CALL_PARKED", "CALL_PARK_TIMEOUT", "CALL_PICKED_UP"})
_RINGING_EVENTS = frozenset({"CALL_RINGING", "CALL_ANSWERED", "CALL_PICKED_UP", "CALL_PARKED", "CALL_ENDED",
                             "CALL_TRANSFERRED"})


#: after the last arrival, calls in progress get this long (virtual) to finish
DRAIN_S = 4 * 3600.0
#: states in which a caller still waiting at the end of the drain simply gives up
_GIVE_UP_STATES = (CallState.ROUTING, CallState.IN_FLOW, CallState.QUEUED)
#: a synthetic caller still in ROUTING (nothing answered, nothing played) after this long hangs up
DEAD_AIR_S = 60.0


_TONE = re.compile(r"%\(([0-9]+),([0-9]+)")
_LOOPS = re.compile(r";loops=(-?[0-9]+)")


def tone_stream_s(spec: str) -> float:
    """The length of a ``tone_stream://%(on_ms,off_ms,freq...)...[;loops=N]`` (once for loops=-1)."""
    cycle = sum(int(on) + int(off) for on, off in _TONE.findall(spec)) / 1000.0
    loops = _LOOPS.search(spec)
    return cycle * max(1, int(loops.group(1)) if loops else 1)


class InvariantViolation(Exception):
    """An invariant broke. ``seed`` and ``at`` say how to replay it."""

    def __init__(self, seed: int, at: float, what: str) -> None:
        self.seed = seed
        self.at = at
        self.what = what
        super().__init__(f"seed {seed}, t={at:.3f}s: {what}")


class Observation:
    """Something a scripted caller can see: ``kind`` is prompt, queue, ringing, answered, ended..."""

    __slots__ = ("at", "kind", "detail")

    def __init__(self, at: float, kind: str, detail: dict[str, Any]) -> None:
        self.at = at
        self.kind = kind
        self.detail = detail

    def __repr__(self) -> str:
        return f"Observation({self.at:.3f}, {self.kind!r}, {self.detail!r})"


class CallerModel:
    """The simulated person behind a call (scripted callers have no automatic behaviour)."""

    __slots__ = ("call_id", "traffic", "handle_s", "patience_s", "priority", "scripted", "gone",
                 "connected", "abandon_token", "hangup_token", "queued_at", "log", "rng_draw", "arrived")

    def __init__(self, call_id: str, traffic: int, handle_s: float, patience_s: float, priority: int,
                 scripted: bool, rng_draw: float, arrived: float) -> None:
        self.call_id = call_id
        self.traffic = traffic
        self.handle_s = handle_s
        self.patience_s = patience_s
        self.priority = priority
        self.scripted = scripted
        self.gone = False
        self.connected = False
        self.abandon_token = 0
        self.hangup_token = 0
        self.queued_at = -1.0
        self.log: list[Observation] | None = [] if scripted else None
        #: one uniform draw per call, reserved for its DTMF choices (keeps streams independent)
        self.rng_draw = rng_draw
        self.arrived = arrived


def draw(rng: random.Random, d: Dist) -> float:
    if d.dist == "none":
        return math.inf
    if d.dist == "fixed":
        return d.mean_s
    if d.dist == "exponential":
        return rng.expovariate(1.0 / d.mean_s)
    # lognormal given the mean and standard deviation of the duration itself
    sigma2 = math.log(1.0 + (d.sd_s / d.mean_s) ** 2)
    mu = math.log(d.mean_s) - sigma2 / 2.0
    return rng.lognormvariate(mu, math.sqrt(sigma2))


class Simulator:
    """One simulated run. ``run()`` for a whole scenario; ``place_call`` / ``run_until`` for scripts."""

    def __init__(self, scenario: Scenario, seed: int | None = None, *, traffic: bool = True,
                 check: bool = True, progress: Callable[[float], None] | None = None) -> None:
        self.sc = scenario
        self.seed = scenario.seed if seed is None else seed
        self.check = check
        self.progress = progress
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[float, Any], None], Any]] = []
        self._seq = 0
        self._tok = 0
        self._now: deque[tuple[str, str, Any]] = deque()
        self._timers: dict[tuple[str, str, str], int] = {}
        self.calls: dict[str, call_fsm.Call] = {}
        self.agents: dict[str, agent_fsm.Agent] = {}
        self.queues: dict[str, queue_fsm.Queue] = {}
        self.callers: dict[str, CallerModel] = {}
        #: scripted callers stay inspectable after their call ended
        self.ended_callers: dict[str, CallerModel] = {}
        self.specs: dict[str, AgentSpec] = {}
        self.by_extension: dict[str, AgentSpec] = {}
        #: pending "answer" per originated leg, so a hangup of that leg cancels it
        self._leg_tokens: dict[str, int] = {}
        self._leg_dest: dict[str, str] = {}
        #: trunk legs alive on each gateway (leg -> gateway)
        self._leg_gateway: dict[str, str] = {}
        self.outbound = outbound_config(scenario)
        self._gateways: dict[str, SimTrunk] = {t.gateway or t.id: t for t in scenario.trunks}
        self._playback: dict[str, int] = {}
        #: agent -> call it is connected to (invariant: at most one)
        self._agent_call: dict[str, str] = {}
        self._cdrs: set[str] = set()
        self._crash: dict[str, int] = {}
        self._outage_until = -1.0
        self._disconnected: set[str] = set()
        self.call_seq = 0
        self.events = 0
        self.stats = Collector(scenario)
        #: parking (#10 part 4): the tenants' park slots and who rings where (engine.parking),
        #: fed from the machines' CTI events as a node's view would be
        self.parking = ParkingLot()
        self.ringing_view = RingingView()
        #: conference rooms (#10 part 3; sim/conference.py): mod_conference over the engine's room
        #: machines; the report reads it from the collector
        self.conferences = self.stats.conferences = SimConferences(self)
        self.violations: list[InvariantViolation] = []
        rng = _rngs(self.seed)
        self._rng_arrival = [rng(f"arrival:{i}") for i in range(len(scenario.traffic))]
        self._rng_caller = [rng(f"caller:{i}") for i in range(len(scenario.traffic))]
        self._rng_agent = rng("agents")
        self._rng_script = rng("script")
        self._rng_trunk = rng("trunks")
        self._build(traffic)

    # ---- set-up ------------------------------------------------------------------------------

    def _build(self, traffic: bool) -> None:
        sc = self.sc
        for cfg in sc.queues:
            self.queues[cfg.queue_id] = queue_fsm.new_queue(cfg)
            self.stats.add_queue(cfg)
        for spec in expand_agents(sc):
            self.specs[spec.id] = spec
            self.by_extension[spec.extension] = spec
            self.agents[spec.id] = agent_fsm.new_agent(spec.id, spec.tenant)
            self.stats.add_agent(spec.id)
            self._at(spec.login_s, self._login, spec.id)
            if spec.logout_s is not None:
                self._at(spec.logout_s, self._logout, spec.id)
        if traffic:
            for i, _tr in enumerate(sc.traffic):
                self._schedule_arrival(i, 0.0)
        for fault in sc.faults:
            self._at(fault.at_s, self._fault, fault)

    def _token(self) -> int:
        self._tok += 1
        return self._tok

    def _at(self, t: float, fn: Callable[[float, Any], None], arg: Any) -> int:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn, arg))
        return self._seq

    # ---- the loop ----------------------------------------------------------------------------

    def run(self) -> Collector:
        """Run the scenario to its end, then drain: no arrivals after ``duration_s``; live calls
        finish. Returns the statistics collector (``sim.report`` turns it into a report)."""
        end = self.sc.duration_s
        self.run_until(end)
        # drain: let calls in progress finish (bounded, in case something never ends)
        limit = end + DRAIN_S
        while self.calls and self._heap and self._heap[0][0] <= limit:
            self._step_one()
        self.now = max(self.now, end)
        # callers still waiting when the drain ends (nobody can serve them: no qualified agent,
        # infinite patience) give up; a call stuck in any other state is a bug, left for the checks
        # (a queued caller may be RINGING at that instant: an agent who never answers in time is
        # offered again and again; that caller is still waiting too)
        for call_id in [c.call_id for c in self.calls.values()
                        if c.state in _GIVE_UP_STATES or (c.state is CallState.RINGING and c.in_queue)]:
            self._caller_hangs_up(self.now, call_id, HangupCause.ORIGINATOR_CANCEL)
            self._drain()
            self.stats.gave_up_at_end += 1
        # a caller answered just before the bound is still talking: its own hangup is scheduled, and
        # with nobody waiting any more no new call is answered; let those conversations end (bounded
        # again, so a call that never ends is still caught by the checks)
        limit = max(self.now, limit) + DRAIN_S
        while self.calls and self._heap and self._heap[0][0] <= limit:
            self._step_one()
        if self.check:
            self._final_checks()
        self.stats.finish(self)
        return self.stats

    def run_until(self, t_end: float, stop: Callable[[], bool] | None = None) -> bool:
        """Process events up to virtual time ``t_end`` (or until ``stop()``). True if stopped."""
        heap = self._heap
        progress = self.progress
        next_progress = self.events + 20000
        while heap and heap[0][0] <= t_end:
            self._step_one()
            if stop is not None and stop():
                return True
            if progress is not None and self.events >= next_progress:
                next_progress = self.events + 20000
                progress(self.now)
        self.now = max(self.now, t_end)
        return False

    def _step_one(self) -> None:
        t, _seq, fn, arg = heapq.heappop(self._heap)
        if t < self.now:
            self._violation(f"time went backwards: {t} < {self.now}")
        self.now = t
        fn(t, arg)
        self._drain()

    def _prompt_s(self, file: str) -> float:
        """How long a prompt plays: the scenario's length for it; a FreeSWITCH ``tone_stream`` (a
        voicemail beep) as long as its tones say; else the scenario's default."""
        if file in self.sc.prompts:
            return self.sc.prompts[file]
        if file.startswith("tone_stream://"):
            return tone_stream_s(file)
        return self.sc.default_prompt_s

    def _drain(self) -> None:
        q = self._now
        deliver = self.deliver
        while q:
            kind, ident, msg = q.popleft()
            deliver(kind, ident, msg)

    # ---- delivering messages to the machines -------------------------------------------------

    def deliver(self, kind: str, ident: str, msg: Any) -> None:
        """Step actor (``kind``, ``ident``) with ``msg`` and perform the effects."""
        self.events += 1
        if self._crash:
            key = f"{kind}:{ident}"
            if key in self._crash or (kind == "call" and "call:*" in self._crash):
                # the actor crashed on this message: the supervisor restarts it from its last good
                # state (the one we still hold) and dead-letters the message
                self._crash.pop(key, None) if key in self._crash else self._crash.pop("call:*")
                self.stats.dead_letters += 1
                return
        if kind == "call":
            call = self.calls.get(ident)
            if call is None:
                return  # the call ended and its actor stopped: a late message goes nowhere
            new, effects = call_fsm.step(call, msg)
            self.calls[ident] = new
            self._perform(kind, ident, effects)
            if self.check and new.state is CallState.ENDED and ident in self.calls:
                self._violation(f"call {ident} reached ENDED without Stop")
        elif kind == "agent":
            agent = self.agents[ident]
            new, effects = agent_fsm.step(agent, msg)
            self.agents[ident] = new
            if new.state is not agent.state:
                self.stats.agent_state(ident, agent.state, new.state, self.now)
                if new.state is AgentState.NOT_READY and new.reason == "missed_offers":
                    self._at(self.now + self.specs[ident].recover_s, self._ready, ident)
            if self.check:
                if new.state is AgentState.ON_CALL and not new.call_id:
                    self._violation(f"agent {ident} ON_CALL without a call")
                if new.state is AgentState.RESERVED and not new.offer_id:
                    self._violation(f"agent {ident} RESERVED without an offer")
            self._perform(kind, ident, effects)
        else:
            queue = self.queues[ident]
            new, effects = queue_fsm.step(queue, msg)
            self.queues[ident] = new
            if type(msg) is QueueCall:
                immediate = any(type(e) is Send and type(e.message) is ReserveAgent
                                and e.message.call_id == msg.call_id for e in effects)
                self.stats.queue_entered(ident, msg.call_id, self.now, immediate)
            if len(new.waiting) != len(queue.waiting):
                self.stats.queue_length(ident, self.now, len(new.waiting))
            if self.check:
                st = new.stats
                if st.offered != st.answered + st.abandoned + st.overflowed + len(new.waiting):
                    self._violation(f"queue {ident}: offered {st.offered} != answered {st.answered} + "
                                    f"abandoned {st.abandoned} + overflowed {st.overflowed} + waiting {len(new.waiting)}")
            self._perform(kind, ident, effects)

    def _perform(self, kind: str, ident: str, effects: list[Any]) -> None:
        for e in effects:
            c = e.__class__
            if c is Send:
                self._now.append((e.to, e.to_id, e.message))
                if e.to == "queue" and e.message.__class__ is QueueCall:
                    self._caller_queued(e.message.call_id)
            elif c is PublishCti:
                ev = e.event
                if ev.name == "QUEUE_LEFT":
                    self.stats.queue_left(ev.queue_id, ev.call_id, ev.at, ev.data)
                elif ev.name == "CALL_TRUNK_FAILOVER":
                    self.stats.trunk_failover(str(ev.data.get("cause", "")))
                elif ev.name in _PARKING_EVENTS:
                    self._parking_event(ev)
                elif ev.name in VOICEMAIL_EVENTS:
                    self._voicemail_event(ev)
                elif ev.name in RECORDING_EVENT_NAMES:
                    self._recording_event(ev)
                if ev.name in _RINGING_EVENTS:
                    self.ringing_view.observe(ev)
            elif c is StartTimer:
                key = (kind, ident, e.key)
                self._seq += 1
                self._timers[key] = self._seq
                heapq.heappush(self._heap, (e.deadline, self._seq, self._fire, (key, self._seq)))
            elif c is CancelTimer:
                self._timers.pop((kind, ident, e.key), None)
            elif c is SendMedia:
                self._media(e.command)
            elif c is WriteCdr:
                cdr = e.cdr
                if self.check and cdr.call_id in self._cdrs:
                    self._violation(f"call {cdr.call_id} wrote a second CDR")
                self._cdrs.add(cdr.call_id)
                self.stats.cdr(cdr)
                caller = self.callers.get(cdr.call_id)
                if caller is not None and caller.log is not None:
                    caller.log.append(Observation(self.now, "ended", {"disposition": cdr.disposition,
                                                                       "cause": cdr.hangup_cause}))
            elif c is Stop:
                if kind == "call":
                    self._call_stopped(ident)

    def _fire(self, t: float, arg: tuple[tuple[str, str, str], int]) -> None:
        key, token = arg
        if self._timers.get(key) != token:
            return  # cancelled or replaced
        del self._timers[key]
        self.deliver(key[0], key[1], TimerFired(key=key[2], at=t))

    # ---- agents' hands -----------------------------------------------------------------------

    def _login(self, t: float, agent_id: str) -> None:
        if agent_id in self._disconnected:
            return
        spec = self.specs[agent_id]
        if self.agents[agent_id].state is AgentState.LOGGED_OUT:
            self.deliver("agent", agent_id, AgentLogin(agent_id=agent_id, at=t, extension=spec.extension,
                                                       queues=spec.queues, skills=spec.skills,
                                                       tenant=spec.tenant, ready=True))

    def _logout(self, t: float, agent_id: str) -> None:
        if self.agents[agent_id].state is not AgentState.LOGGED_OUT:
            self.deliver("agent", agent_id, AgentLogout(agent_id=agent_id, at=t))

    def _ready(self, t: float, agent_id: str) -> None:
        agent = self.agents[agent_id]
        if agent.state is AgentState.NOT_READY and agent.reason == "missed_offers":
            self.deliver("agent", agent_id, AgentReady(agent_id=agent_id, at=t))

    # ---- callers -----------------------------------------------------------------------------

    def _rate(self, tr: Traffic, t: float) -> float:
        """Arrivals per second at ``t`` (piecewise constant per interval)."""
        if tr.rates_per_hour:
            i = min(int(t // self.sc.interval_s), len(tr.rates_per_hour) - 1)
            return tr.rates_per_hour[i] / 3600.0
        return tr.rate_per_hour / 3600.0

    def _schedule_arrival(self, index: int, t: float) -> None:
        tr = self.sc.traffic[index]
        rng = self._rng_arrival[index]
        iv = self.sc.interval_s
        end = self.sc.duration_s
        while t < end:
            rate = self._rate(tr, t)
            boundary = (math.floor(t / iv) + 1) * iv if tr.rates_per_hour else end
            if rate > 0:
                nxt = t + rng.expovariate(rate)
                if nxt < boundary:
                    if nxt < end:
                        self._at(nxt, self._arrive, index)
                    return
            # memoryless: nothing before the boundary, start afresh with the next interval's rate
            t = boundary

    def _arrive(self, t: float, index: int) -> None:
        self._schedule_arrival(index, t)
        tr = self.sc.traffic[index]
        rng = self._rng_caller[index]
        handle = draw(rng, tr.handle)
        patience = draw(rng, tr.patience)
        priority = 0
        if tr.priorities:
            u, acc = rng.random(), 0.0
            priority = tr.priorities[-1].priority
            for share in tr.priorities:
                acc += share.share
                if u < acc:
                    priority = share.priority
                    break
        caller_id = tr.caller_ids[rng.randrange(len(tr.caller_ids))] if tr.caller_ids else f"+1555{rng.randrange(10**7):07d}"
        if t < self._outage_until:
            self.stats.fault_rejected += 1
            return
        call_id = self._new_call(t, tr.did, caller_id, CallerModel("", index, handle, patience, priority, False, rng.random(), t))
        # dead air: a caller who hears nothing at all (no answer, no prompt) hangs up after a while
        self._at(t + DEAD_AIR_S, self._dead_air, call_id)

    def place_call(self, did: str, caller_id: str = "+15550000000", *, at: float | None = None,
                   handle_s: float = math.inf, patience_s: float = math.inf) -> str:
        """A scripted caller: no automatic DTMF; hangs up after ``handle_s`` of conversation."""
        t = self.now if at is None else at
        caller = CallerModel("", -1, handle_s, patience_s, 0, True, 0.0, t)
        return self._new_call(t, did, caller_id, caller)

    def _new_call(self, t: float, did: str, caller_id: str, caller: CallerModel) -> str:
        self.call_seq += 1
        call_id = f"c{self.call_seq}"
        caller.call_id = call_id
        route = self.sc.dids.get(did)
        tenant = route.tenant if route else "default"
        self.callers[call_id] = caller
        call, effects = call_fsm.new_call(ChannelCreated(call_id=call_id, at=t, caller_id=caller_id,
                                                         destination=did, tenant=tenant))
        self.calls[call_id] = call
        self.stats.calls_created += 1
        self._perform("call", call_id, effects)
        if route is None:
            self.deliver("call", call_id, Hangup(call_id=call_id, at=t, cause=HangupCause.UNALLOCATED_NUMBER))
        elif route.outbound:
            self._outbound(t, call_id, did, caller_id, tenant)
        elif route.flow:
            self.deliver("call", call_id, self._enter_flow(call_id, t, route.flow))
        else:
            self.deliver("call", call_id, RouteToQueue(call_id=call_id, at=t, queue_id=route.queue,
                                                       priority=max(route.priority, caller.priority),
                                                       skills=route.skills))
        self._drain()
        return call_id

    def _outbound(self, t: float, call_id: str, number: str, caller_id: str, tenant: str) -> None:
        """Plan the outside number with the trunks' live calls (the engine's ledger counts the same:
        one per call, on the trunk of its latest attempt)."""
        usage: dict[str, int] = {}
        for other in self.calls.values():
            if other.trunk and other.tenant == tenant and other.call_id != call_id:
                usage[other.trunk] = usage.get(other.trunk, 0) + 1
        result = plan(number, self.outbound, usage, caller_id=caller_id)
        if isinstance(result, DialPlan):
            self.stats.outbound_planned += 1
            self.deliver("call", call_id, to_route(result, call_id=call_id, at=t))
            return
        self.stats.outbound_refused[result.reason] = self.stats.outbound_refused.get(result.reason, 0) + 1
        cause = REFUSAL_CAUSES.get(type(result), HangupCause.NO_ROUTE_DESTINATION)
        self.deliver("call", call_id, refusal(call_id, t, result, cause))

    def _trunk_leg(self, t: float, cmd: MediaOriginate) -> None:
        """A gateway leg: the emulated trunk decides (see the module docstring)."""
        gw = cmd.gateway
        trunk = self._gateways.get(gw)
        counts = self.stats.trunk(gw)
        counts["dialled"] += 1
        self._leg_dest[cmd.leg] = cmd.destination
        tok = self._leg_tokens[cmd.leg] = self._token()
        live = sum(1 for g in self._leg_gateway.values() if g == gw)
        if trunk is None or trunk.down:
            cause = HangupCause.INVALID_GATEWAY if trunk is None else HangupCause.GATEWAY_DOWN
            self._at(t, self._leg_failed, (cmd.call_id, cmd.leg, tok, cause))
            counts["failed"] += 1
            return
        self._leg_gateway[cmd.leg] = gw
        counts["peak"] = max(counts["peak"], live + 1)
        u = self._rng_trunk.random()
        cause = ""
        if trunk.carrier_max and live >= trunk.carrier_max:
            cause = HangupCause.NORMAL_CIRCUIT_CONGESTION  # the carrier's own limit
        elif u < trunk.busy_p:
            cause = HangupCause.USER_BUSY
        elif u < trunk.busy_p + trunk.congestion_p:
            cause = HangupCause.NORMAL_CIRCUIT_CONGESTION
        if cause:
            counts["failed"] += 1
            self._at(t + 0.5, self._leg_failed, (cmd.call_id, cmd.leg, tok, cause))
            return
        counts["answered"] += 1
        self._at(t + trunk.answer_delay_s, self._leg_answered, (cmd.call_id, cmd.leg, tok))

    def _enter_flow(self, call_id: str, t: float, flow_id: str) -> EnterFlow:
        return EnterFlow(call_id=call_id, at=t, flow_id=flow_id, flow=self.sc.flow_map[flow_id],  # type: ignore[call-arg]
                         clock_offset=self.sc.epoch)

    def _caller_queued(self, call_id: str) -> None:
        caller = self.callers.get(call_id)
        if caller is None:
            return
        if caller.log is not None:
            call = self.calls[call_id]
            caller.log.append(Observation(self.now, "queue", {"queue": call.queue_id}))
        if caller.queued_at < 0:
            caller.queued_at = self.now
            if caller.patience_s < math.inf:
                caller.abandon_token = self._token()
                self._at(self.now + caller.patience_s, self._abandon, call_id)

    def _abandon(self, t: float, call_id: str) -> None:
        caller = self.callers.get(call_id)
        if caller is None or caller.connected or caller.gone or caller.abandon_token == 0:
            return
        self._caller_hangs_up(t, call_id, HangupCause.ORIGINATOR_CANCEL)

    def _dead_air(self, t: float, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is not None and call.state is CallState.ROUTING:
            self._caller_hangs_up(t, call_id, HangupCause.ORIGINATOR_CANCEL)

    def _caller_hangs_up(self, t: float, call_id: str, cause: str = HangupCause.NORMAL_CLEARING) -> None:
        caller = self.callers.get(call_id)
        if caller is None or caller.gone:
            return
        self.deliver("call", call_id, ChannelHangup(call_id=call_id, at=t, leg="a", cause=cause))

    def _hangup_after_talk(self, t: float, arg: tuple[str, int]) -> None:
        call_id, token = arg
        caller = self.callers.get(call_id)
        if caller is None or caller.hangup_token != token:
            return
        self._caller_hangs_up(t, call_id)

    def _call_stopped(self, call_id: str) -> None:
        call = self.calls.pop(call_id)
        caller = self.callers.pop(call_id, None)
        if caller is not None:
            caller.gone = True
            if caller.log is not None:
                self.ended_callers[call_id] = caller
        if call.agent_id and self._agent_call.get(call.agent_id) == call_id:
            del self._agent_call[call.agent_id]
        self._playback.pop(call_id, None)
        self.conferences.leave_call(self.now, call_id)
        if self.check and not call.cdr_written and call_id not in self._cdrs:
            self._violation(f"call {call_id} stopped without a CDR")
        if self.check:
            for leg in call.legs:
                self._violation(f"call {call_id} ended with live leg {leg.id}")

    # ---- the switch --------------------------------------------------------------------------

    def _media(self, cmd: Any) -> None:
        c = cmd.__class__
        t = self.now
        call_id = cmd.call_id
        caller = self.callers.get(call_id)
        if c is MediaOriginate:
            if self.check and (caller is None or caller.gone):
                self._violation(f"call {call_id}: originated {cmd.leg} to {cmd.destination} for a caller who is gone")
            if cmd.gateway:
                if caller is not None and caller.log is not None:
                    caller.log.append(Observation(t, "ringing", {"destination": cmd.destination,
                                                                 "agent": "", "gateway": cmd.gateway}))
                self._trunk_leg(t, cmd)
                return
            spec = self.by_extension.get(cmd.destination)
            self._leg_dest[cmd.leg] = cmd.destination
            if caller is not None and caller.log is not None:
                caller.log.append(Observation(t, "ringing", {"destination": cmd.destination,
                                                             "agent": spec.id if spec else ""}))
            if spec is not None:
                if spec.id in self._disconnected:
                    tok = self._leg_tokens[cmd.leg] = self._token()
                    self._at(t, self._leg_failed, (call_id, cmd.leg, tok))
                    return
                if spec.no_answer_p > 0 and self._rng_agent.random() < spec.no_answer_p:
                    return  # it rings out: the call's ring timer decides
                delay = spec.answer_delay_s
            else:
                if self._rng_agent.random() >= self.sc.external_answer_p:
                    return
                delay = self.sc.external_answer_delay_s
            tok = self._leg_tokens[cmd.leg] = self._token()
            self._at(t + delay, self._leg_answered, (call_id, cmd.leg, tok))
        elif c is MediaHangup:
            self.conferences.leave(t, call_id, cmd.leg)  # a leg in a room leaves it first
            if cmd.leg == "a":
                if caller is not None:
                    caller.gone = True
            else:
                self._leg_tokens.pop(cmd.leg, None)
                self._leg_gateway.pop(cmd.leg, None)
                dest = self._leg_dest.pop(cmd.leg, None)
                spec = self.by_extension.get(dest) if dest else None
                if spec is not None and self._agent_call.get(spec.id) == call_id:
                    del self._agent_call[spec.id]
        elif c is MediaBridge:
            if cmd.leg == "a" and caller is not None:
                dest = self._leg_dest.get(cmd.other_leg, "")
                spec = self.by_extension.get(dest)
                if spec is not None:
                    other = self._agent_call.get(spec.id)
                    if self.check and other is not None and other != call_id and other in self.calls:
                        self._violation(f"agent {spec.id} connected to {call_id} while on {other}")
                    self._agent_call[spec.id] = call_id
                caller.connected = True
                caller.abandon_token = 0
                if caller.log is not None:
                    caller.log.append(Observation(t, "answered", {"destination": dest, "agent": spec.id if spec else ""}))
                if caller.handle_s < math.inf:
                    tok = caller.hangup_token = self._token()
                    self._at(t + caller.handle_s, self._hangup_after_talk, (call_id, tok))
        elif c is MediaPlay:
            if caller is not None and caller.log is not None:
                caller.log.append(Observation(t, "prompt", {"file": cmd.file}))
            duration = self._prompt_s(cmd.file) * max(1, cmd.loops)
            tok = self._playback[call_id] = self._token()
            self._at(t + duration, self._playback_done, (call_id, cmd.file, tok))
            if caller is not None and not caller.scripted:
                self._plan_dtmf(call_id, caller, t + duration)
        elif c is MediaStopPlayback:
            self._playback.pop(call_id, None)
        elif c is MediaBroadcast:
            # a consent announcement (docs/recordings.md): it plays its prompt length, then the
            # caller's leg reports its end (the other leg's PLAYBACK_STOP changes nothing here)
            duration = self._prompt_s(cmd.file)
            self._at(t + duration, self._broadcast_done, (call_id, cmd.file))
        elif c is MediaRecordStart and caller is not None and caller.connected:
            # recording a conversation (not a voicemail message): nobody talks longer or shorter for it
            if caller.log is not None:
                caller.log.append(Observation(t, "recording", {"path": cmd.path}))
        elif c is MediaRecordStart:
            if caller is not None and caller.log is not None:
                caller.log.append(Observation(t, "voicemail", {"path": cmd.path}))
            if caller is not None and cmd.limit_s > 0:
                # the switch's record app (sim/voicemail.py): talk, silence, RECORD_STOP
                talk = self.stats.voicemail.talk_s(call_id, caller.scripted, caller.handle_s)
                end, cause = record_end(talk, cmd.limit_s, cmd.silence_hits)
                tok = caller.hangup_token = self._token()
                self._at(t + end, self._record_stopped, (call_id, cmd.path, cause, tok))
            elif caller is not None and not caller.scripted and caller.handle_s < math.inf:
                # the caller leaves a message as long as a conversation, then hangs up
                tok = caller.hangup_token = self._token()
                self._at(t + min(caller.handle_s, 60.0), self._hangup_after_talk, (call_id, tok))
        elif c is MediaConference:
            self.conferences.media(t, cmd)
        # MediaAnswer, MediaHold, MediaUnhold, MediaRecordStop, ...: the switch just does them

    def _leg_answered(self, t: float, arg: tuple[str, str, int]) -> None:
        call_id, leg, token = arg
        if self._leg_tokens.get(leg) != token:
            return
        del self._leg_tokens[leg]
        self.deliver("call", call_id, ChannelAnswered(call_id=call_id, at=t, leg=leg))

    def _leg_failed(self, t: float, arg: tuple[Any, ...]) -> None:
        call_id, leg, token = arg[:3]
        cause = arg[3] if len(arg) > 3 else HangupCause.NORMAL_TEMPORARY_FAILURE
        if self._leg_tokens.get(leg) != token:
            return
        del self._leg_tokens[leg]
        self._leg_dest.pop(leg, None)
        self._leg_gateway.pop(leg, None)
        self.deliver("call", call_id, ChannelHangup(call_id=call_id, at=t, leg=leg, cause=cause))

    def _playback_done(self, t: float, arg: tuple[str, str, int]) -> None:
        call_id, file, token = arg
        if self._playback.get(call_id) != token:
            return
        del self._playback[call_id]
        self.deliver("call", call_id, PlaybackFinished(call_id=call_id, at=t, file=file))

    def _plan_dtmf(self, call_id: str, caller: CallerModel, prompt_end: float) -> None:
        """A synthetic caller at a menu presses what the scenario's probabilities say."""
        call = self.calls.get(call_id)
        run: FlowRun | None = getattr(call, "flow", None)
        if run is None or run.waiting not in ("prompt", "invalid"):
            return
        flow = self.sc.flow_map.get(run.flow_id)
        node = flow.nodes.get(run.node) if flow else None
        if not isinstance(node, MenuNode):
            return
        tr = self.sc.traffic[caller.traffic]
        choices = tr.dtmf.get(f"{run.flow_id}.{run.node}")
        if run.waiting == "invalid":
            return  # the caller waits for the menu to be replayed
        if choices is None:
            digits = next(iter(node.options))  # nobody said: the first option
        else:
            u = self._rng_caller[caller.traffic].random()
            digits, acc = "", 0.0
            for option, p in choices.items():
                acc += p
                digits = option
                if u < acc:
                    break
        at = prompt_end + tr.think_s
        for digit in digits:
            self._at(at, self._press, (call_id, digit))
            at += 0.3

    def _press(self, t: float, arg: tuple[str, str]) -> None:
        call_id, digit = arg
        if call_id in self.calls:
            self.deliver("call", call_id, DtmfReceived(call_id=call_id, at=t, digit=digit))

    def press(self, call_id: str, digits: str) -> None:
        """Scripted caller presses ``digits`` now (0.3 s apart)."""
        at = self.now
        for digit in digits:
            self._at(at, self._press, (call_id, digit))
            at += 0.3

    def hangup(self, call_id: str) -> None:
        """Scripted caller hangs up now."""
        self._at(self.now, lambda t, cid: self._caller_hangs_up(t, cid), call_id)

    # ---- parking and pickup (#10 part 4) ----------------------------------------------------

    def _parking_event(self, ev: Any) -> None:
        self.parking.observe(ev)
        self.stats.parking_event(ev.name, ev.call_id, ev.at, ev.data)
        caller = self.callers.get(ev.call_id)
        if caller is not None and caller.log is not None:
            kind = {"CALL_PARKED": "parked", "CALL_PARK_TIMEOUT": "park_timeout"}.get(ev.name, "picked_up")
            caller.log.append(Observation(ev.at, kind, dict(ev.data)))
            if kind == "parked":
                caller.connected = False

    # ---- voicemail (#10 part 1) -------------------------------------------------------------

    def _voicemail_event(self, ev: Any) -> None:
        self.stats.voicemail.observe(ev)
        caller = self.callers.get(ev.call_id)
        if caller is not None and caller.log is not None:
            caller.log.append(Observation(ev.at, "voicemail_new" if ev.name == "VOICEMAIL_NEW"
                                          else "voicemail_abandoned", dict(ev.data)))

    def _record_stopped(self, t: float, arg: tuple[str, str, str, int]) -> None:
        call_id, path, cause, token = arg
        caller = self.callers.get(call_id)
        if caller is None or caller.hangup_token != token:
            return
        self.deliver("call", call_id, RecordingStopped(call_id=call_id, at=t, path=path, cause=cause))

    # ---- recordings (#10 part 2; sim/recordings.py) ----------------------------------------------

    def _recording_event(self, ev: Any) -> None:
        self.stats.recordings.observe(ev)
        caller = self.callers.get(ev.call_id)
        if caller is not None and caller.log is not None:
            caller.log.append(Observation(ev.at, ev.name.removeprefix("CALL_").lower(), dict(ev.data)))

    def _broadcast_done(self, t: float, arg: tuple[str, str]) -> None:
        call_id, file = arg
        if call_id in self.calls:
            self.deliver("call", call_id, PlaybackFinished(call_id=call_id, at=t, leg="a", file=file))

    def record(self, call_id: str, action: str, **options: Any) -> None:
        """A recording command for the call now (``action``: start, pause, resume, stop), as the
        API would send it (``options``: ``consent``, ``by``, ``compliance``, ``override``)."""
        kinds = {"start": StartRecording, "pause": PauseRecording, "resume": ResumeRecording,
                 "stop": StopRecording}
        self._at(self.now, self._command, (call_id, kinds[action](call_id=call_id, at=self.now, **options)))

    def _command(self, t: float, arg: tuple[str, Any]) -> None:
        call_id, cmd = arg
        if call_id in self.calls:
            self.deliver("call", call_id, cmd)

    def _tenant_of(self, call_id: str) -> str:
        call = self.calls.get(call_id)
        return call.tenant if call is not None else "default"

    def park(self, call_id: str, slot: str = "", *, timeout_s: float = 60.0, fallback: str = "") -> str:
        """Park the call now in ``slot`` (or the tenant's lowest free one); returns the slot.
        Raises ``engine.parking.ParkingError`` (e.g. ``SlotTaken``) as the API would."""
        slot = self.parking.claim(self._tenant_of(call_id), call_id, slot)
        self._at(self.now, self._command, (call_id, Park(call_id=call_id, at=self.now, slot=slot,
                                                         timeout_s=timeout_s, fallback=fallback)))
        return slot

    def pickup_slot(self, slot: str, extension: str, tenant: str = "default") -> str:
        """Pick the call parked in ``slot`` up at ``extension`` now; returns its call id ("" if none)."""
        call_id = self.parking.call_in(tenant, slot)
        if call_id:
            self._at(self.now, self._command, (call_id, Pickup(call_id=call_id, at=self.now, extension=extension)))
        return call_id

    def pickup_directed(self, target: str, extension: str, tenant: str = "default") -> str:
        """``extension`` takes the call ringing ``target`` now; returns its call id ("" if none)."""
        call_id = self.ringing_view.directed(tenant, target)
        if call_id:
            self._at(self.now, self._command, (call_id, Pickup(call_id=call_id, at=self.now, extension=extension,
                                                               kind="directed", target=target)))
        return call_id

    def pickup_group(self, extension: str, tenant: str = "default") -> str:
        """``extension`` takes the oldest call ringing a member of its pickup group now."""
        call_id, target = self.ringing_view.group(tenant, extension)
        if call_id:
            self._at(self.now, self._command, (call_id, Pickup(call_id=call_id, at=self.now, extension=extension,
                                                               kind="group", target=target)))
        return call_id

    # ---- faults ------------------------------------------------------------------------------

    def _fault(self, t: float, fault: Any) -> None:
        self.stats.faults.append({"at_s": t, "kind": fault.kind, "target": fault.target})
        if fault.kind == "media_link_lost":
            self._outage_until = t + fault.duration_s
            for call_id in list(self.calls):
                self._caller_hangs_up(t, call_id, HangupCause.NORMAL_TEMPORARY_FAILURE)
                self._drain()
        elif fault.kind == "agent_disconnect":
            agent_id = fault.target
            self._disconnected.add(agent_id)
            call_id = self._agent_call.get(agent_id)
            spec = self.specs[agent_id]
            if call_id is not None and call_id in self.calls:
                for leg in self.calls[call_id].legs:
                    if leg.destination == spec.extension:
                        self.deliver("call", call_id, ChannelHangup(call_id=call_id, at=t, leg=leg.id,
                                                                    cause=HangupCause.NORMAL_TEMPORARY_FAILURE))
                        self._drain()
            self._logout(t, agent_id)
            self._at(t + fault.duration_s, self._reconnect, agent_id)
        elif fault.kind == "actor_crash":
            self._crash[fault.target] = 1

    def _reconnect(self, t: float, agent_id: str) -> None:
        self._disconnected.discard(agent_id)
        spec = self.specs[agent_id]
        if spec.logout_s is None or t < spec.logout_s:
            self._login(t, agent_id)

    # ---- invariants --------------------------------------------------------------------------

    def _violation(self, what: str) -> None:
        raise InvariantViolation(self.seed, self.now, what)

    def _final_checks(self) -> None:
        for problem in self.stats.recordings.check():
            self._violation(problem)
        if self.calls:
            first = next(iter(self.calls.values()))
            self._violation(f"{len(self.calls)} calls still live after the drain (e.g. {first.call_id} in {first.state.name})")
        for agent in self.agents.values():
            if agent.state in (AgentState.RESERVED, AgentState.ON_CALL):
                self._violation(f"agent {agent.agent_id} stuck in {agent.state.name} with no call left")
        for queue in self.queues.values():
            if queue.waiting or queue.offers:
                self._violation(f"queue {queue.queue_id} still has {len(queue.waiting)} waiting / {len(queue.offers)} offers")


def _rngs(seed: int) -> Callable[[str], random.Random]:
    def make(name: str) -> random.Random:
        return random.Random(f"{seed}:{name}")
    return make


# the collector lives in sim.report; imported late to keep this module's public face small
from sim.conference import SimConferences  # noqa: E402
from sim.report import Collector  # noqa: E402
