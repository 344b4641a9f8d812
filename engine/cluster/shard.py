"""A shard: the actor runtime of ``engine/actors`` plus "this id lives on another shard".

Rules
1. The runtime is not edited and no private part of it is touched: the shard uses the runtime's
   public hooks (``engine/actors/runtime.py`` Rules 9-10). ``Node(runtime_factory=...)`` builds a
   ``ShardRuntime`` whose ``remote`` hook is asked whenever a message is for an actor that is not
   registered here: when the directory names another shard, the message goes to the ``Outbox``
   for that shard. Only when this shard owns the id do the runtime's usual rules for absent
   actors apply (tombstone, ``NOT_FOUND``, dead letter).
2. Everything that arrives from other shards or from an ingress goes through ``accept``: creation
   rules of ``Node`` (a ``ChannelCreated`` for leg "a" creates the call), never refused for
   capacity (like ``Send``), forwarded when the directory says another shard owns it.
3. Hand-over: ``export`` takes an actor out (state, timers, queued mail) in one synchronous step
   (``Runtime.take``), so the actor is never alive in two places; ``adopt`` puts it in
   (``Node.start_actor``, ``Runtime.arm_timer``), timers re-armed at their absolute deadlines (the
   cluster clock, see clock.py). Snapshots are the same images.
4. Replies find the asker: ``ask`` gives the command a request id that names this shard
   (``<shard>|<id>``); the shard that performs the ``Reply`` sends it back over the link when the
   asker is another shard (the runtime's ``remote_reply`` hook puts a ``ReplyTo`` on the link),
   else answers locally as the runtime always did.
5. Tenants: agents and queues are registered per tenant, as on a ``Node`` (``TENANT_SCOPED``:
   key ``"<tenant>/<id>"``, the plain id for the ``default`` tenant). Everything that addresses an
   actor here (envelopes, the directory, images, the ``remote`` hook) uses that key, so two tenants'
   agent ``a1`` are two actors, possibly on two shards; a ``Send`` is addressed in the sender's
   tenant by the runtime (its Rule 8), so a call reaches its own tenant's queue and agents only.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgspec
import trio

from engine.actors.node import TENANT_SCOPED, Node, route
from engine.actors.ports import Ports
from engine.actors.runtime import Runtime
from engine.cluster.outbox import Outbox
from engine.cluster.placement import Directory
from engine.cluster.wire import (
    MAX_HOPS,
    Adopt,
    Envelope,
    Image,
    ReplyTo,
    origin_of,
    state_of,
    with_origin,
)
from engine.messages import Reply

__all__ = ["ShardNode", "ShardRuntime"]


class ShardRuntime(Runtime):
    """A ``Runtime`` that knows the other shards through its public hooks only (Rule 1)."""

    def __init__(self, *, directory: Directory, outbox: Outbox, **options: Any) -> None:
        super().__init__(remote=self._remote, remote_reply=self._remote_reply, **options)
        self.directory = directory
        self.outbox = outbox
        self.forwarded = 0
        self.bounced = 0
        self.replies_forwarded = 0
        #: during a hand-over: messages for ids this shard now owns but has not received yet
        self.parking: list[tuple[str, str, Any, int]] | None = None

    def _remote(self, kind: str, actor_id: str, message: Any) -> bool:
        """The ``remote`` hook: a message for an actor that is not registered here."""
        owner = self.directory.owner(kind, actor_id)
        if owner != self.name:
            self.forwarded += 1
            self.outbox.put(owner, Envelope(kind, actor_id, message))
            return True
        if self.parking is not None and not self.recently_stopped(kind, actor_id):
            self.parking.append((kind, actor_id, message, 0))
            return True
        return False

    def _remote_reply(self, reply: Reply) -> bool:
        """The ``remote_reply`` hook: a reply nobody here asked for goes back to the asking shard."""
        origin = origin_of(reply.request_id)
        if origin and origin != self.name and origin in self.directory.shards:
            self.replies_forwarded += 1
            self.outbox.put(origin, ReplyTo(reply))
            return True
        return False

    # ---------------------------------------------------------------- images

    def timer_deadlines(self) -> dict[tuple[str, str], list[tuple[str, float]]]:
        """Armed timers of every actor, by ``(kind, id)`` (one pass over the heap)."""
        return self.timers_of()

    def image(self, kind: str, actor_id: str,
              deadlines: dict[tuple[str, str], list[tuple[str, float]]] | None = None) -> Image:
        if deadlines is None:
            deadlines = self.timer_deadlines()
        return Image(kind=kind, actor_id=actor_id, state=self.state_of(kind, actor_id),
                     timers=tuple(sorted(deadlines.get((kind, actor_id), ()))), taken_at=trio.current_time())

    def export(self, kind: str, actor_id: str) -> Adopt | None:
        """Take an actor out of this shard (state, timers, queued mail). No await inside."""
        taken = self.take(kind, actor_id)
        if taken is None:
            return None
        image = Image(kind=kind, actor_id=actor_id, state=taken.state, timers=taken.timers,
                      taken_at=trio.current_time())
        return Adopt(image, taken.mail)


class ShardNode(Node):
    """A ``Node`` whose runtime knows the other shards."""

    runtime: ShardRuntime

    def __init__(self, *, name: str, directory: Directory, outbox: Outbox, ports: Ports | None = None,
                 runtime_options: dict[str, Any] | None = None, **node_options: Any) -> None:
        def factory(**options: Any) -> ShardRuntime:
            return ShardRuntime(directory=directory, outbox=outbox, **options)

        # agents and queues keyed per tenant (Rule 5); the directory places them by that key
        super().__init__(name=name, ports=ports, runtime_factory=factory, tenant_scoped=TENANT_SCOPED,
                         **(runtime_options or {}), **node_options)
        self.outbox = outbox
        self.adopted = 0
        #: every Adopt applied, also one merged into an actor that was here already
        self.adopts_received = 0
        self.accepted = 0
        self.hop_dropped = 0
        self._ask_seq = 0

    @property
    def directory(self) -> Directory:
        return self.runtime.directory

    def set_directory(self, directory: Directory) -> bool:
        if directory.epoch < self.runtime.directory.epoch:
            return False
        self.runtime.directory = directory
        return True

    def owns(self, kind: str, actor_id: str) -> bool:
        return self.runtime.exists(kind, actor_id) or self.directory.owner(kind, actor_id) == self.name

    # ---------------------------------------------------------------- intake

    def accept(self, kind: str, actor_id: str, message: Any, hops: int = 0) -> None:
        """A message from another shard or an ingress (Rule 2)."""
        rt = self.runtime
        self.accepted += 1
        if not rt.exists(kind, actor_id):
            owner = self.directory.owner(kind, actor_id)
            if owner != self.name:
                if hops >= MAX_HOPS:
                    self.hop_dropped += 1
                    rt.dead_letter(kind, actor_id, message, f"too many hops (owner {owner})")
                    return
                rt.bounced += 1
                self.outbox.put(owner, Envelope(kind, actor_id, message, hops + 1))
                return
            if rt.parking is not None and not rt.recently_stopped(kind, actor_id):
                rt.parking.append((kind, actor_id, message, hops))
                return
        self.deliver_keyed(kind, actor_id, message)

    def begin_handoff(self, directory: Directory) -> dict[str, list[Adopt]]:
        """Install ``directory``, park messages for absent ids it gives us, and take out every
        actor it gives to another shard. No await inside: one consistent cut."""
        rt = self.runtime
        rt.directory = directory
        if rt.parking is None:
            rt.parking = []
        out: dict[str, list[Adopt]] = {}
        for kind in ("call", "agent", "queue"):
            for actor_id in rt.ids(kind):
                owner = directory.owner(kind, actor_id)
                if owner != self.name:
                    adopt = rt.export(kind, actor_id)
                    if adopt is not None:
                        out.setdefault(owner, []).append(adopt)
        for owner, adopts in out.items():
            for adopt in adopts:
                self.outbox.put(owner, adopt)
        self.outbox.flush_nowait()
        return out

    def end_handoff(self) -> int:
        """Deliver what was parked (the adopted actors are here now)."""
        rt = self.runtime
        parked, rt.parking = rt.parking or [], None
        for kind, actor_id, message, hops in parked:
            self.accept(kind, actor_id, message, hops)
        return len(parked)

    def apply(self, items: list[Any]) -> int:
        """Apply the items of one batch from another shard or an ingress, in order."""
        rt = self.runtime
        for item in items:
            tp = type(item)
            if tp is Envelope:
                self.accept(item.kind, item.actor_id, item.message, item.hops)
            elif tp is ReplyTo:
                rt.reply_here(item.reply)
            else:
                assert tp is Adopt, tp
                self.adopts_received += 1
                self.adopt(item.image, item.mail)
        return len(items)

    async def deliver(self, message: Any, tenant: str | None = None) -> None:
        """Route a message to its actor (``tenant``'s agent or queue, Rule 5) here or on its
        owner's shard (used by ``ask``)."""
        self.accept_routed(message, tenant)
        await trio.lowlevel.checkpoint()

    async def ask(self, command: Any, timeout: float = 5.0, tenant: str | None = None) -> Reply:
        """Ask a command of an actor on any shard; the reply comes back here (Rule 4). The caller's
        request id is kept in the returned ``Reply``."""
        original = command.request_id
        self._ask_seq += 1
        rid = with_origin(self.name, original or f"ask-{self._ask_seq}")
        kind, actor_id = route(command)

        async def send(message: Any) -> None:
            await self.deliver(message, tenant)

        reply = await self.runtime.ask(kind, self.runtime.key(kind, tenant, actor_id),
                                       msgspec.structs.replace(command, request_id=rid), timeout=timeout, send=send)
        return msgspec.structs.replace(reply, request_id=original or rid)

    def accept_routed(self, message: Any, tenant: str | None = None) -> None:
        kind, actor_id = route(message)
        self.accept(kind, self.runtime.key(kind, tenant, actor_id), message)

    def adopt(self, image: Image, mail: tuple[Any, ...] = ()) -> None:
        """Put an actor in (hand-over or snapshot); replaces a live one only if the image is newer
        than nothing, i.e. never: an existing actor wins (it has seen more)."""
        rt = self.runtime
        kind, actor_id = image.kind, image.actor_id
        if not rt.exists(kind, actor_id):
            self.start_actor(kind, actor_id, state_of(image))
            for key, deadline in image.timers:
                rt.arm_timer(kind, actor_id, key, deadline)
            self.adopted += 1
        for message in mail:
            rt.deliver(kind, actor_id, message)

    def export(self, kind: str, actor_id: str) -> Adopt | None:
        return self.runtime.export(kind, actor_id)

    def images(self, kinds: tuple[str, ...] = ("agent", "queue")) -> list[Image]:
        rt = self.runtime
        deadlines = rt.timer_deadlines()
        return [rt.image(kind, actor_id, deadlines) for kind in kinds for actor_id in rt.ids(kind)]


def drain(buffer: deque[Any], limit: int = 100_000) -> list[Any]:
    n = min(limit, len(buffer))
    return [buffer.popleft() for _ in range(n)]
