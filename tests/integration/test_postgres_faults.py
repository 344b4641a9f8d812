"""Faults against a real PostgreSQL: an outage mid-run and a writer killed between spool and COPY.

Each test runs its own embedded server (it stops it), so they are slower than the rest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import trio

from adapters.postgres.bridge import open_postgres
from adapters.postgres.cdr import PAUSE_ENV, open_cdr_writer
from adapters.postgres.config import PgConfigStore, Tenant
from adapters.postgres.embedded import EmbeddedPostgres
from adapters.postgres.errors import Unavailable
from adapters.postgres.migrate import apply_migrations
from engine.messages import Cdr

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

T0 = 1_700_000_000.0


def cdr(i: int) -> Cdr:
    return Cdr(call_id=f"c{i}", tenant="acme", direction="inbound", caller_id="+441234", destination="100",
               created_at=T0 + i, answered_at=None, ended_at=T0 + i + 9, disposition="abandoned",
               hangup_cause="ORIGINATOR_CANCEL")


def _server() -> EmbeddedPostgres:
    # not under tmp_path: pytest makes it 0700, and as root the server runs as user `pgserver`,
    # which must be able to reach its data directory
    import tempfile

    return EmbeddedPostgres(os.path.join(tempfile.mkdtemp(prefix="callengine-pg-"), "pg"), cleanup_mode="delete")


async def counts(pg):
    async def go(conn):
        return await conn.fetch("SELECT call_id, count(*) AS n FROM cdrs GROUP BY call_id")

    return {r["call_id"]: r["n"] for r in await pg.run(go)}


def test_outage_mid_run_every_cdr_exactly_once_and_admin_writes_unavailable(tmp_path):
    server = _server()
    dsn = server.start()

    async def main():
        async with open_postgres(dsn) as pg:
            await pg.run(apply_migrations)
            store = PgConfigStore(pg)
            async with open_cdr_writer(pg, tmp_path / "cdr.spool", batch=200, max_backoff_s=0.5) as w:
                for i in range(1000):
                    w.write(cdr(i))
                assert await w.wait_settled(20)
                await trio.to_thread.run_sync(server.stop)            # outage
                for i in range(1000, 3000):                             # calls keep ending
                    w.write(cdr(i))
                    if i % 100 == 0:
                        await trio.sleep(0.02)
                await trio.sleep(0.5)
                down = w.statistics()
                with pytest.raises(Unavailable):
                    await store.create(Tenant(tenant="acme"))
                await trio.to_thread.run_sync(server.start)           # back
                assert await w.wait_settled(30), w.statistics()
                up = w.statistics()
            return down, up, await counts(pg)

    try:
        down, up, seen = trio.run(main)
    finally:
        server.cleanup()
    assert down.failures > 0 and down.spooled_bytes_pending > 0 and down.backlog
    assert up.inserted == 3000 and not up.backlog
    assert len(seen) == 3000 and set(seen.values()) == {1}
    assert (tmp_path / "cdr.spool").stat().st_size == 0


CHILD = textwrap.dedent("""
    import os, sys, trio
    sys.path.insert(0, {root!r})
    from adapters.postgres.bridge import open_postgres
    from adapters.postgres.cdr import open_cdr_writer, PAUSE_ENV
    from tests.integration.test_postgres_faults import cdr

    async def main():
        async with open_postgres({dsn!r}) as pg:
            async with open_cdr_writer(pg, {spool!r}, batch=5000) as w:
                for i in range(1000):
                    w.write(cdr(i))
                assert await w.wait_settled(20)
                os.environ[PAUSE_ENV] = {pause!r}       # arm the hook: stop after the next fsync
                for i in range(500, 1500):              # 500 already committed, 500 new
                    w.write(cdr(i))
                await trio.sleep(3600)

    trio.run(main)
""")


def test_writer_killed_between_spool_fsync_and_copy_loses_nothing_duplicates_nothing(tmp_path):
    server = _server()
    dsn = server.start()
    spool = tmp_path / "cdr.spool"
    pause = tmp_path / "paused"
    try:
        trio.run(_migrate, dsn)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        script = CHILD.format(root=root, dsn=dsn, spool=str(spool), pause=str(pause))
        env = {k: v for k, v in os.environ.items() if k != PAUSE_ENV}
        child = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=root)
        deadline = time.monotonic() + 60
        while not pause.exists():
            assert child.poll() is None, "the writer died before reaching the hook"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        spooled = spool.read_bytes().count(b"\n")
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert spooled == 1000  # the batch was fsynced, not committed

        async def replay():
            async with open_postgres(dsn) as pg:
                before = await counts(pg)
                async with open_cdr_writer(pg, spool) as w:   # replays the spool at start
                    assert await w.wait_settled(20)
                    stats = w.statistics()
                return before, stats, await counts(pg)

        before, stats, after = trio.run(replay)
    finally:
        server.cleanup()
    assert len(before) == 1000                          # phase 1 committed, phase 2 not
    assert stats.inserted == 500 and stats.duplicates == 500
    assert len(after) == 1500 and set(after.values()) == {1}
    assert spool.stat().st_size == 0


async def _migrate(dsn):
    async with open_postgres(dsn) as pg:
        await pg.run(apply_migrations)
