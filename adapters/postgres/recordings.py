"""Recording metadata in PostgreSQL (#10 part 2, docs/recordings.md; migration 0010).

Rules
1. ``RecordingWriter.publish(event)`` is a ``CtiPort`` (chain it with ``TeeCti``): plain and
   non-blocking. It keeps CALL_RECORDING_STARTED and CALL_RECORDING_STOPPED and drops the rest.
   One pump task writes them in batches, one transaction per batch.
2. Idempotent and order-proof: rows are keyed by the engine's recording id. STARTED upserts the
   row's start (``retain_until`` from the tenant's policy at that moment); STOPPED upserts the end
   (stopped_at, duration, paused time, reason) and creates the row if STARTED was lost or comes
   later. A replayed batch writes the same values again.
3. Like the CTI statistics sink (adapters/postgres/events.py), not like CDRs: the buffer is bounded
   (``high_water``; the oldest are dropped and counted) and not spooled to disk. While PostgreSQL
   is down the pump retries the same batch with capped backoff. A lost STARTED is repaired by its
   STOPPED (rule 2); a lost STOPPED leaves a row without ``stopped_at``.
4. Reads for the API (``list_recordings``, ``get_recording``) always filter by tenant: another
   tenant's id reads as absent. ``expire_recordings`` is the bounded retention step: it marks at
   most ``limit`` rows whose ``retain_until`` passed as expired and returns them, so the operator
   (or a media-server hook) deletes their audio files; the engine never touches those files.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio

from adapters.postgres.bridge import Postgres
from adapters.postgres.errors import Unavailable
from adapters.postgres.events import BatchedCtiWriter, running_writer
from engine.messages import CtiEvent
from engine.recordings import (
    DEFAULT_POLICY,
    RECORDING_EVENTS,
    RecordingPolicy,
    RecordingRow,
    audio_url,
    retain_until,
)

__all__ = ["RecordingWriter", "PgRecordings", "open_recording_writer", "list_recordings", "get_recording",
           "load_policy", "save_policy", "expire_recordings", "run_retention"]

log = logging.getLogger("callengine.postgres.recordings")

_COLUMNS = ("recording_id, tenant, call_id, path, extract(epoch FROM started_at)::float8 AS started_at, "
            "extract(epoch FROM stopped_at)::float8 AS stopped_at, duration_s, paused_s, started_by, "
            "compliance, queue_id, agent_id, extension, stop_reason, "
            "extract(epoch FROM retain_until)::float8 AS retain_until, "
            "extract(epoch FROM expired_at)::float8 AS expired_at")

_UPSERT_START = """
INSERT INTO recordings (recording_id, tenant, call_id, path, started_at, started_by, compliance,
                        queue_id, agent_id, extension, retain_until)
VALUES ($1, $2, $3, $4, to_timestamp($5), $6, $7, $8, $9, $10, to_timestamp($11))
ON CONFLICT (recording_id) DO UPDATE SET started_at = EXCLUDED.started_at, retain_until = EXCLUDED.retain_until
"""

_UPSERT_STOP = """
INSERT INTO recordings (recording_id, tenant, call_id, path, started_at, stopped_at, duration_s, paused_s,
                        started_by, compliance, queue_id, agent_id, extension, stop_reason, retain_until)
VALUES ($1, $2, $3, $4, to_timestamp($5), to_timestamp($6), $7, $8, $9, $10, $11, $12, $13, $14,
        to_timestamp($15))
ON CONFLICT (recording_id) DO UPDATE SET stopped_at = EXCLUDED.stopped_at, duration_s = EXCLUDED.duration_s,
    paused_s = EXCLUDED.paused_s, stop_reason = EXCLUDED.stop_reason
"""


def _s(v: Any) -> str:
    s = "" if v is None else str(v)
    return s.replace("\x00", "\ufffd") if "\x00" in s else s


def _f(v: Any, default: float = 0.0) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def _policy_from(row: Any, tenant: str) -> RecordingPolicy:
    if row is None:
        return msgspec.structs.replace(DEFAULT_POLICY, tenant=tenant)
    roles = row["compliance_stop_roles"]
    if isinstance(roles, str):
        roles = msgspec.json.decode(roles)
    return RecordingPolicy(tenant=tenant, consent=row["consent"], retention_days=row["retention_days"],
                           agent_control=row["agent_control"], agent_listen=row["agent_listen"],
                           compliance_stop_roles=tuple(roles))


async def _fetch_policy(conn: Any, tenant: str) -> RecordingPolicy:
    row = await conn.fetchrow("SELECT * FROM recording_policies WHERE tenant = $1", tenant)
    return _policy_from(row, tenant)


async def write_events(conn: Any, events: list[CtiEvent]) -> None:
    """(asyncio side) One transaction for a batch of recording events."""
    async with conn.transaction():
        policies: dict[str, RecordingPolicy] = {}
        for e in events:
            d = e.data
            if e.tenant not in policies:
                policies[e.tenant] = await _fetch_policy(conn, e.tenant)
            policy = policies[e.tenant]
            common = (_s(d.get("recording_id")), _s(e.tenant), _s(e.call_id), _s(d.get("path")))
            meta = (_s(d.get("by")), bool(d.get("compliance")), _s(e.queue_id), _s(e.agent_id),
                    _s(d.get("extension")))
            if e.name == "CALL_RECORDING_STARTED":
                await conn.execute(_UPSERT_START, *common, e.at, *meta, retain_until(policy, e.at))
            else:
                started = _f(d.get("started_at"), e.at)
                await conn.execute(_UPSERT_STOP, *common, started, e.at, _f(d.get("duration_s")),
                                   _f(d.get("paused_s")), *meta, _s(d.get("reason")),
                                   retain_until(policy, started))


class RecordingWriter(BatchedCtiWriter):
    """``CtiPort`` that keeps the recording events and pumps them into ``recordings`` (the batching,
    bounds and retries of ``adapters.postgres.events.BatchedCtiWriter``)."""

    label = "recordings"

    def __init__(self, pg: Postgres | None, *, batch: int = 500, high_water: int = 100_000,
                 max_backoff_s: float = 5.0) -> None:
        super().__init__(pg, batch=batch, high_water=high_water, max_backoff_s=max_backoff_s)

    def keeps(self, event: CtiEvent) -> bool:
        return event.name in RECORDING_EVENTS and bool(event.data.get("recording_id"))

    async def _store(self, events: list[CtiEvent]) -> None:
        await self.pg.run(write_events, events)  # type: ignore[union-attr]  # _write checked pg


@asynccontextmanager
async def open_recording_writer(pg: Postgres | None, *, flush_timeout_s: float = 5.0,
                                **options: Any) -> AsyncIterator[RecordingWriter]:
    async with running_writer(RecordingWriter(pg, **options), flush_timeout_s=flush_timeout_s) as writer:
        yield writer


# ---- reads, policy, retention ---------------------------------------------------------------


def _row(r: Any) -> RecordingRow:
    return RecordingRow(**dict(r))


async def list_recordings(pg: Postgres, tenant: str, *, call_id: str = "", agent_id: str = "",
                          limit: int = 100, include_expired: bool = False) -> list[RecordingRow]:
    """The tenant's recordings, newest first (at most ``limit``, 1..1000)."""
    limit = max(1, min(1000, limit))

    async def q(conn: Any) -> list[RecordingRow]:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM recordings WHERE tenant = $1 AND ($2 = '' OR call_id = $2)"
            " AND ($3 = '' OR agent_id = $3) AND ($4 OR expired_at IS NULL)"
            " ORDER BY started_at DESC, recording_id LIMIT $5", tenant, call_id, agent_id, include_expired, limit)
        return [_row(r) for r in rows]

    return await pg.run(q)


async def get_recording(pg: Postgres, tenant: str, recording_id: str) -> RecordingRow | None:
    """One recording of ``tenant`` (None for an unknown id or another tenant's)."""

    async def q(conn: Any) -> RecordingRow | None:
        r = await conn.fetchrow(f"SELECT {_COLUMNS} FROM recordings WHERE tenant = $1 AND recording_id = $2",
                                tenant, recording_id)
        return None if r is None else _row(r)

    return await pg.run(q)


async def load_policy(pg: Postgres, tenant: str) -> RecordingPolicy:
    async def q(conn: Any) -> RecordingPolicy:
        return await _fetch_policy(conn, tenant)

    return await pg.run(q)


async def save_policy(pg: Postgres, policy: RecordingPolicy) -> None:
    async def q(conn: Any) -> None:
        await conn.execute(
            "INSERT INTO recording_policies (tenant, consent, retention_days, agent_control, agent_listen,"
            " compliance_stop_roles) VALUES ($1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT (tenant) DO UPDATE SET"
            " consent = EXCLUDED.consent, retention_days = EXCLUDED.retention_days,"
            " agent_control = EXCLUDED.agent_control, agent_listen = EXCLUDED.agent_listen,"
            " compliance_stop_roles = EXCLUDED.compliance_stop_roles",
            policy.tenant, policy.consent, policy.retention_days, policy.agent_control, policy.agent_listen,
            msgspec.json.encode(list(policy.compliance_stop_roles)).decode())

    await pg.run(q)


async def expire_recordings(pg: Postgres, now: float, *, limit: int = 1000) -> list[RecordingRow]:
    """Mark at most ``limit`` recordings whose retention passed (and that stopped) as expired;
    return them (their audio files are the media server's to delete)."""

    async def q(conn: Any) -> list[RecordingRow]:
        rows = await conn.fetch(
            "UPDATE recordings SET expired_at = to_timestamp($1) WHERE recording_id IN ("
            " SELECT recording_id FROM recordings WHERE expired_at IS NULL AND stopped_at IS NOT NULL"
            " AND retain_until <= to_timestamp($1) ORDER BY retain_until LIMIT $2 FOR UPDATE SKIP LOCKED)"
            f" RETURNING {_COLUMNS}", now, max(1, limit))
        return sorted((_row(r) for r in rows), key=lambda r: (r.retain_until, r.recording_id))

    return await pg.run(q)


async def run_retention(pg: Postgres, *, interval_s: float = 3600.0, limit: int = 1000,
                        clock: Any = None, on_expired: Any = None, rounds: int | None = None) -> int:
    """The periodic retention job: every ``interval_s`` one ``expire_recordings`` step (bounded by
    ``limit`` rows; a full step runs again at once, up to 10 steps per round). ``on_expired(rows)``
    is told each batch (e.g. to delete the files through the media server). Stops after ``rounds``
    rounds when given (tests); returns how many rows it expired."""
    import time

    now = clock or time.time
    total = 0
    done = 0
    while rounds is None or done < rounds:
        for _ in range(10):
            try:
                rows = await expire_recordings(pg, now(), limit=limit)
            except Unavailable as exc:
                log.warning("recording retention: postgres unavailable (%s)", exc)
                break
            total += len(rows)
            if rows:
                log.info("recording retention: %d recordings expired (their audio files are the media "
                         "server's to delete): %s", len(rows), ", ".join(r.path for r in rows[:10]))
            if rows and on_expired is not None:
                on_expired(rows)
            if len(rows) < limit:
                break
        done += 1
        if rounds is None or done < rounds:
            await trio.sleep(interval_s)
    return total


class PgRecordings:
    """The API's view of the recordings on PostgreSQL (same interface as
    ``engine.recordings.RecordingCatalog``): the tenant's policy, list and get, the audio URL."""

    def __init__(self, pg: Postgres, *, audio_base: str = "") -> None:
        self.pg = pg
        self.audio_base = audio_base

    async def policy(self, tenant: str) -> RecordingPolicy:
        return await load_policy(self.pg, tenant)

    async def put_policy(self, policy: RecordingPolicy) -> None:
        await save_policy(self.pg, policy)

    async def list(self, tenant: str, *, call_id: str = "", agent_id: str = "", limit: int = 100) -> list[RecordingRow]:
        return await list_recordings(self.pg, tenant, call_id=call_id, agent_id=agent_id, limit=limit)

    async def get(self, tenant: str, recording_id: str) -> RecordingRow | None:
        return await get_recording(self.pg, tenant, recording_id)

    def audio_url(self, row: RecordingRow) -> str:
        return audio_url(self.audio_base, row)
