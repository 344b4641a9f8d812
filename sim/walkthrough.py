"""A small synchronous world over the real state machines, and a scripted walk-through of a call.

Rules
1. Synchronous and deterministic: messages are delivered in FIFO order, timers fire in
   (deadline, start order); time is virtual and only moves when ``advance`` is called.
2. The machines are the production ones (``engine.fsm``); this file only performs their effects.
3. Media is not emulated here: the caller of ``World`` injects media events itself; the world
   records the media commands the machines asked for.

The combined property test drives this world with random interleavings, and ``callengine
walkthrough`` prints every transition of a scripted call with it.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.fsm import agent as agent_fsm
from engine.fsm import call as call_fsm
from engine.fsm import queue as queue_fsm
from engine.messages import (
    AgentLogin,
    CancelTimer,
    Cdr,
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    CtiEvent,
    Effect,
    Hold,
    MediaCommand,
    Originate,
    PublishCti,
    Reply,
    Retrieve,
    RouteToQueue,
    Send,
    SendMedia,
    StartTimer,
    Stop,
    TimerFired,
    WriteCdr,
)

_STEP: dict[str, Callable[[Any, Any], tuple[Any, list[Effect]]]] = {
    "call": call_fsm.step,
    "agent": agent_fsm.step,
    "queue": queue_fsm.step,
}


@dataclass(frozen=True)
class Transition:
    at: float
    kind: str
    id: str
    message: Any
    before: str
    after: str
    effects: tuple[Effect, ...]


@dataclass
class World:
    now: float = 0.0
    calls: dict[str, call_fsm.Call] = field(default_factory=dict)
    agents: dict[str, agent_fsm.Agent] = field(default_factory=dict)
    queues: dict[str, queue_fsm.Queue] = field(default_factory=dict)
    media: list[MediaCommand] = field(default_factory=list)
    cti: list[CtiEvent] = field(default_factory=list)
    cdrs: list[Cdr] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    stopped: set[str] = field(default_factory=set)
    dropped: list[tuple[str, str, Any]] = field(default_factory=list)
    #: called after every step; tests put invariant checks here
    observers: list[Callable[[World, Transition], None]] = field(default_factory=list)
    _timers: list[tuple[float, int, str, str, str]] = field(default_factory=list)
    _live_timers: dict[tuple[str, str, str], int] = field(default_factory=dict)
    _seq: int = 0
    _inbox: deque[tuple[str, str, Any]] = field(default_factory=deque)
    keep_transitions: bool = True
    #: False: messages wait in per-actor mailboxes until ``deliver_next`` picks one, so a test can
    #: choose any interleaving across actors (FIFO per recipient, as in the actor runtime)
    auto_drain: bool = True
    mailboxes: dict[tuple[str, str], deque[Any]] = field(default_factory=dict)

    # ---- population ------------------------------------------------------------------------

    def add_queue(self, config: queue_fsm.QueueConfig) -> None:
        self.queues[config.queue_id] = queue_fsm.new_queue(config)

    def add_agent(self, agent_id: str, **kw: Any) -> None:
        self.agents[agent_id] = agent_fsm.new_agent(agent_id, **kw)

    def login(self, agent_id: str, extension: str, queues: tuple[str, ...], **kw: Any) -> None:
        if agent_id not in self.agents:
            self.add_agent(agent_id)
        self.deliver("agent", agent_id, AgentLogin(agent_id=agent_id, at=self.now, extension=extension,
                                                   queues=queues, **kw))

    def new_call(self, event: ChannelCreated) -> None:
        state, effects = call_fsm.new_call(event)
        self.calls[event.call_id] = state
        self._record("call", event.call_id, event, "-", state.state.name, effects)
        self._perform("call", event.call_id, effects)
        self._drain()

    def originate(self, cmd: Originate) -> None:
        state, effects = call_fsm.originate_call(cmd)
        self.calls[cmd.call_id] = state
        self._record("call", cmd.call_id, cmd, "-", state.state.name, effects)
        self._perform("call", cmd.call_id, effects)
        self._drain()

    # ---- delivery --------------------------------------------------------------------------

    def deliver(self, kind: str, actor_id: str, message: Any) -> None:
        self._inbox.append((kind, actor_id, message))
        self._drain()

    def pending(self) -> list[tuple[str, str]]:
        """Actors with mail waiting (only when ``auto_drain`` is False), in a stable order."""
        return sorted(key for key, box in self.mailboxes.items() if box)

    def deliver_next(self, kind: str, actor_id: str) -> None:
        """Step ``(kind, actor_id)`` with the oldest message in its mailbox."""
        message = self.mailboxes[(kind, actor_id)].popleft()
        self._step(kind, actor_id, message)

    def drain_all(self) -> None:
        while pending := self.pending():
            for kind, actor_id in pending:
                self.deliver_next(kind, actor_id)

    def _table(self, kind: str) -> dict[str, Any]:
        tables: dict[str, dict[str, Any]] = {"call": self.calls, "agent": self.agents, "queue": self.queues}
        return tables[kind]

    def _drain(self) -> None:
        while self._inbox:
            kind, actor_id, message = self._inbox.popleft()
            if self.auto_drain:
                self._step(kind, actor_id, message)
            else:
                self.mailboxes.setdefault((kind, actor_id), deque()).append(message)

    def _step(self, kind: str, actor_id: str, message: Any) -> None:
        if f"{kind}:{actor_id}" in self.stopped:
            # as in the actor runtime: a stopped actor is gone, its late mail is dropped
            self.dropped.append((kind, actor_id, message))
            return
        table = self._table(kind)
        if actor_id not in table:
            raise KeyError(f"no {kind} {actor_id!r} for {type(message).__name__}")
        before = table[actor_id]
        after, effects = _STEP[kind](before, message)
        table[actor_id] = after
        self._record(kind, actor_id, message, before.state.name, after.state.name, effects)
        self._perform(kind, actor_id, effects)
        self._drain()

    def _record(self, kind: str, actor_id: str, message: Any, before: str, after: str,
                effects: list[Effect]) -> None:
        tr = Transition(self.now, kind, actor_id, message, before, after, tuple(effects))
        if self.keep_transitions:
            self.transitions.append(tr)
        for observer in self.observers:
            observer(self, tr)

    def _perform(self, kind: str, actor_id: str, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Send(to=to, to_id=to_id, message=message):
                    self._inbox.append((to, to_id, message))
                case SendMedia(command=command):
                    self.media.append(command)
                case StartTimer(key=key, deadline=deadline):
                    self._seq += 1
                    self._live_timers[(kind, actor_id, key)] = self._seq
                    heapq.heappush(self._timers, (deadline, self._seq, kind, actor_id, key))
                case CancelTimer(key=key):
                    self._live_timers.pop((kind, actor_id, key), None)
                case PublishCti(event=event):
                    self.cti.append(event)
                case WriteCdr(cdr=cdr):
                    self.cdrs.append(cdr)
                case Reply():
                    self.replies.append(effect)
                case Stop():
                    self.stopped.add(f"{kind}:{actor_id}")

    def live_timers(self, kind: str, actor_id: str) -> set[str]:
        return {key for (k, i, key) in self._live_timers if k == kind and i == actor_id}

    # ---- time ------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        while self._timers:
            deadline, seq, kind, actor_id, key = self._timers[0]
            if self._live_timers.get((kind, actor_id, key)) == seq:
                return deadline
            heapq.heappop(self._timers)
        return None

    def advance(self, to: float) -> None:
        """Move virtual time to ``to``, firing due timers in order."""
        while True:
            deadline = self.next_timer()
            if deadline is None or deadline > to:
                break
            _, seq, kind, actor_id, key = heapq.heappop(self._timers)
            del self._live_timers[(kind, actor_id, key)]
            self.now = max(self.now, deadline)
            self.deliver(kind, actor_id, TimerFired(key=key, at=deadline))
        self.now = max(self.now, to)


# --------------------------------------------------------------------------------------------
# the scripted walk-through (what `make demo` shows until the simulator lands)
# --------------------------------------------------------------------------------------------


def _describe(message: Any) -> str:
    fields = ((f, getattr(message, f)) for f in message.__struct_fields__ if f != "at")
    inner = ", ".join(f"{k}={v!r}" for k, v in fields if v not in ("", {}, (), None))
    return f"{type(message).__name__}({inner})"


def walkthrough(echo: Callable[[str], None] = print) -> World:
    """A caller rings the sales queue, an agent answers, holds, retrieves, the caller hangs up."""
    from engine.messages import AgentReady

    world = World()
    world.add_queue(queue_fsm.QueueConfig(queue_id="sales", strategy="longest-idle", wrap_up_s=15.0))
    world.login("alice", extension="1001", queues=("sales",))
    world.login("bob", extension="1002", queues=("sales",))
    world.deliver("agent", "bob", AgentReady(agent_id="bob", at=world.now))
    world.advance(2.0)
    world.deliver("agent", "alice", AgentReady(agent_id="alice", at=world.now))

    world.advance(10.0)
    world.new_call(ChannelCreated(call_id="call-1", at=world.now, caller_id="+4930123456",
                                  destination="+4940999", caller_name="Ada"))
    world.deliver("call", "call-1", RouteToQueue(call_id="call-1", at=world.now, queue_id="sales"))
    offered = next(c for c in world.media if type(c).__name__ == "MediaOriginate")
    world.advance(14.0)
    world.deliver("call", "call-1", ChannelAnswered(call_id="call-1", at=world.now, leg=offered.leg))
    world.advance(60.0)
    world.deliver("call", "call-1", Hold(call_id="call-1", at=world.now, request_id="req-1"))
    world.advance(75.0)
    world.deliver("call", "call-1", Retrieve(call_id="call-1", at=world.now, request_id="req-2"))
    world.advance(130.0)
    world.deliver("call", "call-1", ChannelHangup(call_id="call-1", at=world.now, leg="a"))
    world.advance(200.0)

    for tr in world.transitions:
        arrow = f"{tr.before} -> {tr.after}" if tr.before != tr.after else f"{tr.after} (stays)"
        echo(f"t={tr.at:7.1f}s  {tr.kind:5} {tr.id:8} {_describe(tr.message):<70.70} {arrow}")
        for effect in tr.effects:
            if isinstance(effect, SendMedia):
                echo(f"{'':28}-> media  {_describe(effect.command)}")
    cdr = world.cdrs[0]
    echo("")
    echo(f"CDR: disposition={cdr.disposition} wait={cdr.wait_s:.1f}s talk={cdr.talk_s:.1f}s "
         f"hold={cdr.hold_s:.1f}s agent={cdr.agent_id} queue={cdr.queue_id} cause={cdr.hangup_cause}")
    for agent in world.agents.values():
        echo(f"agent {agent.agent_id}: {agent.state.name}, calls handled {agent.calls_handled}, "
             f"talk {agent.talk_time:.1f}s")
    return world
