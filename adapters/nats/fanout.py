"""Multi-node fan-out: feed the local ``EventHub`` with the CTI events other nodes publish.

Rules
1. One engine node publishes a tenant's events (its ``CtiPublisher`` owns the tenant's seq); a
   watcher (WebSocket, Connect streaming, NATS Events.Watch) may be connected to any node. With
   ``open_stack(..., fanout="nats")`` each node subscribes (core NATS) to ``cti.<tenant>.>`` for
   exactly the tenants its hub has watchers for, and hands what arrives to
   ``EventHub.publish_remote``.
2. No duplicates: the hub drops an event whose seq is at or below the tenant's last seq. This
   node's own events come back from NATS too; the local fast path (the publisher offers a batch
   to the hub as soon as it is encoded) has already delivered them, so the echo is dropped. One
   node alone keeps the fast path and pays only the echo.
3. Order: a tenant's events come from one publisher on one connection, so NATS delivers them in
   seq order; the hub delivers them in that order.
4. trio <-> asyncio: nats-py calls our callback on its loop (inside trio-asyncio, same thread); the
   callback only appends to a deque and wakes the drain task, which hands the whole backlog to the
   hub in one go (no crossing per message). Subscribing and unsubscribing cross once per change.
5. A tenant's subscription is ready (``ready``) once the server has it (a flush), so a watcher
   that starts after ``ready`` misses nothing another node publishes from then on; Api.watch
   waits for it (bounded).
6. Limit: two nodes publishing for one tenant assign clashing seqs (each counts on its own);
   JetStream deduplicates the second ``<tenant>:<seq>`` away and the publisher counts
   ``seq_clashes``. Pin each tenant to one publishing node.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgspec
import trio

from adapters.nats.bridge import NatsBridge
from adapters.nats.subjects import SEQ_HEADER, tenant_events
from api.events import decode_event
from api.hub import Delivered, EventHub

__all__ = ["NatsFanout"]


class NatsFanout:
    """Run ``run`` as a task (``nursery.start``); set as ``hub.feed`` while it runs."""

    def __init__(self, bridge: NatsBridge, hub: EventHub, *, linger_s: float = 5.0) -> None:
        self.bridge = bridge
        self.hub = hub
        #: keep a tenant's subscription this long after its last watcher left (reconnects)
        self.linger_s = linger_s
        #: tenant -> nats-py subscription
        self.subscribed: dict[str, Any] = {}
        self._ready: dict[str, trio.Event] = {}
        self._inbox: deque[tuple[str, bytes, int]] = deque()
        self._wake = trio.lowlevel.ParkingLot()
        self._token: trio.lowlevel.TrioToken | None = None
        self.received = 0
        self.skipped = 0
        self.malformed = 0

    async def ready(self, tenant: str) -> None:
        event = self._ready.get(tenant)
        if event is None:
            event = self._ready[tenant] = trio.Event()
        await event.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self.hub.feed = self
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drain)
                task_status.started()
                await self._follow()
        finally:
            self.hub.feed = None
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self._unsubscribe(list(self.subscribed))

    # ---------------------------------------------------------------- subscriptions

    async def _follow(self) -> None:
        """Keep one subscription per tenant the hub has watchers for."""
        gone_at: dict[str, float] = {}
        while True:
            wanted = self.hub.tenants()
            now = trio.current_time()
            new = sorted(t for t in wanted if t not in self.subscribed)
            for tenant in wanted:
                gone_at.pop(tenant, None)
            for tenant in self.subscribed:
                if tenant not in wanted:
                    gone_at.setdefault(tenant, now)
            stale = [t for t, at in gone_at.items() if now - at >= self.linger_s]
            if new:
                await self._subscribe(new)
            if stale:
                for tenant in stale:
                    del gone_at[tenant]
                await self._unsubscribe(stale)
            if self.hub.tenants() != wanted:
                continue  # changed while we were subscribing (no one was parked to be woken)
            with trio.move_on_after(self.linger_s if gone_at else float("inf")):
                await self.hub.tenants_changed()

    async def _subscribe(self, tenants: list[str]) -> None:
        nc = self.bridge.nc

        async def subscribe() -> dict[str, Any]:
            subs = {tenant: await nc.subscribe(tenant_events(tenant), cb=self._callback(tenant),
                                               pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 28)
                    for tenant in tenants}
            await nc.flush()  # the server has the subscriptions: nothing published later is missed
            return subs

        self.subscribed.update(await self.bridge.aio(subscribe))
        for tenant in tenants:
            event = self._ready.get(tenant)
            if event is None:
                event = self._ready[tenant] = trio.Event()
            event.set()

    async def _unsubscribe(self, tenants: list[str]) -> None:
        subs = [self.subscribed.pop(t) for t in tenants if t in self.subscribed]
        for tenant in tenants:
            self._ready.pop(tenant, None)
        if not subs:
            return

        async def unsubscribe() -> None:
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except Exception:  # noqa: BLE001 - a closed connection has no subscriptions left
                    pass

        try:
            await self.bridge.aio(unsubscribe)
        except Exception:  # noqa: BLE001
            pass

    def _callback(self, tenant: str) -> Any:
        inbox = self._inbox

        async def on_message(msg: Any) -> None:
            # on the asyncio side: queue it, wake the trio drain task (plain, thread-safe call)
            try:
                seq = int((msg.headers or {}).get(SEQ_HEADER, 0))
            except ValueError:
                seq = 0
            inbox.append((tenant, msg.data, seq))
            if len(inbox) == 1 and self._token is not None:
                self._token.run_sync_soon(self._wake.unpark_all)

        return on_message

    # ---------------------------------------------------------------- delivery

    async def _drain(self) -> None:
        inbox = self._inbox
        hub = self.hub
        while True:
            if not inbox:
                await self._wake.park()
                continue
            items: list[Delivered] = []
            last_seq = hub.last_seq
            while inbox:
                tenant, data, seq = inbox.popleft()
                self.received += 1
                if seq and seq <= last_seq.get(tenant, 0):
                    self.skipped += 1  # our own event (already delivered locally) or a repeat
                    continue
                try:
                    event = decode_event(data)
                except (msgspec.ValidationError, msgspec.DecodeError):
                    self.malformed += 1
                    continue
                if event.tenant != tenant:  # defence in depth: the subject is per tenant
                    self.malformed += 1
                    continue
                items.append((event, data.decode()))
            if items:
                hub.publish_remote(items)
            await trio.lowlevel.checkpoint()

    def statistics(self) -> dict[str, int]:
        return {"tenants": len(self.subscribed), "received": self.received, "skipped": self.skipped,
                "malformed": self.malformed, "delivered": self.hub.remote_published}
