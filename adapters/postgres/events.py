"""CTI sink: queue events and agent state changes into PostgreSQL, for the statistics.

Rules
1. ``publish(event)`` is the ``CtiPort``: plain and non-blocking. It keeps only what the
   statistics read (``QUEUE_ENTERED``, ``QUEUE_LEFT``, ``CALL_OVERFLOWED`` and ``CALL_ENDED`` with
   a queue -> ``queue_events``; ``AGENT_STATE_CHANGED`` -> ``agent_state_log``) and drops the rest
   at once. Chain it with the bus publisher via ``TeeCti`` when both are wanted.
2. One pump task, one bridge crossing per batch (COPY into temp tables, insert-select with
   ``ON CONFLICT DO NOTHING``: a retried batch inserts nothing twice).
3. These rows are statistics, not billing: the buffer is bounded (``high_water``) and, in a long
   outage, the oldest are dropped and counted (``dropped``), unlike CDRs, which are spooled.
   While PostgreSQL is down the pump retries the same batch with capped backoff.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from adapters.postgres.bridge import Postgres
from adapters.postgres.errors import Unavailable
from engine.messages import CtiEvent

__all__ = ["BatchedCtiWriter", "EventSink", "TeeCti", "open_event_sink", "running_writer", "insert_events",
           "QUEUE_EVENT_NAMES"]

log = logging.getLogger("callengine.postgres.events")

QUEUE_EVENT_NAMES = frozenset({"QUEUE_ENTERED", "QUEUE_LEFT", "CALL_OVERFLOWED", "CALL_ENDED"})

_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS queue_event_stage (
    ord integer, tenant text, queue_id text, call_id text, event text, at float8, outcome text,
    wait_s float8, data text) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS agent_state_stage (
    ord integer, tenant text, agent_id text, at float8, state text, previous text, reason text
) ON COMMIT DELETE ROWS
"""
_INSERT_QUEUE = """
INSERT INTO queue_events (tenant, queue_id, call_id, event, at, outcome, wait_s, data)
SELECT tenant, queue_id, call_id, event, to_timestamp(at), outcome, wait_s, data::jsonb
FROM queue_event_stage ORDER BY ord
ON CONFLICT DO NOTHING
"""
_INSERT_AGENT = """
INSERT INTO agent_state_log (tenant, agent_id, at, state, previous, reason)
SELECT tenant, agent_id, to_timestamp(at), state, previous, reason
FROM agent_state_stage ORDER BY ord
ON CONFLICT DO NOTHING
"""


def _t(v: Any) -> str:
    s = "" if v is None else str(v)
    return s.replace("\x00", "\ufffd") if "\x00" in s else s


async def insert_events(conn: Any, queue_rows: list[tuple[Any, ...]], agent_rows: list[tuple[Any, ...]]) -> None:
    async with conn.transaction():
        await conn.execute(_STAGE)
        if queue_rows:
            await conn.copy_records_to_table(
                "queue_event_stage", records=queue_rows,
                columns=("ord", "tenant", "queue_id", "call_id", "event", "at", "outcome", "wait_s", "data"))
            await conn.execute(_INSERT_QUEUE)
        if agent_rows:
            await conn.copy_records_to_table(
                "agent_state_stage", records=agent_rows,
                columns=("ord", "tenant", "agent_id", "at", "state", "previous", "reason"))
            await conn.execute(_INSERT_AGENT)


def _rows(events: list[CtiEvent]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    import msgspec

    enc = msgspec.json.Encoder()
    q: list[tuple[Any, ...]] = []
    a: list[tuple[Any, ...]] = []
    for i, e in enumerate(events):
        if e.name == "AGENT_STATE_CHANGED":
            d = e.data
            a.append((i, _t(e.tenant), _t(e.agent_id), e.at, _t(d.get("state")), _t(d.get("previous")),
                      _t(d.get("reason"))))
        else:
            d = e.data
            wait = d.get("wait_s")
            q.append((i, _t(e.tenant), _t(e.queue_id or d.get("queue_id")), _t(e.call_id), e.name, e.at,
                      _t(d.get("outcome") or d.get("disposition") or ""),
                      float(wait) if isinstance(wait, (int, float)) else None,
                      _t(enc.encode(d).decode())))
    return q, a


class BatchedCtiWriter:
    """A ``CtiPort`` that keeps the events ``keeps`` accepts and pumps them to PostgreSQL in batches
    (``_store``), never blocking the engine: bounded (the oldest dropped past ``high_water``),
    retried with backoff while PostgreSQL is away, flushed at the end. ``EventSink`` and
    ``adapters.postgres.recordings.RecordingWriter`` differ only in what they keep and store."""

    #: names this writer in its log lines
    label = "events"

    def __init__(self, pg: Postgres | None, *, batch: int = 5000, high_water: int = 200_000,
                 max_backoff_s: float = 5.0, linger_s: float = 0.0) -> None:
        self.pg = pg
        self.batch = batch
        #: after the first event of a batch, wait this long for more (one transaction for many: on a
        #: quiet node every engine turn was its own transaction); ``flush`` does not wait
        self.linger_s = linger_s
        self.high_water = high_water
        self.max_backoff_s = max_backoff_s
        self._buffer: deque[CtiEvent] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self.kept = 0
        self.dropped = 0
        self.written = 0
        self.failures = 0
        self._pending: list[CtiEvent] = []

    def keeps(self, event: CtiEvent) -> bool:
        raise NotImplementedError

    async def _store(self, events: list[CtiEvent]) -> None:
        raise NotImplementedError

    def publish(self, event: CtiEvent) -> None:
        if self.keeps(event):
            if len(self._buffer) >= self.high_water:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(event)
            self.kept += 1
            if len(self._buffer) == 1:
                self._lot.unpark_all()

    def __len__(self) -> int:
        return len(self._buffer) + len(self._pending)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        delay = 0.1
        while True:
            if not self._pending:
                if not self._buffer:
                    await self._lot.park()
                    continue
                if self.linger_s > 0 and len(self._buffer) < self.batch:
                    await trio.sleep(self.linger_s)
                n = min(self.batch, len(self._buffer))
                self._pending = [self._buffer.popleft() for _ in range(n)]
            if await self._write(self._pending):
                self._pending = []
                delay = 0.1
            else:
                await trio.sleep(delay)
                delay = min(self.max_backoff_s, delay * 2)

    async def _write(self, events: list[CtiEvent]) -> bool:
        if self.pg is None:
            return False
        try:
            await self._store(events)
        except Unavailable as exc:
            self.failures += 1
            log.warning("%s: postgres unavailable (%s); %d events waiting", self.label, exc, len(self))
            return False
        self.written += len(events)
        return True

    async def flush(self, timeout_s: float = 5.0) -> bool:
        with trio.move_on_after(timeout_s):
            while self._pending or self._buffer:
                if not self._pending:
                    n = min(self.batch, len(self._buffer))
                    self._pending = [self._buffer.popleft() for _ in range(n)]
                if await self._write(self._pending):
                    self._pending = []
                else:
                    await trio.sleep(0.2)
        return not len(self)

    async def wait_settled(self, timeout_s: float = 10.0) -> bool:
        with trio.move_on_after(timeout_s):
            while len(self):
                await trio.sleep(0.005)
        return not len(self)


class EventSink(BatchedCtiWriter):
    """``CtiPort`` that keeps the statistics' events (queue events, agent states) for
    ``queue_events`` and ``agent_state_log``."""

    label = "event sink"

    def __init__(self, pg: Postgres | None, *, batch: int = 5000, high_water: int = 200_000,
                 max_backoff_s: float = 5.0, linger_s: float = 0.05) -> None:
        super().__init__(pg, batch=batch, high_water=high_water, max_backoff_s=max_backoff_s, linger_s=linger_s)

    def keeps(self, event: CtiEvent) -> bool:
        name = event.name
        return name == "AGENT_STATE_CHANGED" or bool(name in QUEUE_EVENT_NAMES
                                                     and (event.queue_id or event.data.get("queue_id")))

    async def _store(self, events: list[CtiEvent]) -> None:
        q, a = _rows(events)
        await self.pg.run(insert_events, q, a)  # type: ignore[union-attr]  # _write checked pg


class TeeCti:
    """One ``CtiPort`` feeding several (e.g. the NATS publisher and this sink)."""

    def __init__(self, *ports: Any) -> None:
        self.ports = ports

    def publish(self, event: CtiEvent) -> None:
        for p in self.ports:
            p.publish(event)


W = TypeVar("W", bound=BatchedCtiWriter)


@asynccontextmanager
async def running_writer(writer: W, *, flush_timeout_s: float = 5.0) -> AsyncIterator[W]:
    """``writer`` pumping for the block; at its end what is still buffered is flushed (bounded)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        try:
            yield writer
        finally:
            nursery.cancel_scope.cancel()
    with trio.CancelScope(shield=True):
        await writer.flush(flush_timeout_s)


@asynccontextmanager
async def open_event_sink(pg: Postgres | None, *, flush_timeout_s: float = 5.0, **options: Any) -> AsyncIterator[EventSink]:
    async with running_writer(EventSink(pg, **options), flush_timeout_s=flush_timeout_s) as sink:
        yield sink
