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
5. Tenants: agents and queues are registered per tenant (the runtime's ``tenant_scoped`` kinds:
   key ``"<tenant>/<id>"``, the plain id for the ``default`` tenant), so two tenants can both have
   agent ``1001`` and queue ``sales``. Machines keep plain ids; actors reach each other within
   their own tenant. From outside, ``deliver``/``ask`` take ``tenant=``; without it a plain id is
   resolved when it names exactly one actor (the default tenant's first), else it is unknown.
   Call ids are UUIDs: never scoped.
6. ``remove_actor(kind, id, tenant)`` really removes an agent or a queue. It refuses with
   ``ActorBusy`` (``code`` FAILED_PRECONDITION) while an agent is RESERVED or ON_CALL or a queue
   has callers waiting; a logged-in agent is logged out first (its queues learn it), then removed.
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
    AgentLogout,
    AgentStatus,
    CallCommandBase,
    CallerLeft,
    ChannelCreated,
    ConnectAgent,
    Effect,
    EnterFlow,
    MediaEventBase,
    Originate,
    PickupChannel,
    PickupHandedOver,
    QueueCall,
    QueueOverflow,
    ReleaseReservation,
    Reply,
    ReservationAccepted,
    ReservationRejected,
    ReserveAgent,
    RouteToExtension,
    RouteToPickup,
    RouteToQueue,
    RoutingMessage,
    UpdateQueueConfig,
    VoicemailBox,
)

__all__ = ["ActorBusy", "ActorMissing", "Node", "NodeStatistics", "open_node", "route",
           "route_by_destination", "TENANT_SCOPED"]

#: the kinds a node registers per tenant (calls are unique by UUID)
TENANT_SCOPED = ("agent", "queue")


class ActorBusy(Exception):
    """``remove_actor`` refused: the actor has work in progress (gRPC FAILED_PRECONDITION)."""

    code = "FAILED_PRECONDITION"

    def __init__(self, kind: str, actor_id: str, why: str) -> None:
        self.kind, self.actor_id, self.why = kind, actor_id, why
        super().__init__(f"{kind} {actor_id} cannot be removed: {why}")


class ActorMissing(LookupError):
    """``remove_actor``: no such actor (gRPC NOT_FOUND)."""

    code = "NOT_FOUND"

    def __init__(self, kind: str, actor_id: str) -> None:
        self.kind, self.actor_id = kind, actor_id
        super().__init__(f"no {kind} {actor_id}")

Router = Callable[[ChannelCreated], RoutingMessage | None]

_CALL_ROUTED = (EnterFlow, RouteToQueue, RouteToExtension, QueueOverflow, ConnectAgent, VoicemailBox,
                RouteToPickup, PickupChannel, PickupHandedOver)
_AGENT_ROUTED = (ReserveAgent, ReleaseReservation, AgentCallEnded)
_QUEUE_ROUTED = (QueueCall, CallerLeft, AgentStatus, ReservationAccepted, ReservationRejected, UpdateQueueConfig)


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
        runtime_factory: Callable[..., Runtime] | None = None,
        **runtime_options: Any,
    ) -> None:
        """``runtime_factory(ports=..., name=..., tenant_scoped=..., **runtime_options)`` builds
        the runtime (default ``Runtime``), e.g. a cluster shard's subclass."""
        self.name = name
        runtime_options.setdefault("tenant_scoped", TENANT_SCOPED)
        self.runtime = (runtime_factory or Runtime)(ports=ports, name=name, **runtime_options)
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
        #: (kind, plain id) -> keys of other tenants' actors with that id (Rule 5)
        self._plain: dict[tuple[str, str], set[str]] = {}

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
        key = self._new_key("queue", config.tenant, config.queue_id)
        return self._queues.start_child(key, queue_fsm.new_queue(config))

    def add_agent(self, agent_id: str, tenant: str = "default") -> ActorRef:
        assert self._agents is not None, "the node is not running"
        key = self._new_key("agent", tenant, agent_id)
        return self._agents.start_child(key, agent_fsm.new_agent(agent_id, tenant))

    def start_actor(self, kind: str, actor_id: str, state: Any, effects: Sequence[Effect] = ()) -> ActorRef:
        """Start a call, agent or queue actor with a given state (by registry key) under its
        supervisor: an actor handed over from another node, or rebuilt after a restart."""
        sup = {"call": self._calls, "agent": self._agents, "queue": self._queues}.get(kind)
        if sup is None:
            if kind not in ("call", "agent", "queue"):
                raise ValueError(f"a node hosts calls, agents and queues, not {kind!r}")
            raise RuntimeError("the node is not running")
        return sup.start_child(actor_id, state, effects)

    def deliver_keyed(self, kind: str, actor_id: str, message: Any) -> None:
        """Deliver a message from another node of the engine to ``(kind, registry key)``: the
        creation rules of Rule 3, then delivery as a ``Send`` (never refused for capacity)."""
        if not self._handled_here(kind, actor_id, message):
            self.runtime.deliver(kind, actor_id, message)

    def _new_key(self, kind: str, tenant: str, actor_id: str) -> str:
        if "/" in tenant or (tenant == "default" and "/" in actor_id and kind in self.runtime.tenant_scoped):
            # "t/x" of the default tenant would be tenant t's "x"
            raise ValueError(f"{kind} {actor_id!r} of tenant {tenant!r}: '/' is reserved")
        key = self.runtime.key(kind, tenant, actor_id)
        if key != actor_id:
            self._plain.setdefault((kind, actor_id), set()).add(key)
        return key

    def key(self, kind: str, actor_id: str, tenant: str | None = None) -> str:
        """The runtime key of an actor (Rule 5): ``tenant`` when given, else the plain id when it
        names one actor only (the default tenant's, or the one tenant that has it)."""
        rt = self.runtime
        if kind not in rt.tenant_scoped:
            return actor_id
        if tenant is not None:
            return rt.key(kind, tenant, actor_id)
        if rt.exists(kind, actor_id):
            return actor_id
        keys = self._plain.get((kind, actor_id))
        if keys and len(keys) == 1:
            return next(iter(keys))
        return actor_id

    def ref(self, kind: str, actor_id: str, tenant: str | None = None) -> ActorRef:
        return self.runtime.ref(kind, self.key(kind, actor_id, tenant))

    def state_of(self, kind: str, actor_id: str, tenant: str | None = None) -> Any:
        return self.runtime.state_of(kind, self.key(kind, actor_id, tenant))

    def remove_actor(self, kind: str, actor_id: str, tenant: str | None = None) -> None:
        """Remove an agent or a queue (Rule 6): ``ActorMissing`` / ``ActorBusy`` when it cannot."""
        rt = self.runtime
        key = self.key(kind, actor_id, tenant)
        state = rt.state_of(kind, key)
        if state is None:
            raise ActorMissing(kind, actor_id)
        if kind == "agent":
            name = state.state.name
            if name in ("RESERVED", "ON_CALL"):
                raise ActorBusy(kind, actor_id, f"the agent is {name}")
            if name != "LOGGED_OUT":
                # log it out first so that its queues forget it (its effects, no reply)
                cell = rt._cell(kind, key)
                assert cell is not None
                new, effects = cell.spec.behaviour.step(state, AgentLogout(
                    agent_id=state.agent_id, at=rt._now()))
                cell.state = new
                rt._perform(cell, effects)
        elif kind == "queue":
            if state.waiting:
                raise ActorBusy(kind, actor_id, f"{len(state.waiting)} callers are waiting")
        elif kind == "call":
            raise ActorBusy(kind, actor_id, "calls end by hanging up")
        rt.remove(kind, key, "removed")
        keys = self._plain.get((kind, actor_id))
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._plain[(kind, actor_id)]

    # ---------------------------------------------------------------- routing

    def deliver_nowait(self, message: Any, tenant: str | None = None) -> None:
        """Route a message (to ``tenant``'s agent/queue, Rule 5); raises ``MailboxFull`` when its
        actor's mailbox is full."""
        kind, actor_id = route(message)
        actor_id = self.key(kind, actor_id, tenant)
        if not self._handled_here(kind, actor_id, message):
            self.runtime.tell_nowait(kind, actor_id, message)

    async def deliver(self, message: Any, tenant: str | None = None) -> None:
        """Route a message, waiting while its actor's mailbox is full."""
        kind, actor_id = route(message)
        actor_id = self.key(kind, actor_id, tenant)
        if not self._handled_here(kind, actor_id, message):
            await self.runtime.tell(kind, actor_id, message)
        else:
            await trio.lowlevel.checkpoint()

    async def ask(self, command: Any, timeout: float = 5.0, tenant: str | None = None) -> Reply:
        """Deliver a command and wait for its ``Reply`` (creating the call for ``Originate``)."""
        kind, actor_id = route(command)

        async def send(message: Any) -> None:
            await self.deliver(message, tenant)

        return await self.runtime.ask(kind, self.key(kind, actor_id, tenant), command, timeout=timeout,
                                      send=send)

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
