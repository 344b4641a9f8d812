"""Benchmark the PostgreSQL store: CDR rows/s through the real writer, and configuration load time.

    .venv/bin/python bench/store.py [--cdrs 200000] [--batch 5000]

Runs its own embedded PostgreSQL (pgserver, unix socket) in a temporary directory, or uses
CALLENGINE_PG_DSN (a fresh database is NOT created then: use a throwaway one). Prints figures;
the last line is one JSON object:
- cdr_rows_per_s: CDRs written through ``CdrWriter`` (spool fsync per batch + COPY + idempotent
  insert-select), from the first ``write`` until everything is committed and acknowledged;
- config_load_s: ``PgConfigStore.snapshot()`` (fetch + validate) of 10k extensions, 1k queues,
  5k agents (plus 5k agent skills and 5k queue memberships).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")

import trio  # noqa: E402

from adapters.postgres.bridge import open_postgres  # noqa: E402
from adapters.postgres.cdr import open_cdr_writer  # noqa: E402
from adapters.postgres.config import PgConfigStore  # noqa: E402
from adapters.postgres.embedded import EmbeddedPostgres  # noqa: E402
from adapters.postgres.migrate import apply_migrations  # noqa: E402
from engine.messages import Cdr  # noqa: E402


def cdrs(n: int) -> list[Cdr]:
    t0 = 1_700_000_000.0
    return [Cdr(call_id=f"bench-{i}", tenant="acme", direction="inbound", caller_id="+4420790000", destination="100",
                created_at=t0 + i * 0.01, answered_at=t0 + i * 0.01 + 3, ended_at=t0 + i * 0.01 + 95,
                disposition="answered", hangup_cause="NORMAL_CLEARING", queue_id=f"q{i % 50}",
                agent_id=f"a{i % 500}", wait_s=3.0, talk_s=88.0, hold_s=4.0, node="fs1") for i in range(n)]


async def seed_config(pg) -> None:
    async def go(conn):
        await conn.execute("INSERT INTO tenants (tenant) VALUES ('acme')")
        await conn.copy_records_to_table("extensions", records=[("acme", str(10000 + i), f"ext {i}") for i in range(10_000)],
                                         columns=("tenant", "extension", "name"))
        await conn.copy_records_to_table("queues", records=[("acme", f"q{i}", "longest-idle") for i in range(1000)],
                                         columns=("tenant", "queue_id", "strategy"))
        await conn.copy_records_to_table("agents", records=[("acme", f"a{i}", str(10000 + i)) for i in range(5000)],
                                         columns=("tenant", "agent_id", "extension"))
        await conn.execute("INSERT INTO skills (tenant, skill) VALUES ('acme', 'fr')")
        await conn.copy_records_to_table("agent_skills", records=[("acme", f"a{i}", "fr", 50) for i in range(5000)],
                                         columns=("tenant", "agent_id", "skill", "level"))
        await conn.copy_records_to_table("queue_members", records=[("acme", f"q{i % 1000}", f"a{i}") for i in range(5000)],
                                         columns=("tenant", "queue_id", "agent_id"))

    await pg.run(go)


async def bench(dsn: str, n: int, batch: int, spool: str) -> dict[str, float]:
    out: dict[str, float] = {}
    async with open_postgres(dsn) as pg:
        await pg.run(apply_migrations)
        data = cdrs(n)
        async with open_cdr_writer(pg, spool, batch=batch) as w:
            # warm-up (partition creation, temp table, prepared statements)
            for c in cdrs(1000):
                w.write(Cdr(**{**{f: getattr(c, f) for f in c.__struct_fields__}, "call_id": "w" + c.call_id}))
            await w.wait_settled(60)
            t = time.perf_counter()
            chunk = 1000
            for k in range(0, n, chunk):  # calls end in bursts; the engine yields between them
                for c in data[k:k + chunk]:
                    w.write(c)
                await trio.sleep(0)
            ok = await w.wait_settled(600)
            dt = time.perf_counter() - t
            stats = w.statistics()
        assert ok and stats.rejected == 0
        out["cdr_rows_per_s"] = round(n / dt)
        out["cdr_batches"] = stats.committed_batches
        print(f"CDRs: {n} in {dt:.2f} s = {n / dt:,.0f} rows/s ({stats.committed_batches} batches, "
              f"{pg.crossings} bridge crossings)")
        await seed_config(pg)
        store = PgConfigStore(pg)
        t = time.perf_counter()
        snap = await store.snapshot()
        dt = time.perf_counter() - t
        assert not snap.rejected
        out["config_load_s"] = round(dt, 3)
        out["config_rows"] = snap.count()
        print(f"config: {snap.count()} rows loaded and validated in {dt:.3f} s")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cdrs", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=5000)
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="callengine-bench-")
    server = None
    dsn = os.environ.get("CALLENGINE_PG_DSN")
    if not dsn:
        server = EmbeddedPostgres(os.path.join(root, "pg"), cleanup_mode="delete")
        dsn = server.start()
    try:
        result = trio.run(bench, dsn, args.cdrs, args.batch, os.path.join(root, "cdr.spool"))
    finally:
        if server is not None:
            server.cleanup()
    result["cdr_goal_met"] = result["cdr_rows_per_s"] >= 100_000
    print(json.dumps(result))


if __name__ == "__main__":
    main()
