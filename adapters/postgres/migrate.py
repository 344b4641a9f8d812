"""Versioned SQL migrations, applied at start, idempotently.

Rules
1. A migration is ``migrations/NNNN_name.sql``, shipped as package data and read through
   ``importlib.resources``. Files are applied in version order; a file once released is never
   edited (add a new one).
2. Each file runs in its own transaction together with the row that records it in
   ``schema_migrations``; a failing file leaves nothing behind.
3. Concurrent starters (several nodes against one server) serialise on an advisory lock, so a
   migration runs exactly once; the others find it recorded and skip it.
4. A recorded migration whose checksum differs from the shipped file is refused loudly: someone
   edited history.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from typing import Any

import msgspec

__all__ = ["Migration", "MigrationError", "migrations", "apply_migrations", "LOCK_ID"]

#: pg_advisory_xact_lock key ("callengine" folded to 63 bits)
LOCK_ID = 0x63616C6C656E67

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(Exception):
    pass


def migrations() -> list[Migration]:
    """The shipped migrations, in order."""
    out = []
    for entry in importlib.resources.files("adapters.postgres").joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version: {versions}")
    return out


async def apply_migrations(conn: Any, wanted: list[Migration] | None = None) -> list[int]:
    """(asyncio side) Apply what is missing; return the versions applied now."""
    wanted = migrations() if wanted is None else wanted
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())")
    for mig in wanted:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)
            row = await conn.fetchrow("SELECT checksum FROM schema_migrations WHERE version = $1", mig.version)
            if row is not None:
                if row["checksum"] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.version:04d}_{mig.name} was applied with another checksum "
                        f"({row['checksum'][:12]} != {mig.checksum[:12]}): shipped migrations must not be edited")
                continue
            await conn.execute(mig.sql)
            await conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                               mig.version, mig.name, mig.checksum)
            applied_now.append(mig.version)
    return applied_now
