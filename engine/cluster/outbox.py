"""Outbox: cross-shard messages, batched per destination shard.

Rules
1. ``put`` is a plain non-blocking function (the shard's worker calls it while performing a
   ``Send`` effect). It never sends one message on its own: it appends to the destination's buffer.
2. A buffer is flushed as one batch when it reaches ``max_batch`` items (at once, from ``put``) or
   ``max_delay_s`` after its first item (from the pump task), whichever comes first. So under load
   batches are large and the per-batch cost (one Ray call, ~0.3 ms of CPU) is spread over hundreds
   of messages; under light load a message waits at most ``max_delay_s``.
3. Order: items for one destination leave in ``put`` order, in batches numbered per destination.
   The transport need not keep them in order (Ray does not always: measured in bench/cluster.py);
   the receiver restores the link's order from the numbers (links.LinkInbox). This is what makes
   hand-overs safe (see wire.Adopt).
4. ``send(dest, payload)`` is the transport and must not block (Ray's ``.remote()`` returns at once).
5. Batches are numbered per destination (1, 2, 3, ...) under the outbox's ``incarnation`` (its birth
   in ns), so a receiver can also drop a batch Ray delivered twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from engine.cluster.wire import encode_batch

__all__ = ["Outbox"]


class Outbox:
    def __init__(self, source: str, send: Callable[[str, bytes], None], *, max_batch: int = 1024,
                 max_delay_s: float = 0.001) -> None:
        self.source = source
        self._send = send
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._buffers: dict[str, list[Any]] = {}
        self._lot = trio.lowlevel.ParkingLot()
        self._seq: dict[str, int] = {}
        self.incarnation = time.time_ns()
        self.batches = 0
        self.messages = 0
        self.send_errors = 0
        self.last_error = ""

    def put(self, dest: str, item: Any) -> None:
        buf = self._buffers.get(dest)
        if buf is None:
            buf = self._buffers[dest] = []
        buf.append(item)
        if len(buf) >= self.max_batch:
            self._flush_one(dest)
        elif len(buf) == 1:
            self._lot.unpark()

    def sent(self) -> dict[str, int]:
        """The number of the last batch sent to each destination."""
        return dict(self._seq)

    def pending(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    def flush_nowait(self) -> None:
        for dest in [d for d, b in self._buffers.items() if b]:
            self._flush_one(dest)

    def _flush_one(self, dest: str) -> None:
        items = self._buffers.pop(dest, None)
        if not items:
            return
        seq = self._seq[dest] = self._seq.get(dest, 0) + 1
        payload = encode_batch(self.source, items, seq, self.incarnation)
        self.batches += 1
        self.messages += len(items)
        try:
            self._send(dest, payload)
        except Exception as exc:  # a transport failure must not stall the shard; count it
            self.send_errors += 1
            self.last_error = repr(exc)

    async def pump(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run forever: flush every buffer ``max_delay_s`` after it got its first item."""
        task_status.started()
        while True:
            if not any(self._buffers.values()):
                await self._lot.park()
                continue
            await trio.sleep(self.max_delay_s)
            self.flush_nowait()

    def statistics(self) -> dict[str, Any]:
        return {"batches": self.batches, "messages": self.messages, "pending": self.pending(),
                "send_errors": self.send_errors, "last_error": self.last_error,
                "mean_batch": round(self.messages / self.batches, 1) if self.batches else 0.0}
