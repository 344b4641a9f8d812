"""The CDR's ``trunk`` (the trunk that carried an outbound call, docs/outbound.md) in PostgreSQL:
migration 0008 adds ``cdrs.trunk`` to a database that already holds CDRs (they read ''), and the
CDR writer stores it, on embedded PostgreSQL. The reports that read ``cdrs`` are unaffected."""

from __future__ import annotations

import warnings

import trio

from adapters.postgres.bridge import open_postgres
from adapters.postgres.cdr import open_cdr_writer
from adapters.postgres.migrate import apply_migrations, migrations
from adapters.postgres.stats import agent_performance
from engine.messages import Cdr
from tests.support.pg import fresh_dsn

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

T0 = 1_700_000_000.0


def cdr(call_id: str, **kw) -> Cdr:
    base = dict(call_id=call_id, tenant="acme", direction="outbound", caller_id="2001", destination="0044201234",
                created_at=T0, answered_at=T0 + 2, ended_at=T0 + 62, disposition="answered",
                hangup_cause="NORMAL_CLEARING", agent_id="a1", talk_s=60.0)
    base.update(kw)
    return Cdr(**base)


def test_migration_0008_and_the_writer_store_the_trunk(tmp_path) -> None:
    out: dict = {}

    async def main() -> None:
        async with open_postgres(fresh_dsn()) as pg:
            before = [m for m in migrations() if m.version < 8]
            assert 8 in [m.version for m in migrations()] and 6 not in [m.version for m in migrations()]
            await pg.run(apply_migrations, before)
            # a CDR stored before the upgrade (the old column list)
            await pg.run(lambda conn: conn.execute(
                "INSERT INTO cdrs (call_id, tenant, direction, caller_id, destination, started_at, answered_at, ended_at,"
                " disposition, hangup_cause, agent_id, talk_s) VALUES ('old', 'acme', 'inbound', '1', '2',"
                " to_timestamp($1), to_timestamp($1), to_timestamp($2), 'answered', 'NORMAL_CLEARING', 'a1', 10)", T0, T0 + 10))
            out["applied"] = await pg.run(apply_migrations)
            async with open_cdr_writer(pg, tmp_path / "cdr.spool", batch=10) as w:
                w.write(cdr("via-b", trunk="B"))
                w.write(cdr("failed-on-a", trunk="A", answered_at=None, disposition="busy", hangup_cause="USER_BUSY",
                            talk_s=0.0, agent_id=""))
                w.write(cdr("inside", direction="inbound", destination="5000"))
                w.write(cdr("via-b", trunk="B"))  # a replayed CDR is still stored once
                assert await w.wait_settled(10)
            rows = await pg.run(lambda conn: conn.fetch("SELECT call_id, trunk FROM cdrs ORDER BY call_id"))
            out["rows"] = [tuple(r) for r in rows]
            out["agents"] = await agent_performance(pg, T0 - 60, T0 + 3600, tenant=None)

    trio.run(main)
    # 0008 and every later migration (0009 voicemail, 0010 recordings, 0011 conferences, ...)
    assert out["applied"] == sorted(m.version for m in migrations() if m.version >= 8)
    assert out["rows"] == [("failed-on-a", "A"), ("inside", ""), ("old", ""), ("via-b", "B")]
    (a1,) = [a for a in out["agents"] if a.agent_id == "a1"]
    assert (a1.calls, a1.talk_s) == (3, 130.0)
