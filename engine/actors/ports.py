"""Ports: where the effects of the state machines go.

Rules
1. A port method is a plain, non-blocking function (trio's rule: what does not block is not
   ``async``). Effects are performed by the shard's worker right after the actor's state is written;
   a port that blocked would stall every actor of the shard.
2. Real adapters (ESL, NATS, PostgreSQL) plug in through the same Protocols. They buffer and pump in
   batches from their own task (STYLE.md §5: one pump per adapter, never one bridge crossing per
   message); ``BufferedPort`` is that buffer plus the pump loop.
3. The in-memory implementations are list-backed for tests and the demo; ``keep=False`` only counts
   (benchmarks with 100k actors must not measure the test's own lists).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import trio

from engine.messages import Cdr, CtiEvent, MediaCommand, Reply

T = TypeVar("T")


class MediaPort(Protocol):
    def send(self, command: MediaCommand) -> None: ...


class CtiPort(Protocol):
    def publish(self, event: CtiEvent) -> None: ...


class CdrStore(Protocol):
    def write(self, cdr: Cdr) -> None: ...


class ReplyPort(Protocol):
    def reply(self, reply: Reply) -> None: ...


class _ListPort(Generic[T]):
    __slots__ = ("items", "count", "keep", "listeners")

    def __init__(self, keep: bool = True) -> None:
        self.items: list[T] = []
        self.count = 0
        self.keep = keep
        #: called synchronously with every item (test harnesses react to commands with these)
        self.listeners: list[Callable[[T], None]] = []

    def _put(self, item: T) -> None:
        self.count += 1
        if self.keep:
            self.items.append(item)
        for listener in self.listeners:
            listener(item)

    def __len__(self) -> int:
        return self.count


class InMemoryMedia(_ListPort[MediaCommand]):
    """Records media commands (``items``) in the order the actors sent them."""

    def send(self, command: MediaCommand) -> None:
        self._put(command)


class InMemoryCti(_ListPort[CtiEvent]):
    """Records CTI events; ``named(name)`` filters them."""

    def publish(self, event: CtiEvent) -> None:
        self._put(event)

    def named(self, name: str) -> list[CtiEvent]:
        return [e for e in self.items if e.name == name]


class InMemoryCdrs(_ListPort[Cdr]):
    """Records CDRs; ``by_call()`` counts them per call (the "exactly one CDR" check)."""

    def write(self, cdr: Cdr) -> None:
        self._put(cdr)

    def by_call(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for cdr in self.items:
            counts[cdr.call_id] = counts.get(cdr.call_id, 0) + 1
        return counts


class InMemoryReplies(_ListPort[Reply]):
    """Records replies nobody ``ask``-ed for (API requests answered through the bus)."""

    def reply(self, reply: Reply) -> None:
        self._put(reply)

    def for_request(self, request_id: str) -> list[Reply]:
        return [r for r in self.items if r.request_id == request_id]


class Ports:
    """The four ports one runtime performs effects on."""

    __slots__ = ("media", "cti", "cdr", "replies")

    def __init__(self, media: MediaPort, cti: CtiPort, cdr: CdrStore, replies: ReplyPort) -> None:
        self.media = media
        self.cti = cti
        self.cdr = cdr
        self.replies = replies

    @classmethod
    def in_memory(cls, keep: bool = True) -> InMemoryPorts:
        return InMemoryPorts(keep=keep)


class InMemoryPorts(Ports):
    media: InMemoryMedia
    cti: InMemoryCti
    cdr: InMemoryCdrs
    replies: InMemoryReplies

    def __init__(self, keep: bool = True) -> None:
        super().__init__(InMemoryMedia(keep), InMemoryCti(keep), InMemoryCdrs(keep), InMemoryReplies(keep))


class BufferedPort(Generic[T]):
    """A non-blocking ``put`` for the worker plus a pump task that hands batches to an async sink.

    ``put`` never blocks: above ``high_water`` items it counts ``overflowed`` and drops the oldest
    (a slow bus must not stall calls; the count is the alarm). Use it as any of the ports by binding
    ``put``: ``MediaPort`` wants ``send``, so ``BufferedMedia`` etc. are thin aliases.
    """

    def __init__(self, sink: Callable[[list[T]], Awaitable[None]], *, batch: int = 256,
                 high_water: int = 100_000) -> None:
        self._sink = sink
        self._buffer: deque[T] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self.batch = batch
        self.high_water = high_water
        self.overflowed = 0
        self.pumped = 0

    def put(self, item: T) -> None:
        if len(self._buffer) >= self.high_water:
            self._buffer.popleft()
            self.overflowed += 1
        self._buffer.append(item)
        if len(self._buffer) == 1:
            self._lot.unpark()

    send = put
    publish = put
    write = put
    reply = put

    def __len__(self) -> int:
        return len(self._buffer)

    async def pump(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run forever (as a supervised task): move batches from the buffer to the sink."""
        task_status.started()
        buffer = self._buffer
        while True:
            if not buffer:
                await self._lot.park()
                continue
            chunk = [buffer.popleft() for _ in range(min(self.batch, len(buffer)))]
            await self._sink(chunk)
            self.pumped += len(chunk)
