"""The CTI publisher: a ``CtiPort`` whose pump sequences events and publishes them in batches.

Rules
1. ``publish(event)`` is plain and non-blocking (docs/actors.md rule 1): it appends to a bounded
   buffer; above ``high_water`` the oldest event is dropped and ``overflowed`` counts it (a slow
   bus must not stall calls; the count is the alarm).
2. One pump task (``run``) moves batches: it assigns each event its per-tenant ``seq``
   (monotonic, continuing from what the stream already holds for that tenant after a restart),
   converts it to the typed wire event, publishes the batch to JetStream in ONE bridge crossing
   with ``Nats-Msg-Id = <tenant>:<seq>`` (a re-sent batch is deduplicated by the server) and
   ``traceparent``, then offers it to the local ``EventHub`` (WebSocket / Watch).
3. Without a bridge (no NATS) the pump still sequences and fans out: the API works in memory.
4. seq is assigned in the pump rather than in ``publish`` so that the first event of a tenant can
   wait (once) for the stream's last seq of that tenant; ordering is the buffer's order either way.
   One publisher owns a tenant's sequence: with several engine nodes, pin tenants to publishers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio

from adapters.nats.bridge import NatsBridge
from adapters.nats.subjects import (
    MSG_ID_HEADER,
    SEQ_HEADER,
    TRACE_HEADER,
    event_subject,
    traceparent,
)
from api.events import CtiBase, encode_event, event_id, event_kind, event_name, to_wire
from api.hub import EventHub
from engine.messages import CtiEvent

__all__ = ["CtiPublisher"]


class CtiPublisher:
    """``CtiPort`` for the engine's runtime; run ``run`` as a supervised task."""

    def __init__(self, bridge: NatsBridge | None = None, hub: EventHub | None = None, *,
                 batch: int = 512, high_water: int = 200_000,
                 listeners: tuple[Callable[[list[tuple[CtiBase, str]]], None], ...] = ()) -> None:
        self.bridge = bridge
        self.hub = hub
        self.batch = batch
        self.high_water = high_water
        self.listeners = listeners
        self._buffer: deque[CtiEvent] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._seq: dict[str, int] = {}
        self.overflowed = 0
        self.pumped = 0
        self.errors = 0
        self._idle = trio.Event()
        self._idle.set()

    # ---------------------------------------------------------------- CtiPort

    def publish(self, event: CtiEvent) -> None:
        buffer = self._buffer
        if len(buffer) >= self.high_water:
            buffer.popleft()
            self.overflowed += 1
        buffer.append(event)
        if len(buffer) == 1:
            if self._idle.is_set():
                self._idle = trio.Event()
            self._lot.unpark()

    def __len__(self) -> int:
        return len(self._buffer)

    def last_seq(self, tenant: str) -> int:
        return self._seq.get(tenant, 0)

    async def wait_idle(self) -> None:
        """Wait until everything published so far has been pumped (tests, shutdown)."""
        await self._idle.wait()

    # ---------------------------------------------------------------- the pump

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        buffer = self._buffer
        while True:
            if not buffer:
                self._idle.set()
                await self._lot.park()
                continue
            chunk = [buffer.popleft() for _ in range(min(self.batch, len(buffer)))]
            await self._pump(chunk)
            if not buffer:
                self._idle.set()

    async def _pump(self, chunk: list[CtiEvent]) -> None:
        seqs = self._seq
        unknown = {e.tenant for e in chunk if e.tenant not in seqs}
        if unknown:
            if self.bridge is not None:
                try:
                    seqs.update(await self.bridge.last_seqs(sorted(unknown)))
                except Exception:
                    self.errors += 1
            for tenant in unknown:
                seqs.setdefault(tenant, 0)
        delivered: list[tuple[CtiBase, str]] = []
        outgoing: list[tuple[str, bytes, dict[str, str]]] = []
        bridge = self.bridge
        for event in chunk:
            tenant = event.tenant
            seq = seqs[tenant] + 1
            seqs[tenant] = seq
            wire = to_wire(event, seq)
            payload = encode_event(wire)
            delivered.append((wire, payload.decode()))
            if bridge is not None:
                headers = {MSG_ID_HEADER: f"{tenant}:{seq}", SEQ_HEADER: str(seq),
                           TRACE_HEADER: traceparent(tenant, event.call_id, seq)}
                subject = event_subject(tenant, event_kind(wire), event_id(wire), event_name(wire))
                outgoing.append((subject, payload, headers))
        if bridge is not None:
            for attempt in range(3):
                try:
                    await bridge.publish_batch(outgoing)
                    break
                except Exception:
                    # re-sending is safe: Nats-Msg-Id dedupes what already reached the stream
                    self.errors += 1
                    await trio.sleep(0.05 * (attempt + 1))
        if self.hub is not None:
            self.hub.publish_batch(delivered)
        for listener in self.listeners:
            listener(delivered)
        self.pumped += len(chunk)
