"""Statistics in SQL: queue KPIs per interval and agent performance.

Definitions (the same as the queue machine, ``engine/fsm/queue.py``, and the simulator's report):
- a caller belongs to the interval in which it *entered* the queue (QUEUE_LEFT.at - wait_s);
- offered: callers that left the queue (answered + abandoned + overflowed: each leaves once);
- short abandons: abandoned with wait < the queue's ``short_abandon_s``; counted apart and left
  out of SL's denominator;
- SL(T) = answered with wait <= ``sl_threshold_s`` / (offered - short abandons);
- ASA: mean wait of answered callers (queue entry to answer, ringing included);
- AHT: talk + hold from the CDRs of answered calls (by the call's start) + the queue's wrap-up.
Thresholds come from the ``queues`` table, or the defaults (20 s, 5 s) for unknown queues.

Agent performance over [from, to): time per state from ``agent_state_log`` (each row lasts until
the agent's next one, clipped to the window; the state at ``from`` comes from the last row before
it), not-ready time by reason, and talk / hold / calls from the CDRs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

__all__ = ["QueueKpi", "AgentPerformance", "queue_kpis", "agent_performance", "QUEUE_KPI_SQL", "AGENT_SQL"]


class QueueKpi(msgspec.Struct, frozen=True, kw_only=True):
    queue_id: str
    interval_start: dt.datetime
    offered: int
    answered: int
    abandoned: int
    short_abandoned: int
    overflowed: int
    answered_within_sl: int
    sl: float | None
    asa_s: float | None
    aht_s: float | None
    abandon_rate: float | None


class AgentPerformance(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    tenant: str
    calls: int
    talk_s: float
    hold_s: float
    on_call_s: float
    wrap_up_s: float
    available_s: float
    reserved_s: float
    not_ready_s: float
    not_ready_by_reason: dict[str, float]


QUEUE_KPI_SQL = """
WITH left_queue AS (
    SELECT e.tenant, e.queue_id, e.outcome, coalesce(e.wait_s, 0) AS wait_s,
           e.at - make_interval(secs => coalesce(e.wait_s, 0)) AS entered_at
    FROM queue_events e
    WHERE e.event = 'QUEUE_LEFT' AND e.at >= $1 AND ($3::text IS NULL OR e.tenant = $3)
      AND ($4::text IS NULL OR e.queue_id = $4)
), bucketed AS (
    SELECT l.*, to_timestamp(floor(extract(epoch FROM l.entered_at) / $5) * $5) AS bucket,
           coalesce(q.sl_threshold_s, 20) AS sl_t, coalesce(q.short_abandon_s, 5) AS short_t
    FROM left_queue l LEFT JOIN queues q ON q.tenant = l.tenant AND q.queue_id = l.queue_id
    WHERE l.entered_at >= $1 AND l.entered_at < $2
), kpi AS (
    SELECT queue_id, bucket,
           count(*) AS offered,
           count(*) FILTER (WHERE outcome = 'answered') AS answered,
           count(*) FILTER (WHERE outcome = 'abandoned') AS abandoned,
           count(*) FILTER (WHERE outcome = 'abandoned' AND wait_s < short_t) AS short_abandoned,
           count(*) FILTER (WHERE outcome = 'overflowed') AS overflowed,
           count(*) FILTER (WHERE outcome = 'answered' AND wait_s <= sl_t) AS answered_within_sl,
           avg(wait_s) FILTER (WHERE outcome = 'answered') AS asa_s
    FROM bucketed GROUP BY queue_id, bucket
), handle AS (
    SELECT c.queue_id, to_timestamp(floor(extract(epoch FROM c.started_at) / $5) * $5) AS bucket,
           avg(c.talk_s + c.hold_s) + coalesce(max(q.wrap_up_s), 0) AS aht_s
    FROM cdrs c LEFT JOIN queues q ON q.tenant = c.tenant AND q.queue_id = c.queue_id
    WHERE c.started_at >= $1 AND c.started_at < $2 AND c.queue_id <> '' AND c.agent_id <> ''
      AND c.answered_at IS NOT NULL AND ($3::text IS NULL OR c.tenant = $3)
      AND ($4::text IS NULL OR c.queue_id = $4)
    GROUP BY c.queue_id, 2
)
SELECT k.queue_id, k.bucket AS interval_start, k.offered, k.answered, k.abandoned, k.short_abandoned,
       k.overflowed, k.answered_within_sl,
       k.answered_within_sl::float8 / nullif(k.offered - k.short_abandoned, 0) AS sl,
       k.asa_s, h.aht_s, k.abandoned::float8 / nullif(k.offered, 0) AS abandon_rate
FROM kpi k LEFT JOIN handle h ON h.queue_id = k.queue_id AND h.bucket = k.bucket
ORDER BY k.queue_id, k.bucket
"""

AGENT_SQL = """
WITH spans AS (
    SELECT tenant, agent_id, state, reason, at AS s,
           lead(at) OVER (PARTITION BY tenant, agent_id ORDER BY at, id) AS e
    FROM agent_state_log
    WHERE at < $2 AND ($3::text IS NULL OR tenant = $3) AND ($4::text IS NULL OR agent_id = $4)
), clipped AS (
    SELECT tenant, agent_id, state, reason,
           extract(epoch FROM least(coalesce(e, least($2, now())), $2) - greatest(s, $1))::float8 AS secs
    FROM spans WHERE coalesce(e, least($2, now())) > $1
), by_state AS (
    SELECT tenant, agent_id,
           coalesce(sum(secs) FILTER (WHERE state = 'ON_CALL'), 0) AS on_call_s,
           coalesce(sum(secs) FILTER (WHERE state = 'WRAP_UP'), 0) AS wrap_up_s,
           coalesce(sum(secs) FILTER (WHERE state = 'AVAILABLE'), 0) AS available_s,
           coalesce(sum(secs) FILTER (WHERE state = 'RESERVED'), 0) AS reserved_s,
           coalesce(sum(secs) FILTER (WHERE state = 'NOT_READY'), 0) AS not_ready_s
    FROM clipped WHERE secs > 0 GROUP BY tenant, agent_id
), reasons AS (
    SELECT agent_id, jsonb_object_agg(reason, secs) AS not_ready_by_reason
    FROM (SELECT agent_id, reason, sum(secs) AS secs FROM clipped
          WHERE state = 'NOT_READY' AND secs > 0 GROUP BY agent_id, reason) r
    GROUP BY agent_id
), calls AS (
    SELECT agent_id, count(*) AS calls, sum(talk_s) AS talk_s, sum(hold_s) AS hold_s
    FROM cdrs
    WHERE started_at >= $1 AND started_at < $2 AND agent_id <> '' AND answered_at IS NOT NULL
      AND ($3::text IS NULL OR tenant = $3) AND ($4::text IS NULL OR agent_id = $4)
    GROUP BY agent_id
)
SELECT coalesce(b.agent_id, c.agent_id) AS agent_id, coalesce(b.tenant, '') AS tenant,
       coalesce(c.calls, 0) AS calls, coalesce(c.talk_s, 0) AS talk_s, coalesce(c.hold_s, 0) AS hold_s,
       coalesce(b.on_call_s, 0) AS on_call_s, coalesce(b.wrap_up_s, 0) AS wrap_up_s,
       coalesce(b.available_s, 0) AS available_s, coalesce(b.reserved_s, 0) AS reserved_s,
       coalesce(b.not_ready_s, 0) AS not_ready_s, coalesce(r.not_ready_by_reason::text, '{}') AS not_ready_by_reason
FROM by_state b FULL JOIN calls c ON c.agent_id = b.agent_id
LEFT JOIN reasons r ON r.agent_id = coalesce(b.agent_id, c.agent_id)
ORDER BY 1
"""


def _ts(x: dt.datetime | float) -> dt.datetime:
    if isinstance(x, dt.datetime):
        return x if x.tzinfo else x.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(x, dt.UTC)


async def queue_kpis(pg: Any, start: dt.datetime | float, end: dt.datetime | float, *, interval_s: float = 900,
                     tenant: str | None = None, queue_id: str | None = None) -> list[QueueKpi]:
    """Queue KPIs per ``interval_s`` bucket over [start, end) (one bridge crossing)."""
    async def go(conn: Any) -> Any:
        return await conn.fetch(QUEUE_KPI_SQL, _ts(start), _ts(end), tenant, queue_id, float(interval_s))

    return [msgspec.convert(dict(r), QueueKpi) for r in await pg.run(go)]


async def agent_performance(pg: Any, start: dt.datetime | float, end: dt.datetime | float, *,
                            tenant: str | None = None, agent_id: str | None = None) -> list[AgentPerformance]:
    async def go(conn: Any) -> Any:
        return await conn.fetch(AGENT_SQL, _ts(start), _ts(end), tenant, agent_id)

    out = []
    for r in await pg.run(go):
        d = dict(r)
        d["not_ready_by_reason"] = msgspec.json.decode(d["not_ready_by_reason"])
        out.append(msgspec.convert(d, AgentPerformance))
    return out
