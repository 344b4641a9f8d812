"""CDR writer: the engine's ``CdrStore``, durable across PostgreSQL outages and process restarts.

Rules
1. ``write(cdr)`` is a plain, non-blocking function (the ``CdrStore`` port). It appends to an
   in-memory deque and wakes the pump. Nothing else happens on the engine's path.
2. The pump (two tasks, pipelined) moves batches: memory -> spool (append + fsync, in a worker
   thread) -> one bridge crossing that COPYs the batch into a temp table and ``INSERT ... SELECT ... ON CONFLICT
   (call_id, started_at) DO NOTHING`` into the partitioned ``cdrs`` -> ``ack`` in the spool.
   A CDR is acknowledged (and leaves the spool by truncation) only after its batch committed.
   The spooler lingers ``linger_s`` (default 50 ms) after the first CDR of a batch before it takes
   the batch: a batch costs one fsync, one thread hop and one transaction of six round trips
   whatever its size. On a quiet host ``bench/e2e.py`` at 100 calls/s committed 0.6 batches per
   call without it, 0.17 with it (the pump batches by itself only when the host is busy). The
   price: a CDR waits up to ``linger_s`` in memory before it is on disk (a process killed in that
   window loses it, as it loses the calls it was running); ``flush`` at shutdown spools at once.
3. Idempotent by call id: a retried batch, a replayed spool or a CDR written twice inserts one row.
   (The key contains ``started_at`` because partitioned tables need the partition key in unique
   constraints; a call's start never changes, so the key is still one per call.)
4. PostgreSQL down: the batch stays in the spool, the pump switches to *backlog mode* (it keeps
   moving new CDRs from memory to the spool, so memory stays small, and retries the oldest
   un-acknowledged records from the file with capped exponential backoff). Calls never wait.
5. Memory is bounded (``max_buffer``). If the pump cannot even keep up with the disk, ``write``
   appends to the spool itself (a blocking emergency path, counted in ``emergency_spills``):
   stalling the shard briefly beats losing a CDR.
6. At start the spool is replayed (backlog mode from offset 0). ``flush`` (graceful shutdown)
   drains memory to the spool and tries to commit everything before its deadline; what it cannot
   commit stays spooled for the next start.
7. A row PostgreSQL refuses for its *content* (not a connection problem) must not block the
   others forever: the batch is retried row by row and refused rows go to ``<spool>.rejected``
   (JSON lines with the error), logged and counted, never silently dropped.
8. Text is stored literally, with one exception PostgreSQL forces: NUL (U+0000) cannot be in a
   ``text`` value, so it becomes U+FFFD in the table (the spool keeps the original). Lone surrogates (not valid
   Unicode, cannot be UTF-8 encoded) become U+FFFD too.

Test hook: ``CALLENGINE_CDR_PAUSE_AFTER_SPOOL=<path>``: after each spool fsync and before the COPY,
the pump creates ``<path>`` and sleeps, so a test can ``kill -9`` the writer in exactly that window.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio

from adapters.postgres.bridge import Postgres, is_connection_error
from adapters.postgres.errors import Unavailable
from adapters.postgres.spool import Spool
from engine.messages import Cdr

__all__ = ["CdrWriter", "open_cdr_writer", "insert_cdrs", "CdrWriterStatistics", "PAUSE_ENV"]

log = logging.getLogger("callengine.postgres.cdr")
PAUSE_ENV = "CALLENGINE_CDR_PAUSE_AFTER_SPOOL"

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Cdr)

STAGE_COLUMNS = (
    "ord", "call_id", "tenant", "direction", "caller_id", "destination", "created_at", "answered_at",
    "ended_at", "disposition", "hangup_cause", "queue_id", "agent_id", "wait_s", "talk_s", "hold_s",
    "transfers", "node", "version", "trunk", "conference",
)

_STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS cdr_stage (
    ord integer, call_id text, tenant text, direction text, caller_id text, destination text,
    created_at float8, answered_at float8, ended_at float8, disposition text, hangup_cause text,
    queue_id text, agent_id text, wait_s float8, talk_s float8, hold_s float8, transfers integer,
    node text, version integer, trunk text, conference text
) ON COMMIT DELETE ROWS
"""

_INSERT = """
INSERT INTO cdrs (call_id, tenant, direction, caller_id, destination, started_at, answered_at,
                  ended_at, disposition, hangup_cause, queue_id, agent_id, wait_s, talk_s, hold_s,
                  transfers, node, version, trunk, conference)
SELECT call_id, tenant, direction, caller_id, destination, to_timestamp(created_at),
       to_timestamp(answered_at), to_timestamp(ended_at), disposition, hangup_cause, queue_id,
       agent_id, wait_s, talk_s, hold_s, transfers, node, version, trunk, conference
FROM cdr_stage
ON CONFLICT (call_id, started_at) DO NOTHING
"""


def _text(s: str) -> str:
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    return s


def _row(i: int, c: Cdr) -> tuple[Any, ...]:
    t = _text
    return (i, t(c.call_id), t(c.tenant), t(c.direction), t(c.caller_id), t(c.destination), c.created_at,
            c.answered_at, c.ended_at, t(c.disposition), t(c.hangup_cause), t(c.queue_id), t(c.agent_id),
            c.wait_s, c.talk_s, c.hold_s, c.transfers, t(c.node), c.version, t(c.trunk), t(c.conference))


def _month(ts: float) -> tuple[int, int]:
    g = time.gmtime(ts)
    return g.tm_year, g.tm_mon


async def insert_cdrs(conn: Any, cdrs: list[Cdr], new_months: list[tuple[int, int]]) -> int:
    """(asyncio side) One transaction: partitions, COPY to the stage, insert-select. Rows inserted."""
    import datetime as dt

    async with conn.transaction():
        await conn.execute(_STAGE_DDL)
        for year, month in new_months:
            await conn.execute("SELECT ensure_cdr_partition($1)",
                               dt.datetime(year, month, 1, tzinfo=dt.UTC))
        await conn.copy_records_to_table("cdr_stage", records=[_row(i, c) for i, c in enumerate(cdrs)],
                                         columns=STAGE_COLUMNS)
        status = await conn.execute(_INSERT)
    return int(status.rsplit(" ", 1)[-1])


def _sanitize(cdr: Cdr) -> Cdr:
    """Replace what cannot be encoded (lone surrogates) in every text field."""
    changes = {}
    for name in cdr.__struct_fields__:
        v = getattr(cdr, name)
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                changes[name] = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in v)
    return msgspec.structs.replace(cdr, **changes) if changes else cdr


def encode_lines(cdrs: list[Cdr]) -> tuple[bytes, list[Cdr]]:
    """JSON lines for the spool (and the CDRs as encoded, surrogates replaced)."""
    try:
        return _encoder.encode_lines(cdrs), cdrs
    except UnicodeEncodeError:
        cleaned = [_sanitize(c) for c in cdrs]
        return _encoder.encode_lines(cleaned), cleaned


class CdrWriterStatistics(msgspec.Struct, frozen=True, kw_only=True):
    accepted: int
    buffered: int
    committed_batches: int
    inserted: int
    duplicates: int
    spooled_bytes_pending: int
    backlog: bool
    failures: int
    rejected: int
    emergency_spills: int


class CdrWriter:
    """``CdrStore`` backed by PostgreSQL, a spool file and one pump task (``run``)."""

    def __init__(self, pg: Postgres | None, spool_path: str | os.PathLike[str], *, batch: int = 5000,
                 max_buffer: int = 200_000, max_inflight: int = 2, first_backoff_s: float = 0.1, max_backoff_s: float = 5.0,
                 linger_s: float = 0.05) -> None:
        self.pg = pg
        #: how long the spooler lets a batch fill before it takes it (rule 2); 0: at once
        self.linger_s = linger_s
        self.spool = Spool(spool_path)
        self.rejected_path = pathlib.Path(str(spool_path) + ".rejected")
        self.batch = batch
        self.max_buffer = max_buffer
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self._incoming: deque[Cdr] = deque()
        #: CDRs taken from memory whose spool append has not returned yet
        self._in_transit = 0
        self._wake_spooler = trio.lowlevel.ParkingLot()
        self._wake_committer = trio.lowlevel.ParkingLot()
        #: spooled batches not yet committed, in file order: (cdrs, start, end)
        self._inflight: deque[tuple[list[Cdr], int, int]] = deque()
        self.max_inflight = max_inflight
        self._months: set[tuple[int, int]] = set()
        # replay: whatever the spool holds is pending
        self._backlog = self.spool.size > 0
        self.accepted = 0
        self.committed_batches = 0
        self.inserted = 0
        self.duplicates = 0
        self.failures = 0
        self.rejected = 0
        self.emergency_spills = 0
        self._backoff = first_backoff_s
        self._retry_at = 0.0
        if self._backlog:
            log.warning("cdr spool %s holds %d bytes from a previous run: replaying", self.spool.path,
                        self.spool.size)

    # ------------------------------------------------------------------ CdrStore port

    def write(self, cdr: Cdr) -> None:
        self.accepted += 1
        self._incoming.append(cdr)
        if len(self._incoming) == 1:
            self._wake_spooler.unpark_all()
        if len(self._incoming) >= self.max_buffer:
            self._emergency_spill()

    def _emergency_spill(self) -> None:
        cdrs = list(self._incoming)
        self._incoming.clear()
        data, _ = encode_lines(cdrs)
        self.spool.append(data)
        self._backlog = True
        self._wake_committer.unpark_all()
        self.emergency_spills += 1
        log.error("cdr writer: %d CDRs in memory; spooled them synchronously (the pump is behind the disk)",
                  len(cdrs))

    def __len__(self) -> int:
        return len(self._incoming)

    # ------------------------------------------------------------------ pump

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The pump: a spooler and a committer, pipelined (batch N+1 is encoded and fsynced while
        batch N is being committed). Runs until cancelled; safe to cancel at any await."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._spooler)
            nursery.start_soon(self._committer)
            task_status.started()

    async def _spooler(self) -> None:
        """memory -> spool. In direct mode each spooled batch is also handed to the committer."""
        inflight = self._inflight
        while True:
            if not self._incoming or (len(inflight) >= self.max_inflight and not self._backlog):
                await self._wake_spooler.park()
                continue
            if self.linger_s > 0 and len(self._incoming) < self.batch:
                await trio.sleep(self.linger_s)  # let the batch fill (rule 2)
            start, end, cdrs = await self._spool(self._take(self.batch))
            expected = inflight[-1][2] if inflight else self.spool.acked
            if not self._backlog and start == expected:
                inflight.append((cdrs, start, end))
            else:
                # an emergency spill or a truncation got in between: go by the file
                self._backlog = True
            self._wake_committer.unpark_all()

    async def _committer(self) -> None:
        inflight = self._inflight
        while True:
            if self._backlog:
                inflight.clear()
                await self._commit_from_file()
                await trio.lowlevel.checkpoint()  # never spin without yielding, whatever happened
                continue
            if not inflight:
                await self._wake_committer.park()
                continue
            cdrs, start, end = inflight[0]
            await self._pause_hook()
            if await self._commit(cdrs):
                await trio.to_thread.run_sync(self.spool.ack, end)
                if inflight and inflight[0][2] == end:
                    inflight.popleft()
            else:
                self._backlog = True
            self._wake_spooler.unpark_all()

    async def _commit_from_file(self) -> None:
        """Backlog mode: retry the oldest records of the spool, with backoff."""
        now = trio.current_time()
        if now < self._retry_at:
            await trio.sleep_until(self._retry_at)
            return
        lines, end = self.spool.read(self.spool.acked, self.batch)
        if lines:
            cdrs = self._decode(lines)
            await self._pause_hook()
            if not await self._commit(cdrs):
                return
            await trio.to_thread.run_sync(self.spool.ack, end)
        elif end < self.spool.size:
            await trio.sleep(0.001)  # only part of a line is written yet; look again
            return
        else:
            # nothing beyond `end`: ack(end) truncates under the spool's lock, unless an append
            # landed since (then it leaves the file alone and we read that next)
            await trio.to_thread.run_sync(self.spool.ack, end)
        # checked here, in the trio thread: a spooler append that finished meanwhile shows in size
        if self.spool.size == 0:
            self._backlog = False
            log.info("cdr writer: spool drained, back to direct mode")
            self._wake_spooler.unpark_all()

    def _take(self, n: int) -> list[Cdr]:
        q = self._incoming
        if len(q) <= n:
            out = list(q)
            q.clear()
            return out
        return [q.popleft() for _ in range(n)]

    async def _spool(self, cdrs: list[Cdr]) -> tuple[int, int, list[Cdr]]:
        # counted while neither in memory nor in the file, so that ``settled`` cannot see a batch
        # that is on its way to the disk as done (a poll landing right after the linger did)
        self._in_transit += len(cdrs)
        try:
            data, cdrs = encode_lines(cdrs)
            start, end = await trio.to_thread.run_sync(self.spool.append, data)
        finally:
            self._in_transit -= len(cdrs)
        return start, end, cdrs

    def _decode(self, lines: list[bytes]) -> list[Cdr]:
        out = []
        for line in lines:
            try:
                out.append(_decoder.decode(line))
            except msgspec.DecodeError as exc:
                self._reject_raw(line, f"undecodable spool line: {exc}")
        return out

    async def _pause_hook(self) -> None:
        path = os.environ.get(PAUSE_ENV)  # read each time: a test arms it mid-run
        if path:
            pathlib.Path(path).write_text(str(os.getpid()))
            await trio.sleep(3600)

    async def _commit(self, cdrs: list[Cdr]) -> bool:
        """Insert one batch. True when committed (or refused row by row); False: retry later."""
        if not cdrs:
            return True
        if self.pg is None:
            self._failed(Unavailable("no database configured"))
            return False
        months = {_month(c.created_at) for c in cdrs} - self._months
        try:
            inserted = await self.pg.run(insert_cdrs, cdrs, sorted(months))
        except Unavailable as exc:
            self._failed(exc)
            return False
        except Exception as exc:  # noqa: BLE001 - content errors: find the bad rows
            if is_connection_error(exc):
                self._failed(exc)
                return False
            log.error("cdr writer: batch of %d refused (%s: %s); retrying row by row", len(cdrs),
                      type(exc).__name__, exc)
            return await self._row_by_row(cdrs)
        self._months |= months
        self._succeeded(len(cdrs), inserted)
        return True

    async def _row_by_row(self, cdrs: list[Cdr]) -> bool:
        for cdr in cdrs:
            try:
                inserted = await self.pg.run(insert_cdrs, [cdr], [_month(cdr.created_at)])  # type: ignore[union-attr]
            except Unavailable as exc:
                self._failed(exc)
                return False
            except Exception as exc:  # noqa: BLE001
                if is_connection_error(exc):
                    self._failed(exc)
                    return False
                self._reject(cdr, f"{type(exc).__name__}: {exc}")
                continue
            self._succeeded(1, inserted)
        return True

    def _succeeded(self, n: int, inserted: int) -> None:
        if self.failures and self._backoff > self.first_backoff_s:
            log.warning("cdr writer: postgres is back; committing again")
        self.committed_batches += 1
        self.inserted += inserted
        self.duplicates += n - inserted
        self._backoff = self.first_backoff_s
        self._retry_at = 0.0

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        log.warning("cdr writer: postgres unavailable (%s); CDRs stay in the spool %s, retry in %.2f s",
                    exc, self.spool.path, self._backoff)
        self._retry_at = trio.current_time() + self._backoff
        self._backoff = min(self.max_backoff_s, self._backoff * 2)

    def _reject(self, cdr: Cdr, error: str) -> None:
        self._reject_raw(_encoder.encode(cdr), error)

    def _reject_raw(self, raw: bytes, error: str) -> None:
        self.rejected += 1
        log.error("cdr writer: refused a CDR (%s); kept in %s", error, self.rejected_path)
        with open(self.rejected_path, "ab") as f:
            f.write(_encoder.encode({"error": error, "cdr": raw.decode("utf-8", "replace")}) + b"\n")
            f.flush()
            os.fsync(f.fileno())

    # ------------------------------------------------------------------ shutdown

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Graceful shutdown (with the pump stopped): spool everything in memory, then commit until
        the spool is empty or the deadline passes. True when everything is committed."""
        with trio.move_on_after(timeout_s):
            while self._incoming:
                await self._spool(self._take(self.batch))
            self._inflight.clear()
            self._backlog = self.spool.size > 0
            while self._backlog:
                self._retry_at = min(self._retry_at, trio.current_time() + 0.2)
                await self._commit_from_file()
        # whatever is still in memory (the deadline hit mid-way) goes to disk without waiting
        if self._incoming:
            data, _ = encode_lines(self._take(len(self._incoming)))
            self.spool.append(data)
            self._backlog = True
        return not self._backlog and self.spool.size == 0

    @property
    def settled(self) -> bool:
        """Nothing in memory, nothing pending in the spool."""
        return (not self._incoming and not self._in_transit and not self._backlog
                and self.spool.snapshot() == (0, 0))

    async def wait_settled(self, timeout_s: float = 10.0, poll_s: float = 0.005) -> bool:
        with trio.move_on_after(timeout_s):
            while not self.settled:
                await trio.sleep(poll_s)
        return self.settled

    def statistics(self) -> CdrWriterStatistics:
        size, acked = self.spool.snapshot()
        return CdrWriterStatistics(
            accepted=self.accepted, buffered=len(self._incoming), committed_batches=self.committed_batches,
            inserted=self.inserted, duplicates=self.duplicates,
            spooled_bytes_pending=size - acked, backlog=self._backlog,
            failures=self.failures, rejected=self.rejected, emergency_spills=self.emergency_spills)

    def close(self) -> None:
        self.spool.close()


@asynccontextmanager
async def open_cdr_writer(pg: Postgres | None, spool_path: str | os.PathLike[str], *,
                          flush_timeout_s: float = 5.0, **options: Any) -> AsyncIterator[CdrWriter]:
    """A running ``CdrWriter`` for the block; on exit (graceful shutdown) it flushes."""
    writer = CdrWriter(pg, spool_path, **options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            try:
                yield writer
            finally:
                nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            ok = await writer.flush(flush_timeout_s)
            if not ok:
                log.warning("cdr writer: shutdown with %d bytes still spooled in %s (replayed at next start)",
                            writer.spool.size, writer.spool.path)
    finally:
        writer.close()
