"""Supervision trees (Erlang/OTP semantics, adapted to immutable actor states).

Rules
1. A supervisor starts its children in order and stops them in reverse order. Children are actors
   (``ActorSpec``), tasks (``TaskSpec``: adapters, media links) or supervisors (``SupervisorSpec``),
   so trees nest: node -> media links, queues, agents, calls.
2. Strategies: ``one_for_one`` restarts the child that exited; ``one_for_all`` stops every other
   child (reverse order) and restarts them all (in order); ``rest_for_one`` does that for the
   child and the ones started after it.
3. Restart types: ``permanent`` children are always restarted, ``transient`` only after an
   abnormal exit, ``temporary`` never (they are removed).
4. Intensity: more than ``intensity`` restarts within ``period_s`` and the supervisor gives up:
   it stops its children and exits abnormally, escalating to its parent; past the root the shard
   fails (``SupervisorEscalation`` from ``Runtime.run``).
5. What "exit" means: an actor exits normally with a ``Stop`` effect, abnormally when it crashes
   more than ``max_crashes`` times in ``crash_window_s`` (single crashes are absorbed in place by
   the runtime: the message is dead-lettered, the state kept). A task exits when its function
   returns (normal) or raises (abnormal).
6. What "restart" means: a task is started again. An actor is restarted *in place*: same
   registration, mailbox kept (as in Akka, so nothing sent to it meanwhile is lost), crash history
   cleared, and its state either resumed (``resume=True``: the last good immutable state, with its
   timers) or rebuilt by ``init()``. A permanent actor that stopped normally restarts from
   ``init()``. Stopping a child to restart it suspends an actor rather than unregistering it.
7. Dynamic children (``SupervisorSpec.dynamic``, Erlang's simple_one_for_one) share one
   ``ActorSpec`` template, cost one dict entry each and always resume (their initial state came
   from the event that created them). Only ``one_for_one`` supervisors may have them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import trio

from engine.actors.behaviour import Behaviour
from engine.actors.errors import SupervisorEscalation
from engine.messages import Effect

if TYPE_CHECKING:
    from engine.actors.runtime import ActorRef, Cell, Runtime

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
Restart = Literal["permanent", "transient", "temporary"]

__all__ = ["ActorSpec", "Restart", "Strategy", "Supervisor", "SupervisorSpec", "TaskSpec"]


@dataclass(frozen=True, slots=True, eq=False)
class ActorSpec:
    behaviour: Behaviour
    #: the child's id (static children); unused for a dynamic template
    id: str = ""
    #: initial state and effects (required for static children)
    init: Callable[[], tuple[Any, Sequence[Effect]]] | None = None
    restart: Restart = "permanent"
    #: on restart after a failure, keep the last good state (else call ``init``)
    resume: bool = True
    #: mailbox capacity for external messages (0: the runtime's default)
    capacity: int = 0
    #: more than this many crashes within ``crash_window_s`` is a failure (escalated)
    max_crashes: int = 3
    crash_window_s: float = 5.0


@dataclass(frozen=True, slots=True, eq=False)
class TaskSpec:
    """A supervised task: ``await fn(task_status=...)``; it should call ``task_status.started()``
    once it is ready (the supervisor waits for that before starting the next child)."""

    id: str
    fn: Callable[..., Awaitable[None]]
    restart: Restart = "permanent"
    #: how long a stop waits for the cancelled task to finish
    shutdown_s: float = 5.0


@dataclass(frozen=True, slots=True, eq=False)
class SupervisorSpec:
    id: str
    strategy: Strategy = "one_for_one"
    intensity: int = 3
    period_s: float = 5.0
    children: tuple[ActorSpec | TaskSpec | SupervisorSpec, ...] = ()
    restart: Restart = "permanent"
    #: template for children started at run time with ``start_child`` (one_for_one only)
    dynamic: ActorSpec | None = None


ChildSpec = ActorSpec | TaskSpec | SupervisorSpec


class _Started:
    """A task_status that remembers whether the task reported itself started."""

    __slots__ = ("_status", "done")

    def __init__(self, status: trio.TaskStatus[Any]) -> None:
        self._status = status
        self.done = False

    def started(self, value: Any = None) -> None:
        if not self.done:
            self.done = True
            self._status.started(value)


class _TaskHandle:
    __slots__ = ("scope", "done", "stopping")

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None
        self.done = trio.Event()
        self.stopping = False


class _Child:
    __slots__ = ("spec", "cell", "task", "sup", "up")

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.cell: Cell | None = None
        self.task: _TaskHandle | None = None
        self.sup: Supervisor | None = None
        self.up = False

    @property
    def name(self) -> str:
        return self.spec.id


class Supervisor:
    def __init__(self, runtime: Runtime, spec: SupervisorSpec, parent: Supervisor | None, path: str,
                 record: _Child | None = None) -> None:
        if spec.dynamic is not None and spec.strategy != "one_for_one":
            raise ValueError(f"supervisor {spec.id}: dynamic children need one_for_one")
        for child in spec.children:
            if isinstance(child, ActorSpec) and (child.init is None or not child.id):
                raise ValueError(f"supervisor {spec.id}: static actor children need an id and init")
        ids = [c.id for c in spec.children]
        if len(set(ids)) != len(ids):
            raise ValueError(f"supervisor {spec.id}: duplicate child ids {ids}")
        self.runtime = runtime
        self.spec = spec
        self.parent = parent
        self.path = f"{path}/{spec.id}"
        self.record = record
        self.children = [_Child(c) for c in spec.children]
        self.dynamic: dict[str, Cell] = {}
        self.restart_times: deque[float] = deque()
        self.terminated = False

    def __repr__(self) -> str:
        return f"<Supervisor {self.path} {self.spec.strategy}>"

    # ---------------------------------------------------------------- lookup

    def child(self, child_id: str) -> Supervisor | Cell | _TaskHandle | None:
        for c in self.children:
            if c.spec.id == child_id:
                return c.sup or c.cell or c.task
        return None

    def find(self, path: str) -> Supervisor | None:
        """A descendant supervisor by relative path ``"a/b"``."""
        node: Supervisor | None = self
        for part in path.strip("/").split("/"):
            if node is None or not part:
                return node
            found = node.child(part)
            node = found if isinstance(found, Supervisor) else None
        return node

    # ---------------------------------------------------------------- dynamic children

    def start_child(self, actor_id: str, state: Any, effects: Sequence[Effect] = ()) -> ActorRef:
        from engine.actors.runtime import ActorRef

        if self.spec.dynamic is None:
            raise TypeError(f"supervisor {self.path} has no dynamic template")
        if self.terminated:
            raise RuntimeError(f"supervisor {self.path} is terminated")
        self.runtime._spawn(self.spec.dynamic, actor_id, state, effects, sup=self, child=None)
        return ActorRef(self.runtime, self.spec.dynamic.behaviour.kind, actor_id)

    def child_removed(self, cell: Cell) -> None:
        """The runtime forgot ``cell`` (it stopped normally)."""
        if cell.child is None:
            if self.dynamic.get(cell.id) is cell:
                del self.dynamic[cell.id]
        else:
            cell.child.up = False

    # ---------------------------------------------------------------- start / stop

    async def start(self) -> None:
        for child in self.children:
            await self._up(child, fresh=True)
        self.runtime._emit("supervisor_started", path=self.path)

    async def _up(self, child: _Child, *, fresh: bool = False) -> None:
        """Start (``fresh`` / after a normal exit) or restart one child."""
        spec = child.spec
        rt = self.runtime
        if isinstance(spec, ActorSpec):
            cell = child.cell
            if cell is None or not cell.alive:
                assert spec.init is not None
                state, effects = spec.init()
                child.cell = rt._spawn(spec, spec.id, state, effects, sup=self, child=child)
                if not fresh:
                    child.cell.restarts += 1
                    rt.restarts += 1
            else:
                rt.restart_cell(cell, resume=spec.resume and not fresh, init=spec.init)
        elif isinstance(spec, TaskSpec):
            handle = child.task = _TaskHandle()
            await rt.nursery.start(self._run_task, child, handle)
            if not fresh:
                rt.restarts += 1
        else:
            if child.sup is None or child.sup.terminated:
                child.sup = Supervisor(rt, spec, parent=self, path=self.path, record=child)
                await child.sup.start()
            else:
                await child.sup._up_all()
        child.up = True
        rt._emit("child_started", path=f"{self.path}/{spec.id}", fresh=fresh)

    async def _up_all(self) -> None:
        self.restart_times.clear()  # a restarted supervisor starts with a clean record
        for child in self.children:
            await self._up(child)
        for cell in list(self.dynamic.values()):
            self.runtime.restart_cell(cell, resume=True, init=None)

    async def _down(self, child: _Child) -> None:
        """Stop one child so that it can be restarted (actors are suspended, not forgotten)."""
        spec = child.spec
        if isinstance(spec, ActorSpec):
            if child.cell is not None and child.cell.alive:
                self.runtime._suspend(child.cell)
        elif isinstance(spec, TaskSpec):
            await self._stop_task(child)
        elif child.sup is not None:
            await child.sup._down_all()
        child.up = False

    async def _down_all(self) -> None:
        for cell in reversed(list(self.dynamic.values())):
            self.runtime._suspend(cell)
        for child in reversed(self.children):
            await self._down(child)

    async def _stop_task(self, child: _Child) -> None:
        handle = child.task
        if handle is None:
            return
        handle.stopping = True
        if handle.scope is not None:
            handle.scope.cancel()
        assert isinstance(child.spec, TaskSpec)
        with trio.move_on_after(child.spec.shutdown_s):
            await handle.done.wait()
        child.task = None
        self.runtime._emit("stopped", kind="task", id=f"{self.path}/{child.spec.id}", reason="stop")

    async def _run_task(self, child: _Child, handle: _TaskHandle,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert isinstance(child.spec, TaskSpec)
        status = _Started(task_status)
        error: BaseException | None = None
        with trio.CancelScope() as scope:
            handle.scope = scope
            try:
                await child.spec.fn(task_status=status)
            except Exception as exc:
                error = exc
        status.started()
        handle.done.set()
        if handle.stopping or self.terminated:
            return
        child.task = None
        child.up = False
        self.runtime._emit("task_exited", path=f"{self.path}/{child.spec.id}",
                           error=None if error is None else repr(error))
        self.runtime._escalate(self, child, abnormal=error is not None)

    async def terminate(self) -> None:
        """Stop every child for good, in reverse start order (dynamic ones, newest first, last
        started, so they go first)."""
        if self.terminated:
            return
        self.terminated = True
        rt = self.runtime
        for cell in reversed(list(self.dynamic.values())):
            rt._remove(cell, "shutdown", leftovers="dead")
        self.dynamic.clear()
        for child in reversed(self.children):
            await self._terminate_child(child)
        rt._emit("supervisor_stopped", path=self.path)

    async def _terminate_child(self, child: _Child, reason: str = "shutdown") -> None:
        if child.cell is not None:
            self.runtime._remove(child.cell, reason, leftovers="dead")
        if child.task is not None:
            await self._stop_task(child)
        if child.sup is not None:
            await child.sup.terminate()
        child.up = False

    # ---------------------------------------------------------------- failures

    async def handle_exit(self, child: _Child | Cell, abnormal: bool) -> None:
        """A child exited (``abnormal``: it failed). Decide per restart type, strategy, intensity."""
        if self.terminated:
            return
        rt = self.runtime
        if not isinstance(child, _Child):  # a dynamic actor
            cell = child
            assert self.spec.dynamic is not None
            restart = self.spec.dynamic.restart
            if restart == "temporary" or (not abnormal and restart == "transient"):
                rt._remove(cell, "failed", leftovers="dead")
                self.child_removed(cell)
                return
            if await self._count_restart():
                rt.restart_cell(cell, resume=True, init=None)
            return
        restart = child.spec.restart
        if restart == "temporary" or (not abnormal and restart == "transient"):
            await self._terminate_child(child, "failed" if abnormal else "exited")
            rt._emit("child_removed", path=f"{self.path}/{child.spec.id}")
            return
        if not await self._count_restart():
            return
        strategy = self.spec.strategy
        if strategy == "one_for_one":
            group = [child]
        elif strategy == "one_for_all":
            group = [c for c in self.children if c.up or c is child]
        else:
            index = self.children.index(child)
            group = [c for c in self.children[index:] if c.up or c is child]
        for c in reversed(group):
            await self._down(c)
        for c in group:
            # an actor that stopped normally (permanent) starts over from init
            await self._up(c, fresh=(c is child and not abnormal and isinstance(c.spec, ActorSpec)))
        rt._emit("restarted_group", path=self.path, strategy=strategy,
                 children=[c.spec.id for c in group], cause=child.spec.id)

    async def _count_restart(self) -> bool:
        """Record a restart; False (and escalate) when that exceeds the intensity."""
        rt = self.runtime
        now = rt._now()
        times = self.restart_times
        times.append(now)
        horizon = now - self.spec.period_s
        while times and times[0] < horizon:
            times.popleft()
        if len(times) <= self.spec.intensity:
            return True
        rt.escalations += 1
        rt._emit("escalated", path=self.path, restarts=len(times))
        await self._down_all()
        if self.parent is None or self.record is None:
            rt._fatal(SupervisorEscalation(self.path, self.spec.intensity, self.spec.period_s))
        else:
            rt._escalate(self.parent, self.record, abnormal=True)
        return False
