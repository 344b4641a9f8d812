"""The actor runtime of one shard: registry, mailboxes, run queue, effects, crashes, statistics.

Rules
1. An actor is data, not a task: a ``Cell`` (kind, id, immutable state, mailbox, counters). Idle
   actors cost their state plus ~200 bytes; the mailbox deque exists only while mail is waiting.
2. One worker task per shard runs the actors that have mail from a FIFO run queue, at most
   ``throughput`` messages per actor per turn (Akka's dispatcher throughput), and yields to trio
   every ``batch`` messages. So a flooded actor cannot starve the others, and idle actors cost no
   task (measured in docs/actors.md: a trio task + channel per actor is ~3x the memory and slower).
3. Reading state, stepping the machine and writing the new state happen with no ``await`` in
   between (STYLE.md §2). Effects are performed in order right after, through non-blocking ports;
   ``Stop`` is performed last, whatever its position.
4. A step that raises leaves the state as it was (the last good immutable state), dead-letters the
   message with the error, publishes a CTI ``ACTOR_ERROR`` and counts a restart. More than
   ``max_crashes`` crashes within ``crash_window_s`` suspend the actor (its mailbox keeps filling)
   and hand it to its supervisor, which restarts it per strategy or escalates.
5. Backpressure applies to external messages: a full mailbox makes ``tell`` wait and
   ``tell_nowait`` raise ``MailboxFull``. Messages between actors (``Send`` effects) and timer
   messages are never refused: they carry protocol obligations (a reservation must be released) and
   their number is bounded by the machines, not by the outside world.
6. Messages for an actor that stopped recently go to its behaviour's tombstone (see behaviour.py);
   for one that never existed, a command with a ``request_id`` is answered ``NOT_FOUND`` and
   anything else is dead-lettered.
7. Time: timers use the trio clock (``StartTimer.deadline`` is a trio time); crash windows and
   generated events use ``clock`` (default ``trio.current_time``).
8. Tenants (``tenant_scoped`` kinds, e.g. agents and queues on a ``Node``): such an actor is
   registered under ``key(kind, tenant, id)`` = ``"<tenant>/<id>"`` (the plain id for the
   ``default`` tenant), so two tenants can both have agent ``1001``. Machines keep plain ids in
   their states and messages; a ``Send`` to a scoped kind is addressed in the SENDER's tenant
   (a tombstone's effects in the tenant of the actor that stopped). Unscoped runtimes (the
   default) are unchanged.
9. ``remote(kind, key, message) -> bool``, when given, is asked in ``_deliver`` before the rules
   for absent actors: True means another shard took the message. ``remote_reply(reply) -> bool``
   is asked for a ``Reply`` no local ``ask`` waits for, before the replies port: True means it
   went to the shard that asked.
10. Hooks for a host that moves actors between runtimes (a cluster): ``take`` an actor out (state,
   armed timers, queued mail; no tombstone), ``arm_timer`` at an absolute deadline, ``deliver`` by
   key as a ``Send`` does, ``perform`` effects on behalf of no actor, ``patch`` a state repaired
   against the outside world, ``reply``, ``dead_letter``, ``timers_of``. None of them awaits.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio

from engine.actors.behaviour import Behaviour
from engine.actors.errors import (
    ActorCrashed,
    ActorExists,
    AskTimeout,
    MailboxFull,
    RuntimeClosed,
    SupervisorEscalation,
)
from engine.actors.ports import Ports
from engine.actors.supervisor import ActorSpec, Supervisor, SupervisorSpec
from engine.actors.timers import TimerHeap
from engine.messages import (
    CancelTimer,
    CtiEvent,
    Effect,
    ProbeCall,
    ProbeReply,
    PublishCti,
    Reply,
    Send,
    SendMedia,
    StartTimer,
    Stop,
    TimerFired,
    WriteCdr,
)

__all__ = [
    "ActorRef",
    "ActorStatistics",
    "Cell",
    "DeadLetter",
    "Runtime",
    "RuntimeStatistics",
    "ShutdownReport",
    "Taken",
    "open_runtime",
]


class Cell:
    """One actor. Plain slots: an idle actor is this object, its state and a registry entry."""

    __slots__ = ("kind", "id", "spec", "state", "mail", "scheduled", "alive", "suspended",
                 "processed", "restarts", "crashes", "timers", "space", "sup", "child")

    def __init__(self, kind: str, actor_id: str, spec: ActorSpec, state: Any, sup: Any, child: Any) -> None:
        self.kind = kind
        self.id = actor_id
        self.spec = spec
        self.state = state
        #: pending messages; None while empty (an empty deque costs ~760 bytes)
        self.mail: deque[Any] | None = None
        #: in the run queue (or being run)
        self.scheduled = False
        self.alive = True
        #: crashed past its intensity: waits for its supervisor's decision, mail accumulates
        self.suspended = False
        self.processed = 0
        self.restarts = 0
        #: times of recent crashes (None until the first one)
        self.crashes: list[float] | None = None
        #: armed timers {key: seq}, None when none (see timers.py)
        self.timers: dict[str, int] | None = None
        #: tasks waiting in ``tell`` for room in the mailbox (created on demand)
        self.space: trio.lowlevel.ParkingLot | None = None
        #: supervisor and (for static children) the supervisor's child record
        self.sup = sup
        self.child = child

    def __repr__(self) -> str:
        return f"<Cell {self.kind}:{self.id}>"


class DeadLetter(msgspec.Struct, frozen=True):
    kind: str
    actor_id: str
    message: Any
    reason: str
    at: float


class ActorStatistics(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    actor_id: str
    mailbox_depth: int
    capacity: int
    processed: int
    restarts: int
    timers: int
    suspended: bool


class RuntimeStatistics(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    actors: dict[str, int]
    #: messages waiting in all mailboxes
    mailbox_depth: int
    #: deepest mailbox among actors that have mail
    max_mailbox_depth: int
    run_queue: int
    processed: int
    spawned: int
    stopped: int
    dead_letters: int
    crashes: int
    #: crash resumptions plus supervisor restarts
    restarts: int
    #: actors handed to their supervisor after too many crashes
    escalations: int
    #: late messages for recently stopped actors, dropped quietly
    late_dropped: int
    #: late messages stepped on a tombstone (their effects performed)
    late_handled: int
    effect_errors: int
    timers: int
    timers_fired: int
    suspended: int
    pending_asks: int


class Taken(msgspec.Struct, frozen=True, kw_only=True):
    """An actor taken out of a runtime (``Runtime.take``): what another runtime needs to go on."""

    kind: str
    actor_id: str
    state: Any
    #: armed timers, ``(key, absolute deadline)``
    timers: tuple[tuple[str, float], ...] = ()
    #: messages that were queued, in order
    mail: tuple[Any, ...] = ()


class ShutdownReport(msgspec.Struct, frozen=True, kw_only=True):
    drained: bool
    #: messages still queued when the deadline passed (dead-lettered)
    undrained: int
    stopped: int
    elapsed_s: float


class _Ask:
    __slots__ = ("event", "reply", "error")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: Reply | None = None
        self.error: str | None = None


class ActorRef:
    """Address of an actor: (kind, id) on a runtime. Cheap, created on demand, never stale-unsafe:
    telling an actor that is gone follows the runtime's undeliverable rules (Rule 6)."""

    __slots__ = ("runtime", "kind", "id")

    def __init__(self, runtime: Runtime, kind: str, actor_id: str) -> None:
        self.runtime = runtime
        self.kind = kind
        self.id = actor_id

    def __repr__(self) -> str:
        return f"ActorRef({self.kind!r}, {self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and (other.runtime, other.kind, other.id) == (
            self.runtime, self.kind, self.id)

    def __hash__(self) -> int:
        return hash((self.kind, self.id))

    @property
    def alive(self) -> bool:
        return self.runtime.exists(self.kind, self.id)

    def tell_nowait(self, message: Any) -> None:
        """Enqueue or raise ``MailboxFull`` (``RuntimeClosed`` after shutdown began)."""
        self.runtime.tell_nowait(self.kind, self.id, message)

    async def tell(self, message: Any) -> None:
        """Enqueue, waiting while the mailbox is full."""
        await self.runtime.tell(self.kind, self.id, message)

    async def ask(self, message: Any, timeout: float = 5.0) -> Reply:
        """Send a command and wait for its ``Reply`` (raises ``AskTimeout`` / ``ActorCrashed``)."""
        return await self.runtime.ask(self.kind, self.id, message, timeout=timeout)

    def statistics(self) -> ActorStatistics | None:
        return self.runtime.actor_statistics(self.kind, self.id)

    @property
    def state(self) -> Any:
        return self.runtime.state_of(self.kind, self.id)


Observer = Callable[[str, dict[str, Any]], None]


class Runtime:
    """One shard: hosts actors, one worker, one timer heap, one supervision loop, one nursery."""

    def __init__(
        self,
        *,
        ports: Ports | None = None,
        name: str = "shard-0",
        mailbox_capacity: int = 1024,
        throughput: int = 32,
        batch: int = 128,
        recently_stopped: int = 10_000,
        dead_letters_kept: int = 1_000,
        clock: Callable[[], float] | None = None,
        observer: Observer | None = None,
        remote: Callable[[str, str, Any], bool] | None = None,
        tenant_scoped: Iterable[str] = (),
        remote_reply: Callable[[Reply], bool] | None = None,
    ) -> None:
        self.ports: Ports = ports if ports is not None else Ports.in_memory()
        self.name = name
        self.mailbox_capacity = mailbox_capacity
        self.throughput = throughput
        self.batch = batch
        self.clock: Callable[[], float] = clock or trio.current_time
        self.observer = observer
        self.remote = remote
        self.remote_reply = remote_reply
        #: kinds whose actors are registered per tenant (Rule 8)
        self.tenant_scoped = frozenset(tenant_scoped)
        #: tenant of recently stopped actors of a non-default tenant (their tombstones' sends)
        self._recent_tenant: dict[tuple[str, str], str] = {}
        self._registry: dict[str, dict[str, Cell]] = {}
        self._kinds: dict[str, Behaviour] = {}
        self._default_specs: dict[str, ActorSpec] = {}
        self._recent: dict[str, tuple[deque[str], set[str]]] = {}
        self._recent_cap = recently_stopped
        self._run_queue: deque[Cell] = deque()
        self._suspended: set[Cell] = set()
        self._worker_lot = trio.lowlevel.ParkingLot()
        self._idle_lot = trio.lowlevel.ParkingLot()
        self._timer_lot = trio.lowlevel.ParkingLot()
        self._sup_lot = trio.lowlevel.ParkingLot()
        self._sup_work: deque[tuple[Supervisor, Any, bool]] = deque()
        self._timers = TimerHeap()
        self._asks: dict[str, _Ask] = {}
        self._ask_seq = 0
        self.dead_letters: deque[DeadLetter] = deque(maxlen=dead_letters_kept)
        self.root: Supervisor | None = None
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._running = False
        self._shutdown_report: ShutdownReport | None = None
        self._done = trio.Event()
        self.failure: SupervisorEscalation | None = None
        # counters
        self._queued = 0
        self.processed = 0
        self.spawned = 0
        self.stopped = 0
        self.dead_lettered = 0
        self.crashes = 0
        self.restarts = 0
        self.escalations = 0
        self.late_dropped = 0
        self.late_handled = 0
        self.effect_errors = 0

    # ---------------------------------------------------------------- lifecycle

    async def run(self, root: SupervisorSpec | None = None, *,
                  task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the shard until ``shutdown()``; start ``root``'s children in order first."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._running = True
            nursery.start_soon(self._worker)
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._supervision_loop)
            self.root = Supervisor(self, root or SupervisorSpec(id="root"), parent=None, path="")
            await self.root.start()
            task_status.started(self)
            await self._done.wait()
            nursery.cancel_scope.cancel()
        self._running = False
        if self.failure is not None:
            raise self.failure

    async def shutdown(self, deadline_s: float = 5.0) -> ShutdownReport:
        """Refuse new external mail, drain what is queued, stop children in reverse start order.

        Everything happens within ``deadline_s``: mail left after it is dead-lettered, tasks that
        ignore cancellation past it are abandoned to the nursery's cancellation.
        """
        if self._shutdown_report is not None:
            return self._shutdown_report
        self._closed = True
        start = trio.current_time()
        end = start + deadline_s
        drained = True
        with trio.move_on_at(end):
            while self._run_queue or self._sup_work or self._suspended_with_mail():
                await self._idle_lot.park()
        if self._run_queue or self._sup_work or self._suspended_with_mail():
            drained = False
        undrained = self._queued
        stopped_before = self.stopped
        if self.root is not None:
            with trio.move_on_at(max(end, trio.current_time() + 0.001)):
                await self.root.terminate()
        # unsupervised actors (spawned without a supervisor) go last, newest first
        for table in reversed(list(self._registry.values())):
            for cell in reversed(list(table.values())):
                self._remove(cell, "shutdown", leftovers="dead")
        report = ShutdownReport(drained=drained, undrained=undrained,
                                stopped=self.stopped - stopped_before,
                                elapsed_s=trio.current_time() - start)
        self._shutdown_report = report
        self._emit("shutdown", drained=drained, undrained=undrained)
        self._done.set()
        return report

    def _suspended_with_mail(self) -> bool:
        return any(c.mail for c in self._suspended)

    def _fatal(self, error: SupervisorEscalation) -> None:
        """The root gave up: the shard stops and ``run`` raises (its host restarts the shard)."""
        if self.failure is None:
            self.failure = error
            self._emit("fatal", error=repr(error))
            assert self._nursery is not None
            self._nursery.start_soon(self.shutdown, 1.0)

    # ---------------------------------------------------------------- registry

    def key(self, kind: str, tenant: str | None, actor_id: str) -> str:
        """The registry key of ``actor_id`` of ``tenant`` (Rule 8)."""
        if tenant and tenant != "default" and kind in self.tenant_scoped:
            return f"{tenant}/{actor_id}"
        return actor_id

    def exists(self, kind: str, actor_id: str) -> bool:
        table = self._registry.get(kind)
        return table is not None and actor_id in table

    def ref(self, kind: str, actor_id: str) -> ActorRef:
        return ActorRef(self, kind, actor_id)

    def lookup(self, kind: str, actor_id: str) -> ActorRef | None:
        return ActorRef(self, kind, actor_id) if self.exists(kind, actor_id) else None

    def ids(self, kind: str) -> list[str]:
        return list(self._registry.get(kind, ()))

    def state_of(self, kind: str, actor_id: str) -> Any:
        cell = self._cell(kind, actor_id)
        return None if cell is None else cell.state

    def states(self, kind: str) -> Iterable[Any]:
        return [c.state for c in self._registry.get(kind, {}).values()]

    def recently_stopped(self, kind: str, actor_id: str) -> bool:
        recent = self._recent.get(kind)
        return recent is not None and actor_id in recent[1]

    def _cell(self, kind: str, actor_id: str) -> Cell | None:
        table = self._registry.get(kind)
        return None if table is None else table.get(actor_id)

    def spawn(self, behaviour: Behaviour | ActorSpec, actor_id: str, state: Any,
              effects: Sequence[Effect] = (), *, supervisor: Supervisor | None = None) -> ActorRef:
        """Register an actor with ``state`` and perform its initial ``effects``.

        With a ``supervisor`` that has a dynamic template, the actor is its child; otherwise it is
        unsupervised (crashes past its intensity just resume it, counted as restarts).
        """
        if supervisor is not None:
            return supervisor.start_child(actor_id, state, effects)
        if isinstance(behaviour, ActorSpec):
            spec = behaviour
        else:
            spec = self._default_specs.get(behaviour.kind) or ActorSpec(behaviour=behaviour)
            self._default_specs[behaviour.kind] = spec
        self._spawn(spec, actor_id, state, effects, sup=None, child=None)
        return ActorRef(self, spec.behaviour.kind, actor_id)

    def _spawn(self, spec: ActorSpec, actor_id: str, state: Any, effects: Sequence[Effect],
               sup: Supervisor | None, child: Any) -> Cell:
        kind = spec.behaviour.kind
        table = self._registry.get(kind)
        if table is None:
            table = self._registry[kind] = {}
            self._kinds[kind] = spec.behaviour
        if actor_id in table:
            raise ActorExists(kind, actor_id)
        cell = Cell(kind, actor_id, spec, state, sup, child)
        table[actor_id] = cell
        if sup is not None and child is None:
            sup.dynamic[actor_id] = cell
        recent = self._recent.get(kind)
        if recent is not None and actor_id in recent[1]:
            recent[1].discard(actor_id)  # reused id (a restart): it is live again
        self.spawned += 1
        if effects:
            self._perform(cell, effects)
        return cell

    def _remove(self, cell: Cell, reason: str, *, leftovers: str = "late") -> None:
        """Forget a cell: registry, timers, suspension; its pending mail goes to ``leftovers``."""
        if not cell.alive:
            return
        cell.alive = False
        table = self._registry[cell.kind]
        if table.get(cell.id) is cell:
            del table[cell.id]
        self._timers.cancel_all(cell)
        self._suspended.discard(cell)
        self.stopped += 1
        behaviour = cell.spec.behaviour
        if behaviour.tombstone is not None:
            recent = self._recent.get(cell.kind)
            if recent is None:
                recent = self._recent[cell.kind] = (deque(), set())
            order, members = recent
            if cell.id not in members:
                order.append(cell.id)
                members.add(cell.id)
                if self.tenant_scoped:
                    tenant = self._tenant_of(cell)
                    if tenant != "default":
                        self._recent_tenant[(cell.kind, cell.id)] = tenant
                if len(order) > self._recent_cap:
                    gone = order.popleft()
                    members.discard(gone)
                    self._recent_tenant.pop((cell.kind, gone), None)
        mail = cell.mail
        cell.mail = None
        if mail:
            self._queued -= len(mail)
            for message in mail:
                if leftovers == "late":
                    self._late(cell.kind, cell.id, message)
                else:
                    self._dead_letter(cell.kind, cell.id, message, reason)
        if cell.space is not None:
            cell.space.unpark_all()
        self._emit("stopped", kind=cell.kind, id=cell.id, reason=reason)

    # ---------------------------------------------------------------- telling

    def tell_nowait(self, kind: str, actor_id: str, message: Any) -> None:
        if self._closed:
            raise RuntimeClosed(f"runtime {self.name} is shutting down")
        table = self._registry.get(kind)
        cell = None if table is None else table.get(actor_id)
        if cell is None:
            self._undeliverable(kind, actor_id, message)
            return
        mail = cell.mail
        if mail is None:
            mail = cell.mail = deque()
        elif len(mail) >= (cell.spec.capacity or self.mailbox_capacity):
            raise MailboxFull(kind, actor_id, cell.spec.capacity or self.mailbox_capacity)
        mail.append(message)
        self._queued += 1
        if not cell.scheduled and not cell.suspended:
            cell.scheduled = True
            rq = self._run_queue
            rq.append(cell)
            if len(rq) == 1:
                self._worker_lot.unpark()

    async def tell(self, kind: str, actor_id: str, message: Any) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise RuntimeClosed(f"runtime {self.name} is shutting down")
            cell = self._cell(kind, actor_id)
            if cell is None or cell.mail is None or len(cell.mail) < (cell.spec.capacity or self.mailbox_capacity):
                self.tell_nowait(kind, actor_id, message)
                break
            if cell.space is None:
                cell.space = trio.lowlevel.ParkingLot()
            await cell.space.park()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _deliver(self, kind: str, actor_id: str, message: Any) -> None:
        """Internal delivery (``Send`` effects, timers): never refused for capacity (Rule 5)."""
        table = self._registry.get(kind)
        cell = None if table is None else table.get(actor_id)
        if cell is None:
            remote = self.remote
            if remote is not None and remote(kind, actor_id, message):
                return
            self._undeliverable(kind, actor_id, message)
            return
        self._enqueue(cell, message)

    def _enqueue(self, cell: Cell, message: Any) -> None:
        mail = cell.mail
        if mail is None:
            mail = cell.mail = deque()
        mail.append(message)
        self._queued += 1
        if not cell.scheduled and not cell.suspended:
            cell.scheduled = True
            rq = self._run_queue
            rq.append(cell)
            if len(rq) == 1:
                self._worker_lot.unpark()

    async def ask(self, kind: str, actor_id: str, message: Any, timeout: float = 5.0, *,
                  send: Callable[[Any], Awaitable[None]] | None = None) -> Reply:
        """Tell a command (``send`` delivers it instead of ``tell``) and wait for its ``Reply``."""
        if not hasattr(message, "request_id"):
            raise TypeError(f"ask needs a command with a request_id, not {type(message).__name__}")
        request_id = message.request_id
        if not request_id:
            self._ask_seq += 1
            request_id = f"{self.name}-ask-{self._ask_seq}"
            message = msgspec.structs.replace(message, request_id=request_id)
        waiter = self._asks[request_id] = _Ask()
        try:
            with trio.move_on_after(timeout):
                if send is None:
                    await self.tell(kind, actor_id, message)
                else:
                    await send(message)
                await waiter.event.wait()
        finally:
            self._asks.pop(request_id, None)
        if waiter.error is not None:
            raise ActorCrashed(kind, actor_id, waiter.error)
        if waiter.reply is None:
            raise AskTimeout(kind, actor_id, request_id, timeout)
        return waiter.reply

    def _undeliverable(self, kind: str, actor_id: str, message: Any) -> None:
        if self.recently_stopped(kind, actor_id):
            self._late(kind, actor_id, message)
            return
        if isinstance(message, ProbeCall):
            # a probe is answered even for a call this runtime never heard of (it ended on a shard
            # that died, say): a call that does not exist has nobody on it
            self._perform(None, [Send(to="agent", to_id=message.agent_id, message=ProbeReply(
                agent_id=message.agent_id, at=message.at, call_id=message.call_id, connected=False))])
            return
        request_id = getattr(message, "request_id", "")
        if request_id:
            self._reply(Reply(request_id=request_id, ok=False, code="NOT_FOUND",
                              message=f"no {kind} {actor_id}"))
            return
        self._dead_letter(kind, actor_id, message, "no_such_actor")

    def _late(self, kind: str, actor_id: str, message: Any) -> None:
        behaviour = self._kinds.get(kind)
        if behaviour is None or behaviour.tombstone is None:
            self._dead_letter(kind, actor_id, message, "stopped")
            return
        if isinstance(message, behaviour.late_noise):
            self.late_dropped += 1
            return
        try:
            _, effects = behaviour.step(behaviour.tombstone(actor_id), message)
        except Exception:
            self.late_dropped += 1
            return
        self.late_handled += 1
        if effects:
            self._perform(None, effects, tenant=self._recent_tenant.get((kind, actor_id)))

    def _dead_letter(self, kind: str, actor_id: str, message: Any, reason: str) -> None:
        self.dead_lettered += 1
        self.dead_letters.append(DeadLetter(kind, actor_id, message, reason, self._now()))

    def _now(self) -> float:
        try:
            return self.clock()
        except RuntimeError:  # outside trio (a test building a runtime by hand)
            return 0.0

    # ---------------------------------------------------------------- the worker

    async def _worker(self) -> None:
        rq = self._run_queue
        throughput = self.throughput
        process = self._process
        while True:
            if not rq:
                self._idle_lot.unpark_all()
                await self._worker_lot.park()
                continue
            budget = self.batch
            while rq and budget > 0:
                cell = rq.popleft()
                mail = cell.mail
                n = 0
                while mail and n < throughput and cell.alive and not cell.suspended:
                    message = mail.popleft()
                    n += 1
                    process(cell, message)
                self._queued -= n
                budget -= n or 1
                if cell.space is not None and cell.space:
                    cell.space.unpark_all()
                if cell.alive and not cell.suspended and cell.mail:
                    rq.append(cell)
                else:
                    cell.scheduled = False
                    if cell.mail is not None and not cell.mail:
                        cell.mail = None
            await trio.lowlevel.checkpoint()

    def _process(self, cell: Cell, message: Any) -> None:
        try:
            state, effects = cell.spec.behaviour.step(cell.state, message)
        except Exception as exc:  # the machine refused or broke: keep the last good state
            self._crash(cell, message, exc)
            return
        cell.state = state
        cell.processed += 1
        self.processed += 1
        if effects:
            self._perform(cell, effects)

    def _tenant_of(self, cell: Cell) -> str:
        try:
            return str(cell.spec.behaviour.tenant_of(cell.state))
        except Exception:
            return "default"

    def _perform(self, cell: Cell | None, effects: Sequence[Effect], *, tenant: str | None = None) -> None:
        """Perform effects in order (``Stop`` last). ``tenant`` addresses the ``Send``s of an
        effect list without a cell (a tombstone's); with a cell, the cell's tenant (Rule 8)."""
        ports = self.ports
        stop: Stop | None = None
        scoped = self.tenant_scoped
        for effect in effects:
            kind = type(effect)
            try:
                if kind is SendMedia:
                    ports.media.send(effect.command)  # type: ignore[union-attr]
                elif kind is PublishCti:
                    ports.cti.publish(effect.event)  # type: ignore[union-attr]
                elif kind is Send:
                    to_id = effect.to_id  # type: ignore[union-attr]
                    if scoped and effect.to in scoped:  # type: ignore[union-attr]
                        if tenant is None and cell is not None:
                            tenant = self._tenant_of(cell)
                        to_id = self.key(effect.to, tenant, to_id)  # type: ignore[union-attr]
                    self._deliver(effect.to, to_id, effect.message)  # type: ignore[union-attr]
                elif kind is StartTimer:
                    if cell is not None and cell.alive and self._timers.start(
                            cell, effect.key, effect.deadline):  # type: ignore[union-attr]
                        self._timer_lot.unpark_all()
                elif kind is CancelTimer:
                    if cell is not None:
                        self._timers.cancel(cell, effect.key)  # type: ignore[union-attr]
                elif kind is WriteCdr:
                    ports.cdr.write(effect.cdr)  # type: ignore[union-attr]
                elif kind is Reply:
                    self._reply(effect)  # type: ignore[arg-type]
                elif kind is Stop:
                    stop = effect  # type: ignore[assignment]
                else:
                    raise TypeError(f"unknown effect {kind.__name__}")
            except Exception as exc:  # a port failed: the state is written, go on with the rest
                self.effect_errors += 1
                where = (cell.kind, cell.id) if cell is not None else ("?", "?")
                self._dead_letter(where[0], where[1], effect, f"effect failed: {exc!r}")
        if stop is not None and cell is not None:
            self._finish(cell, stop.reason)

    def _reply(self, reply: Reply) -> None:
        waiter = self._asks.get(reply.request_id)
        if waiter is not None:
            waiter.reply = reply
            waiter.event.set()
        elif self.remote_reply is None or not self.remote_reply(reply):
            self.ports.replies.reply(reply)

    # ---------------------------------------------------------------- hooks for hosts (Rule 10)

    def deliver(self, kind: str, actor_id: str, message: Any) -> None:
        """Deliver by registry key as a ``Send`` effect does: never refused for capacity; an absent
        actor goes to ``remote`` first, then the undeliverable rules (Rule 6)."""
        self._deliver(kind, actor_id, message)

    def perform(self, effects: Sequence[Effect], *, tenant: str | None = None) -> None:
        """Perform effects on behalf of no actor (a host re-announcing or repairing after a
        restart): sends, media, CTI, CDRs, replies. Timers and ``Stop`` need an actor: ignored."""
        self._perform(None, effects, tenant=tenant)

    def patch(self, kind: str, actor_id: str, state: Any, effects: Sequence[Effect] = ()) -> bool:
        """Replace a live actor's state from outside its machine (a host repairing it against the
        outside world) and perform ``effects`` as that actor. False when there is no such actor."""
        cell = self._cell(kind, actor_id)
        if cell is None:
            return False
        cell.state = state
        if effects:
            self._perform(cell, effects)
        return True

    def reply(self, reply: Reply) -> None:
        """Answer ``reply.request_id`` as a ``Reply`` effect does (the local asker, else the hook,
        else the replies port)."""
        self._reply(reply)

    def reply_here(self, reply: Reply) -> None:
        """Answer the local asker of ``reply.request_id``, else the replies port; never the
        ``remote_reply`` hook (a reply that already came back from another shard)."""
        waiter = self._asks.get(reply.request_id)
        if waiter is not None:
            waiter.reply = reply
            waiter.event.set()
        else:
            self.ports.replies.reply(reply)

    def dead_letter(self, kind: str, actor_id: str, message: Any, reason: str) -> None:
        self._dead_letter(kind, actor_id, message, reason)

    def timers_of(self) -> dict[tuple[str, str], list[tuple[str, float]]]:
        """Armed timers of every actor: ``(kind, id) -> [(key, absolute deadline)]``."""
        out: dict[tuple[str, str], list[tuple[str, float]]] = {}
        for owner, key, deadline in self._timers.armed():
            out.setdefault((owner.kind, owner.id), []).append((key, deadline))
        return out

    def arm_timer(self, kind: str, actor_id: str, key: str, deadline: float) -> bool:
        """Arm a live actor's timer at an absolute deadline, as its ``StartTimer`` would."""
        cell = self._cell(kind, actor_id)
        if cell is None:
            return False
        if self._timers.start(cell, key, deadline):
            self._timer_lot.unpark_all()
        return True

    def take(self, kind: str, actor_id: str) -> Taken | None:
        """Take a live actor out, to be started elsewhere, in one synchronous step: its state,
        armed timers and queued mail go with it. It leaves no tombstone here (it lives on) and its
        mail is not dead-lettered. None when there is no such actor."""
        cell = self._cell(kind, actor_id)
        if cell is None:
            return None
        timers = tuple(sorted((key, deadline) for owner, key, deadline in self._timers.armed() if owner is cell))
        mail = tuple(cell.mail or ())
        self._queued -= len(mail)
        cell.mail = None
        state = cell.state
        self._remove(cell, "moved", leftovers="dead")
        recent = self._recent.get(kind)
        if recent is not None:
            recent[1].discard(actor_id)  # it lives on elsewhere: no tombstone here
        self._recent_tenant.pop((kind, actor_id), None)
        if cell.sup is not None:
            cell.sup.child_removed(cell)
        return Taken(kind=kind, actor_id=actor_id, state=state, timers=timers, mail=mail)

    def remove(self, kind: str, actor_id: str, reason: str = "removed") -> bool:
        """Forget an actor now (its pending mail goes to the late path, its timers are dropped,
        its supervisor forgets it). False when there is no such actor."""
        cell = self._cell(kind, actor_id)
        if cell is None:
            return False
        sup = cell.sup
        self._remove(cell, reason)
        if sup is not None:
            sup.child_removed(cell)
        return True

    def _finish(self, cell: Cell, reason: str) -> None:
        """The machine returned ``Stop``: forget the actor unless its supervisor restarts it."""
        if not cell.alive:
            return
        sup = cell.sup
        if sup is not None and cell.child is not None and cell.spec.restart == "permanent":
            self._suspend(cell)
            self._escalate(sup, cell.child, abnormal=False)
            return
        self._remove(cell, f"stop:{reason}")
        if sup is not None:
            sup.child_removed(cell)

    # ---------------------------------------------------------------- crashes

    def _crash(self, cell: Cell, message: Any, exc: Exception) -> None:
        error = repr(exc)
        now = self._now()
        self.crashes += 1
        self.restarts += 1
        cell.restarts += 1
        self._dead_letter(cell.kind, cell.id, message, error)
        ids = {f"{cell.kind}_id": cell.id} if cell.kind in ("call", "agent", "queue") else {}
        try:
            tenant = cell.spec.behaviour.tenant_of(cell.state)
        except Exception:
            tenant = "default"
        try:
            self.ports.cti.publish(CtiEvent(
                name="ACTOR_ERROR", tenant=tenant, at=now, data={
                    "kind": cell.kind, "id": cell.id, "error": error[:500],
                    "message": type(message).__name__, "restarts": cell.restarts},
                **ids))  # type: ignore[arg-type]
        except Exception:
            self.effect_errors += 1
        request_id = getattr(message, "request_id", "")
        if request_id:
            waiter = self._asks.get(request_id)
            if waiter is not None:
                waiter.error = error
                waiter.event.set()
        self._emit("crashed", kind=cell.kind, id=cell.id, error=error)
        spec = cell.spec
        crashes = cell.crashes
        if crashes is None:
            crashes = cell.crashes = []
        crashes.append(now)
        horizon = now - spec.crash_window_s
        while crashes and crashes[0] < horizon:
            del crashes[0]
        if len(crashes) > spec.max_crashes:
            cell.crashes = None
            self.escalations += 1
            if cell.sup is None:
                self._emit("resumed", kind=cell.kind, id=cell.id)
                return  # unsupervised: resuming is all there is to do
            self._suspend(cell)
            self._escalate(cell.sup, cell.child if cell.child is not None else cell, abnormal=True)

    def _suspend(self, cell: Cell) -> None:
        cell.suspended = True
        self._suspended.add(cell)

    def _unsuspend(self, cell: Cell) -> None:
        cell.suspended = False
        self._suspended.discard(cell)
        if cell.alive and cell.mail and not cell.scheduled:
            cell.scheduled = True
            self._run_queue.append(cell)
            self._worker_lot.unpark()

    def _escalate(self, sup: Supervisor, child: Any, *, abnormal: bool) -> None:
        self._sup_work.append((sup, child, abnormal))
        self._sup_lot.unpark()

    async def _supervision_loop(self) -> None:
        while True:
            if not self._sup_work:
                self._idle_lot.unpark_all()
                await self._sup_lot.park()
                continue
            sup, child, abnormal = self._sup_work.popleft()
            await sup.handle_exit(child, abnormal)

    # ---------------------------------------------------------------- timers

    async def _timer_loop(self) -> None:
        timers = self._timers
        while True:
            for cell, key, deadline in timers.pop_due(trio.current_time()):
                if cell.alive:
                    self._enqueue(cell, TimerFired(key=key, at=deadline))
            upcoming = timers.next_deadline()
            with trio.move_on_at(math.inf if upcoming is None else upcoming):
                await self._timer_lot.park()

    def restart_cell(self, cell: Cell, *, resume: bool, init: Callable[[], tuple[Any, Sequence[Effect]]] | None) -> None:
        """Restart an actor in place: mailbox kept (as Akka does), crash history cleared.

        ``resume`` keeps the last good state and its timers; otherwise ``init`` gives a fresh state
        and effects, and the old timers are dropped.
        """
        cell.restarts += 1
        self.restarts += 1
        cell.crashes = None
        if not resume and init is not None:
            self._timers.cancel_all(cell)
            state, effects = init()
            cell.state = state
            if effects:
                self._perform(cell, effects)
        self._emit("restarted", kind=cell.kind, id=cell.id, resume=resume)
        if cell.alive:
            self._unsuspend(cell)

    # ---------------------------------------------------------------- tasks (adapters, links)

    @property
    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("the runtime is not running")
        return self._nursery

    # ---------------------------------------------------------------- statistics

    def actor_statistics(self, kind: str, actor_id: str) -> ActorStatistics | None:
        cell = self._cell(kind, actor_id)
        if cell is None:
            return None
        return ActorStatistics(kind=kind, actor_id=actor_id, mailbox_depth=len(cell.mail or ()),
                               capacity=cell.spec.capacity or self.mailbox_capacity,
                               processed=cell.processed, restarts=cell.restarts,
                               timers=len(cell.timers or ()), suspended=cell.suspended)

    def statistics(self) -> RuntimeStatistics:
        depths = [len(c.mail) for c in self._run_queue if c.mail]
        depths += [len(c.mail) for c in self._suspended if c.mail]
        return RuntimeStatistics(
            name=self.name,
            actors={kind: len(table) for kind, table in self._registry.items()},
            mailbox_depth=self._queued,
            max_mailbox_depth=max(depths, default=0),
            run_queue=len(self._run_queue),
            processed=self.processed,
            spawned=self.spawned,
            stopped=self.stopped,
            dead_letters=self.dead_lettered,
            crashes=self.crashes,
            restarts=self.restarts,
            escalations=self.escalations,
            late_dropped=self.late_dropped,
            late_handled=self.late_handled,
            effect_errors=self.effect_errors,
            timers=len(self._timers),
            timers_fired=self._timers.fired,
            suspended=len(self._suspended),
            pending_asks=len(self._asks),
        )

    def _emit(self, what: str, **data: Any) -> None:
        if self.observer is not None:
            self.observer(what, data)


@asynccontextmanager
async def open_runtime(root: SupervisorSpec | None = None, *, shutdown_deadline_s: float = 5.0,
                       **options: Any) -> AsyncIterator[Runtime]:
    """Run a runtime for the duration of the block; shut it down gracefully on exit."""
    runtime = Runtime(**options)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run, root)
        try:
            yield runtime
        finally:
            with trio.CancelScope(shield=True):
                await runtime.shutdown(shutdown_deadline_s)
