"""PostgreSQL adapter: configuration, CDRs, queue/agent events and statistics, through asyncpg.

Modules
- ``embedded``  where the server is (``CALLENGINE_PG_DSN`` or the embedded pgserver in <state>/pg)
- ``bridge``    trio <-> asyncpg (trio-asyncio loop, pool, ``Unavailable``, start-up retry)
- ``migrate``   versioned SQL migrations (``migrations/*.sql``), applied idempotently at start
- ``config``    typed configuration rows, ``ConfigStore`` (in memory / PostgreSQL), LISTEN/NOTIFY
- ``cdr``       ``CdrWriter``: the ``CdrStore`` port, spool + batched COPY, idempotent by call id
- ``spool``     the append-only, fsync-per-batch spool file
- ``events``    ``EventSink``: the ``CtiPort`` feeding ``queue_events`` and ``agent_state_log``
- ``stats``     queue KPIs and agent performance in SQL
- ``cli``       ``callengine report`` and ``callengine db``

``open_database()`` is the usual start: resolve the DSN (starting the embedded server if none is
configured), wait for the server with backoff, apply the migrations, yield a ``Postgres``.
See docs/postgres.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

__all__ = ["open_database"]


@asynccontextmanager
async def open_database(dsn: str | None = None, *, migrate: bool = True, **pool_options: Any) -> AsyncIterator[Any]:
    import trio

    from adapters.postgres.bridge import open_postgres
    from adapters.postgres.embedded import resolve_dsn
    from adapters.postgres.migrate import apply_migrations

    if dsn is None:
        dsn = await trio.to_thread.run_sync(resolve_dsn)
    async with open_postgres(dsn, **pool_options) as pg:
        await pg.wait_ready()
        if migrate:
            await pg.run(apply_migrations)
        yield pg
