"""One timer heap per shard (not a task per timer).

Rules
1. A machine's ``StartTimer(key, deadline)`` arms (or re-arms: same key replaces) a timer owned by
   the actor; ``CancelTimer(key)`` disarms it; an actor that stops or restarts from its initial
   state loses all of its timers. A timer that fires is delivered as ``TimerFired(key, at=deadline)``.
2. Cancellation is lazy: the heap keeps the entry, the owner's ``timers`` map forgets it, and the
   entry is skipped when it surfaces. When stale entries outnumber live ones the heap is rebuilt,
   so cancel-heavy workloads (every answered call cancels its ring timer) do not grow it.
3. Deadlines are absolute times of the shard's trio clock; nothing here reads a clock.

Theory of operation
Each actor cell has a ``timers`` slot, ``None`` when it has no timer (idle actors pay nothing),
else ``{key: seq}``. A heap entry is ``(deadline, seq, cell, key)``; ``seq`` is unique, so ties on
the deadline fire in arming order and a cell is never compared. An entry is live iff
``cell.timers.get(key) == seq``. The shard's timer task sleeps until the earliest deadline; arming
an earlier one wakes it (``start`` returns True).
"""

from __future__ import annotations

import heapq
from typing import Any, Protocol


class TimerOwner(Protocol):
    timers: dict[str, int] | None


class TimerHeap:
    __slots__ = ("_heap", "_seq", "stale", "fired", "compactions")

    #: rebuild when there are more stale entries than this and more than live ones
    COMPACT_MIN = 1024

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any, str]] = []
        self._seq = 0
        self.stale = 0
        self.fired = 0
        self.compactions = 0

    def __len__(self) -> int:
        """Live (armed) timers."""
        return len(self._heap) - self.stale

    def start(self, owner: TimerOwner, key: str, deadline: float) -> bool:
        """Arm ``key`` for ``owner``; True when it is now the earliest deadline (wake the sleeper)."""
        self._seq += 1
        seq = self._seq
        timers = owner.timers
        if timers is None:
            owner.timers = {key: seq}
        else:
            if key in timers:
                self.stale += 1  # the replaced entry stays in the heap until it surfaces
            timers[key] = seq
        heap = self._heap
        heapq.heappush(heap, (deadline, seq, owner, key))
        if self.stale > self.COMPACT_MIN and self.stale * 2 > len(heap):
            self._compact()
        return heap[0][1] == seq

    def cancel(self, owner: TimerOwner, key: str) -> bool:
        timers = owner.timers
        if timers is None or timers.pop(key, None) is None:
            return False
        self.stale += 1
        if not timers:
            owner.timers = None
        return True

    def cancel_all(self, owner: TimerOwner) -> int:
        timers = owner.timers
        if not timers:
            owner.timers = None
            return 0
        n = len(timers)
        self.stale += n
        owner.timers = None
        return n

    def armed(self) -> list[tuple[Any, str, float]]:
        """``(owner, key, deadline)`` of every live timer, in no particular order."""
        out = []
        for deadline, seq, owner, key in self._heap:
            timers = owner.timers
            if timers is not None and timers.get(key) == seq:
                out.append((owner, key, deadline))
        return out

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, seq, owner, key = heap[0]
            timers = owner.timers
            if timers is not None and timers.get(key) == seq:
                return deadline
            heapq.heappop(heap)
            self.stale -= 1
        return None

    def pop_due(self, now: float) -> list[tuple[Any, str, float]]:
        """Disarm and return ``(owner, key, deadline)`` of every live timer due at ``now``."""
        heap = self._heap
        due: list[tuple[Any, str, float]] = []
        while heap and heap[0][0] <= now:
            deadline, seq, owner, key = heapq.heappop(heap)
            timers = owner.timers
            if timers is not None and timers.get(key) == seq:
                del timers[key]
                if not timers:
                    owner.timers = None
                due.append((owner, key, deadline))
            else:
                self.stale -= 1
        self.fired += len(due)
        return due

    def _compact(self) -> None:
        live = []
        for entry in self._heap:
            timers = entry[2].timers
            if timers is not None and timers.get(entry[3]) == entry[1]:
                live.append(entry)
        heapq.heapify(live)
        self._heap = live
        self.stale = 0
        self.compactions += 1
