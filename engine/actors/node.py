"""A node: one runtime hosting the engine's supervision tree, plus message routing.

Rules
1. Tree (started in this order, stopped in reverse)::

       node (one_for_one)
        |- media   (one_for_one)  media links / adapters, as TaskSpecs
        |- queues  (one_for_one, dynamic)  one actor per queue
        |- agents  (one_for_one, dynamic)  one actor per agent
        `- calls   (one_for_one, dynamic, transient)  one actor per call, gone after its Stop

2. Routing is by id: media events and call commands by ``call_id``, agent commands by
   ``agent_id``, routing messages by the id of their addressee. Nothing else is consulted.
3. A ``ChannelCreated`` for leg "a" of an unknown call creates the call (``call.new_call``); an
   ``Originate`` for an unknown call creates it (``call.originate_call``). Other media events for
   unknown calls are dropped and counted (``media_dropped``); commands for unknown ids are
   answered ``NOT_FOUND``. Late messages for calls that ended recently go to the runtime's
   tombstone path (dropped quietly or answered, never errors).
4. ``router`` decides where a new inbound call goes (``RouteToQueue``, ``EnterFlow``, ...); it is
   the seam where flows plug in. Without one, calls wait in ROUTING for a routing message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio

from engine.actors.behaviour import AGENT, CALL, QUEUE
from engine.actors.ports import Ports
from engine.actors.runtime import ActorRef, Runtime, RuntimeStatistics, ShutdownReport
from engine.actors.supervisor import ActorSpec, Supervisor, SupervisorSpec, TaskSpec
from engine.fsm import agent as agent_fsm
from engine.fsm import call as call_fsm
from engine.fsm import queue as queue_fsm
from engine.messages import (
    AgentCallEnded,
    AgentCommandBase,
    AgentStatus,
    CallCommandBase,
    CallerLeft,
    ChannelCreated,
    ConnectAgent,
    EnterFlow,
    MediaEventBase,
    Originate,
    QueueCall,
    QueueOverflow,
    ReleaseReservation,
    Reply,
    ReservationAccepted,
    ReservationRejected,
    ReserveAgent,
    RouteToExtension,
    RouteToQueue,
    RoutingMessage,
)

__all__ = ["Node", "NodeStatistics", "open_node", "route", "route_by_destination"]

Router = Callable[[ChannelCreated], RoutingMessage | None]

_CALL_ROUTED = (EnterFlow, RouteToQueue, RouteToExtension, QueueOverflow, ConnectAgent)
_AGENT_ROUTED = (ReserveAgent, ReleaseReservation, AgentCallEnded)
_QUEUE_ROUTED = (QueueCall, CallerLeft, AgentStatus, ReservationAccepted, ReservationRejected)


def route(message: Any) -> tuple[str, str]:
    """(kind, id) of the actor a message is for. Raises ``TypeError`` when the type is ambiguous
    (``OfferAnswered`` / ``OfferFailed`` / ``TimerFired`` are addressed explicitly by their sender)."""
    if isinstance(message, (MediaEventBase, CallCommandBase, *_CALL_ROUTED)):
        return "call", message.call_id
    if isinstance(message, (AgentCommandBase, *_AGENT_ROUTED)):
        return "agent", message.agent_id
    if isinstance(message, _QUEUE_ROUTED):
        return "queue", message.queue_id
    raise TypeError(f"cannot route {type(message).__name__} by id: address it with ref(kind, id)")


def route_by_destination(table: dict[str, str], default_queue: str = "") -> Router:
    """A minimal router: the dialled destination names a queue."""

    def router(event: ChannelCreated) -> RoutingMessage | None:
        queue_id = table.get(event.destination, default_queue)
        if not queue_id:
            return None
        return RouteToQueue(call_id=event.call_id, at=event.at, queue_id=queue_id)

    return router


class NodeStatistics(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    calls_created: int
    media_dropped: int
    not_found: int
    runtime: RuntimeStatistics


class Node:
    def __init__(
        self,
        *,
        name: str = "node",
        ports: Ports | None = None,
        queues: Iterable[queue_fsm.QueueConfig] = (),
        agents: Iterable[str] = (),
        router: Router | None = None,
        media_links: Sequence[TaskSpec] = (),
        intensity: int = 10,
        period_s: float = 10.0,
        max_crashes: int = 3,
        crash_window_s: float = 5.0,
        call_mailbox: int = 256,
        **runtime_options: Any,
    ) -> None:
        self.name = name
        self.runtime = Runtime(ports=ports, name=name, **runtime_options)
        self.ports = self.runtime.ports
        self.router = router
        self._initial_queues = tuple(queues)
        self._initial_agents = tuple(agents)
        self._media_links = tuple(media_links)
        self._intensity = (intensity, period_s)
        self._crash = (max_crashes, crash_window_s)
        self._call_mailbox = call_mailbox
        self.calls_created = 0
        self.media_dropped = 0
        self.not_found = 0
        self._queues: Supervisor | None = None
        self._agents: Supervisor | None = None
        self._calls: Supervisor | None = None

    def supervisor_spec(self) -> SupervisorSpec:
        n, t = self._intensity
        crashes, window = self._crash

        def template(behaviour: Any, capacity: int = 0) -> ActorSpec:
            return ActorSpec(behaviour=behaviour, restart="transient", capacity=capacity,
                             max_crashes=crashes, crash_window_s=window)

        return SupervisorSpec(id=self.name, intensity=n, period_s=t, children=(
            SupervisorSpec(id="media", intensity=n, period_s=t, children=self._media_links),
            SupervisorSpec(id="queues", intensity=n, period_s=t, dynamic=template(QUEUE)),
            SupervisorSpec(id="agents", intensity=n, period_s=t, dynamic=template(AGENT)),
            SupervisorSpec(id="calls", intensity=n, period_s=t,
                           dynamic=template(CALL, self._call_mailbox)),
        ))

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the node until ``shutdown()``."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.runtime.run, self.supervisor_spec())
            self._attach()
            task_status.started(self)

    def _attach(self) -> None:
        root = self.runtime.root
        assert root is not None
        self._queues, self._agents, self._calls = (root.find(x) for x in ("queues", "agents", "calls"))
        for config in self._initial_queues:
            self.add_queue(config)
        for agent_id in self._initial_agents:
            self.add_agent(agent_id)

    async def shutdown(self, deadline_s: float = 5.0) -> ShutdownReport:
        return await self.runtime.shutdown(deadline_s)

    # ---------------------------------------------------------------- actors

    def add_queue(self, config: queue_fsm.QueueConfig) -> ActorRef:
        assert self._queues is not None, "the node is not running"
        return self._queues.start_child(config.queue_id, queue_fsm.new_queue(config))

    def add_agent(self, agent_id: str, tenant: str = "default") -> ActorRef:
        assert self._agents is not None, "the node is not running"
        return self._agents.start_child(agent_id, agent_fsm.new_agent(agent_id, tenant))

    def ref(self, kind: str, actor_id: str) -> ActorRef:
        return self.runtime.ref(kind, actor_id)

    # ---------------------------------------------------------------- routing

    def deliver_nowait(self, message: Any) -> None:
        """Route a message; raises ``MailboxFull`` when its actor's mailbox is full."""
        kind, actor_id = route(message)
        if not self._handled_here(kind, actor_id, message):
            self.runtime.tell_nowait(kind, actor_id, message)

    async def deliver(self, message: Any) -> None:
        """Route a message, waiting while its actor's mailbox is full."""
        kind, actor_id = route(message)
        if not self._handled_here(kind, actor_id, message):
            await self.runtime.tell(kind, actor_id, message)
        else:
            await trio.lowlevel.checkpoint()

    async def ask(self, command: CallCommandBase | AgentCommandBase, timeout: float = 5.0) -> Reply:
        """Deliver a command and wait for its ``Reply`` (creating the call for ``Originate``)."""
        kind, actor_id = route(command)
        return await self.runtime.ask(kind, actor_id, command, timeout=timeout, send=self.deliver)

    def _handled_here(self, kind: str, actor_id: str, message: Any) -> bool:
        """Creation and quiet drops; False when the runtime should deliver the message."""
        rt = self.runtime
        if rt.exists(kind, actor_id) or rt.recently_stopped(kind, actor_id):
            return False
        if kind == "call":
            if isinstance(message, ChannelCreated) and message.leg == "a":
                self._create_call(message)
                return True
            if isinstance(message, Originate):
                assert self._calls is not None, "the node is not running"
                state, effects = call_fsm.originate_call(message)
                self._calls.start_child(actor_id, state, effects)
                self.calls_created += 1
                return True
            if isinstance(message, MediaEventBase):
                self.media_dropped += 1
                return True
        if isinstance(message, (CallCommandBase, AgentCommandBase)):
            self.not_found += 1  # the runtime answers NOT_FOUND
        return False

    def _create_call(self, event: ChannelCreated) -> None:
        assert self._calls is not None, "the node is not running"
        state, effects = call_fsm.new_call(event)
        self._calls.start_child(event.call_id, state, effects)
        self.calls_created += 1
        if self.router is not None:
            decision = self.router(event)
            if decision is not None:
                self.runtime._deliver("call", event.call_id, decision)

    # ---------------------------------------------------------------- statistics

    def statistics(self) -> NodeStatistics:
        return NodeStatistics(name=self.name, calls_created=self.calls_created,
                              media_dropped=self.media_dropped, not_found=self.not_found,
                              runtime=self.runtime.statistics())


@asynccontextmanager
async def open_node(*, shutdown_deadline_s: float = 5.0, **options: Any) -> AsyncIterator[Node]:
    """Run a node for the duration of the block; shut it down gracefully on exit."""
    node = Node(**options)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        try:
            yield node
        finally:
            with trio.CancelScope(shield=True):
                await node.shutdown(shutdown_deadline_s)
