"""In-process fan-out of CTI events to watchers (WebSocket clients, Events.Watch streams).

Rules
1. ``EventHub.publish_batch`` is a plain non-blocking function called by the publisher's pump
   after it has assigned seqs: the engine never waits for a watcher.
2. Each subscription has a bounded buffer. When it is full the subscription is marked
   ``overflowed`` and stops receiving: the transport tells the client and drops it (the client
   resumes from its last seq through JetStream). A slow client is dropped, never the engine.
3. Subscriptions are per tenant: an event is offered only to its own tenant's subscriptions,
   so isolation does not depend on every filter being right.
4. Each event is encoded once; every subscriber gets the same bytes/str.
5. Live delivery may run ahead of storage: ``durable`` is what the publisher's acks confirmed,
   and a replay of recent seqs waits for it (``wait_durable``) before reading JetStream.
6. Several nodes: a ``feed`` (``adapters.nats.fanout.NatsFanout``) subscribes on NATS to the
   tenants this hub has watchers for (``tenants``, ``tenants_changed``) and offers the other
   nodes' events through ``publish_remote``, which drops what the hub already has (per tenant,
   a seq at or below ``last_seq``: this node's own events come back from NATS too). Without a
   feed (one node) nothing changes: the publisher's batches are the only source.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

import trio

from api.events import CtiBase, event_name

__all__ = ["EventHub", "Subscription", "EventFilter", "Delivered"]

#: (event, its JSON as str)
Delivered = tuple[CtiBase, str]


class EventFilter:
    """Which events a watcher wants: by type names and ids (all empty = everything)."""

    __slots__ = ("types", "call_id", "agent_id", "queue_id")

    def __init__(self, types: Iterable[str] = (), call_id: str = "", agent_id: str = "",
                 queue_id: str = "") -> None:
        self.types = frozenset(types)
        self.call_id = call_id
        self.agent_id = agent_id
        self.queue_id = queue_id

    def __call__(self, event: CtiBase) -> bool:
        if self.types and event_name(event) not in self.types:
            return False
        if self.call_id and event.call_id != self.call_id:
            return False
        if self.agent_id and event.agent_id != self.agent_id:
            return False
        if self.queue_id and event.queue_id != self.queue_id:
            return False
        return True


class Subscription:
    def __init__(self, hub: EventHub, tenant: str, accept: Callable[[CtiBase], bool], capacity: int) -> None:
        self.hub = hub
        self.tenant = tenant
        self.accept = accept
        self.capacity = capacity
        self.buffer: deque[Delivered] = deque()
        self.overflowed = False
        self.overflow_event = trio.Event()
        self.delivered = 0
        self._lot = trio.lowlevel.ParkingLot()
        self.closed = False

    def offer(self, item: Delivered) -> None:
        if self.overflowed or self.closed or not self.accept(item[0]):
            return
        if len(self.buffer) >= self.capacity:
            self.overflowed = True
            self.overflow_event.set()
            self._lot.unpark_all()
            return
        self.buffer.append(item)
        if len(self.buffer) == 1:
            self._lot.unpark_all()

    async def next_batch(self, max_items: int = 256) -> list[Delivered]:
        """Wait for events; returns [] once overflowed or closed (check ``overflowed``)."""
        while not self.buffer:
            if self.overflowed or self.closed:
                return []
            await self._lot.park()
        n = min(max_items, len(self.buffer))
        batch = [self.buffer.popleft() for _ in range(n)]
        self.delivered += n
        return batch

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.hub._remove(self)
            self._lot.unpark_all()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    def __init__(self, default_capacity: int = 10_000) -> None:
        self.default_capacity = default_capacity
        self._by_tenant: dict[str, list[Subscription]] = {}
        self.published = 0
        self.last_seq: dict[str, int] = {}
        #: per tenant, the highest seq known to be stored in JetStream (acknowledged)
        self.durable: dict[str, int] = {}
        self._durable_lot = trio.lowlevel.ParkingLot()
        #: the multi-node feed (``NatsFanout``) or None; woken when the set of tenants changes
        self.feed: object | None = None
        self._tenants_lot = trio.lowlevel.ParkingLot()
        #: events offered by the feed that the hub already had (own events echoed, re-deliveries)
        self.remote_duplicates = 0
        self.remote_published = 0

    def mark_durable(self, items: Iterable[Delivered]) -> None:
        """The publisher's ack: these events are in JetStream (plain, non-blocking)."""
        durable = self.durable
        for event, _ in items:
            if event.seq > durable.get(event.tenant, 0):
                durable[event.tenant] = event.seq
        self._durable_lot.unpark_all()

    async def wait_durable(self, tenant: str, seq: int, timeout_s: float = 5.0) -> bool:
        """Wait (bounded) until the tenant's events up to ``seq`` are stored; False on timeout."""
        with trio.move_on_after(timeout_s):
            while self.durable.get(tenant, 0) < seq:
                await self._durable_lot.park()
            return True
        return False

    def subscribe(self, tenant: str, accept: Callable[[CtiBase], bool] | None = None,
                  capacity: int | None = None) -> Subscription:
        sub = Subscription(self, tenant, accept or (lambda e: True), capacity or self.default_capacity)
        subs = self._by_tenant.get(tenant)
        if subs is None:
            subs = self._by_tenant[tenant] = []
            self._tenants_lot.unpark_all()
        subs.append(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        subs = self._by_tenant.get(sub.tenant)
        if subs and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._by_tenant[sub.tenant]
                self._tenants_lot.unpark_all()

    def tenants(self) -> frozenset[str]:
        """The tenants that have at least one subscription (what a feed subscribes to)."""
        return frozenset(self._by_tenant)

    async def tenants_changed(self) -> None:
        """Wait until a tenant gains its first or loses its last subscription."""
        await self._tenants_lot.park()

    async def feed_ready(self, tenant: str, timeout_s: float = 2.0) -> None:
        """With a feed, wait (bounded) until it receives the tenant's events from other nodes."""
        ready = getattr(self.feed, "ready", None)
        if ready is not None:
            with trio.move_on_after(timeout_s):
                await ready(tenant)

    def publish_remote(self, items: list[Delivered]) -> int:
        """Offer events another node published (in their per-tenant seq order); events at or
        below the tenant's ``last_seq`` are duplicates and dropped. They are in JetStream already
        (they come from the stream's subjects), so they also count as durable. Returns how many
        were new."""
        fresh: list[Delivered] = []
        last_seq = self.last_seq
        for item in items:
            event = item[0]
            if event.seq <= last_seq.get(event.tenant, 0):
                self.remote_duplicates += 1
                continue
            last_seq[event.tenant] = event.seq
            fresh.append(item)
        if fresh:
            self.remote_published += len(fresh)
            self.publish_batch(fresh)
            self.mark_durable(fresh)
        return len(fresh)

    def wants(self, tenant: str) -> bool:
        return tenant in self._by_tenant

    def publish_batch(self, items: Iterable[Delivered]) -> None:
        by_tenant = self._by_tenant
        for item in items:
            tenant = item[0].tenant
            self.last_seq[tenant] = item[0].seq
            self.published += 1
            subs = by_tenant.get(tenant)
            if subs:
                for sub in tuple(subs):
                    sub.offer(item)

    def statistics(self) -> dict[str, int]:
        subs = [s for group in self._by_tenant.values() for s in group]
        return {"subscriptions": len(subs), "published": self.published,
                "buffered": sum(len(s.buffer) for s in subs),
                "overflowed": sum(1 for s in subs if s.overflowed)}
