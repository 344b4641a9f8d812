"""Dead letters: events a webhook did not take, kept so that nobody loses them silently.

Rules
1. A dead letter is written when a webhook's queue is full (``queue_full``), when a receiver
   refused an event for good (a 4xx other than 429: ``rejected``), when the last attempt failed
   (``exhausted``), or when the dispatcher shut down with the event still queued (``shutdown``).
2. ``DeadLetterStore`` is the port (async: it runs on the dispatcher's own pump task, never on
   the call path). ``MemoryDeadLetterStore`` is for tests and a node without PostgreSQL;
   ``PgDeadLetterStore`` writes ``webhook_dead_letters`` (migration 0004).
3. Idempotent: (tenant, webhook_id, delivery_id) is unique, so a batch retried after a lost
   commit inserts each letter once. A letter being redriven (``take``) that fails again is the
   same delivery: its new failure updates the row and makes it dead again (never lost).
5. Redrive (the Admin API's ``Webhooks/Redrive``): ``take`` marks and returns letters in one
   step, so concurrent redrives send each once; ``release`` puts back the ones the dispatcher
   could not queue (webhook gone, queue full).
4. The event is stored as its JSON text, exactly as it would have been sent without a template
   (``text``, not ``jsonb``: jsonb refuses ``\\u0000``, which a caller id could carry).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

if TYPE_CHECKING:
    from adapters.postgres.bridge import Postgres

__all__ = ["DeadLetter", "DeadLetterStore", "MemoryDeadLetterStore", "PgDeadLetterStore", "Reason"]

Reason = Literal["queue_full", "rejected", "exhausted", "shutdown"]


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    webhook_id: str
    #: stable per (webhook, event): the ``Callengine-Delivery`` header of every attempt
    delivery_id: str
    event_type: str
    #: the event's JSON text
    event: str
    reason: Reason
    attempts: int
    #: HTTP status of the last attempt, None when there was no response
    last_status: int | None = None
    #: the last error (exception, or the start of the response body), "" when none
    last_error: str = ""
    #: wall-clock seconds when the letter was written
    at: float = 0.0
    #: the store's id (0 before it is stored)
    id: int = 0
    #: wall-clock seconds of the last redrive while it is under way (None: dead, not redriven)
    redriven_at: float | None = None
    redrives: int = 0


class DeadLetterStore(Protocol):
    async def add(self, letters: Sequence[DeadLetter]) -> None: ...

    async def list(self, tenant: str, webhook_id: str | None = None, limit: int = 100) -> list[DeadLetter]: ...

    async def take(self, tenant: str, ids: Sequence[int] = (), webhook_id: str | None = None,
                   limit: int = 100) -> list[DeadLetter]: ...

    async def release(self, tenant: str, ids: Sequence[int]) -> None: ...


class MemoryDeadLetterStore:
    def __init__(self, clock: Any = time.time) -> None:
        self.letters: list[DeadLetter] = []
        self._keys: dict[tuple[str, str, str], int] = {}  # key -> index in letters
        self.clock = clock

    async def add(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            key = (letter.tenant, letter.webhook_id, letter.delivery_id)
            i = self._keys.get(key)
            if i is None:
                self._keys[key] = len(self.letters)
                self.letters.append(msgspec.structs.replace(letter, id=len(self.letters) + 1))
            elif self.letters[i].redriven_at is not None:  # a redrive that failed again
                old = self.letters[i]
                self.letters[i] = msgspec.structs.replace(letter, id=old.id, redrives=old.redrives,
                                                          redriven_at=None)

    async def take(self, tenant: str, ids: Sequence[int] = (), webhook_id: str | None = None,
                   limit: int = 100) -> list[DeadLetter]:
        out = []
        for i, x in enumerate(self.letters):
            if (x.tenant == tenant and x.redriven_at is None and (not ids or x.id in ids)
                    and (webhook_id is None or x.webhook_id == webhook_id) and len(out) < limit):
                self.letters[i] = x = msgspec.structs.replace(x, redriven_at=self.clock(), redrives=x.redrives + 1)
                out.append(x)
        return out

    async def release(self, tenant: str, ids: Sequence[int]) -> None:
        for i, x in enumerate(self.letters):
            if x.tenant == tenant and x.id in ids and x.redriven_at is not None:
                self.letters[i] = msgspec.structs.replace(x, redriven_at=None, redrives=x.redrives - 1)

    async def list(self, tenant: str, webhook_id: str | None = None, limit: int = 100) -> list[DeadLetter]:
        out = [x for x in self.letters
               if x.tenant == tenant and (webhook_id is None or x.webhook_id == webhook_id)]
        return out[-limit:]


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL or lone surrogates (see adapters/postgres/cdr.py rule 8)
    return text.replace("\0", "\ufffd").encode("utf-8", "replace").decode("utf-8")


_INSERT = """
INSERT INTO webhook_dead_letters
    (tenant, webhook_id, delivery_id, event_type, event, reason, attempts, last_status, last_error, failed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (tenant, webhook_id, delivery_id) DO UPDATE
    SET reason = EXCLUDED.reason, attempts = EXCLUDED.attempts, last_status = EXCLUDED.last_status,
        last_error = EXCLUDED.last_error, failed_at = EXCLUDED.failed_at, redriven_at = NULL,
        recorded_at = now()
    WHERE webhook_dead_letters.redriven_at IS NOT NULL
"""

_SELECT = """
SELECT id, tenant, webhook_id, delivery_id, event_type, event, reason, attempts, last_status, last_error,
       extract(epoch FROM failed_at)::float8 AS at, extract(epoch FROM redriven_at)::float8 AS redriven_at,
       redrives
FROM webhook_dead_letters
WHERE tenant = $1 AND ($2::text IS NULL OR webhook_id = $2)
ORDER BY failed_at DESC, id DESC
LIMIT $3
"""

# one statement: concurrent redrives each get disjoint letters (SKIP LOCKED), each letter once
_TAKE = """
UPDATE webhook_dead_letters SET redriven_at = now(), redrives = redrives + 1
WHERE id IN (
    SELECT id FROM webhook_dead_letters
    WHERE tenant = $1 AND redriven_at IS NULL AND (cardinality($2::bigint[]) = 0 OR id = ANY($2))
      AND ($3::text IS NULL OR webhook_id = $3)
    ORDER BY failed_at, id
    LIMIT $4
    FOR UPDATE SKIP LOCKED)
RETURNING id, tenant, webhook_id, delivery_id, event_type, event, reason, attempts, last_status, last_error,
          extract(epoch FROM failed_at)::float8 AS at, extract(epoch FROM redriven_at)::float8 AS redriven_at,
          redrives
"""

_RELEASE = """
UPDATE webhook_dead_letters SET redriven_at = NULL, redrives = redrives - 1
WHERE tenant = $1 AND id = ANY($2::bigint[]) AND redriven_at IS NOT NULL
"""


class PgDeadLetterStore:
    """Dead letters in PostgreSQL (``webhook_dead_letters``); one transaction per batch."""

    def __init__(self, pg: Postgres) -> None:
        self.pg = pg

    async def add(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        rows = [(_clean(x.tenant), _clean(x.webhook_id), _clean(x.delivery_id), _clean(x.event_type),
                 _clean(x.event), x.reason, x.attempts, x.last_status, _clean(x.last_error),
                 dt.datetime.fromtimestamp(x.at, dt.UTC)) for x in letters]

        async def go(conn: Any) -> None:
            async with conn.transaction():
                await conn.executemany(_INSERT, rows)

        await self.pg.run(go)

    async def list(self, tenant: str, webhook_id: str | None = None, limit: int = 100) -> list[DeadLetter]:
        async def go(conn: Any) -> list[Any]:
            return list(await conn.fetch(_SELECT, tenant, webhook_id, limit))

        rows = await self.pg.run(go)
        return [DeadLetter(**dict(r)) for r in reversed(rows)]

    async def take(self, tenant: str, ids: Sequence[int] = (), webhook_id: str | None = None,
                   limit: int = 100) -> list[DeadLetter]:
        async def go(conn: Any) -> list[Any]:
            return list(await conn.fetch(_TAKE, tenant, list(ids), webhook_id, limit))

        rows = await self.pg.run(go)
        return sorted((DeadLetter(**dict(r)) for r in rows), key=lambda x: (x.at, x.id))

    async def release(self, tenant: str, ids: Sequence[int]) -> None:
        if not ids:
            return

        async def go(conn: Any) -> None:
            await conn.execute(_RELEASE, tenant, list(ids))

        await self.pg.run(go)
