"""Actor runtime: hosts the pure state machines of ``engine.fsm`` as supervised actors.

See docs/actors.md for the design and the measurements behind it. In short: a shard is one trio
runtime whose actors are data (state + mailbox) run from a run queue by one worker task, with one
timer heap, ports for effects, and OTP-style supervision trees.
"""

from engine.actors.behaviour import AGENT, CALL, QUEUE, Behaviour
from engine.actors.errors import (
    ActorCrashed,
    ActorError,
    ActorExists,
    ActorNotFound,
    AskTimeout,
    MailboxFull,
    RuntimeClosed,
    SupervisorEscalation,
)
from engine.actors.node import Node, NodeStatistics, open_node, route, route_by_destination
from engine.actors.ports import (
    BufferedPort,
    CdrStore,
    CtiPort,
    InMemoryCdrs,
    InMemoryCti,
    InMemoryMedia,
    InMemoryPorts,
    InMemoryReplies,
    MediaPort,
    Ports,
    ReplyPort,
)
from engine.actors.runtime import (
    ActorRef,
    ActorStatistics,
    DeadLetter,
    Runtime,
    RuntimeStatistics,
    ShutdownReport,
    open_runtime,
)
from engine.actors.supervisor import ActorSpec, Supervisor, SupervisorSpec, TaskSpec
from engine.actors.timers import TimerHeap

__all__ = [
    "AGENT", "CALL", "QUEUE", "ActorCrashed", "ActorError", "ActorExists", "ActorNotFound",
    "ActorRef", "ActorSpec", "ActorStatistics", "AskTimeout", "Behaviour", "BufferedPort",
    "CdrStore", "CtiPort", "DeadLetter", "InMemoryCdrs", "InMemoryCti", "InMemoryMedia",
    "InMemoryPorts", "InMemoryReplies", "MailboxFull", "MediaPort", "Node", "NodeStatistics",
    "Ports", "ReplyPort", "Runtime", "RuntimeClosed", "RuntimeStatistics", "ShutdownReport",
    "Supervisor", "SupervisorEscalation", "SupervisorSpec", "TaskSpec", "TimerHeap", "open_node",
    "open_runtime", "route", "route_by_destination",
]
