"""Dead letters: events a webhook did not take, kept so that nobody loses them silently.

Rules
1. A dead letter is written when a webhook's queue is full (``queue_full``), when a receiver
   refused an event for good (a 4xx other than 429: ``rejected``), when the last attempt failed
   (``exhausted``), or when the dispatcher shut down with the event still queued (``shutdown``).
2. ``DeadLetterStore`` is the port (async: it runs on the dispatcher's own pump task, never on
   the call path). ``MemoryDeadLetterStore`` is for tests and a node without PostgreSQL;
   ``PgDeadLetterStore`` writes ``webhook_dead_letters`` (migration 0004).
3. Idempotent: (tenant, webhook_id, delivery_id) is unique, so a batch retried after a lost
   commit inserts each letter once.
4. The event is stored as its JSON text, exactly as it would have been sent without a template
   (``text``, not ``jsonb``: jsonb refuses ``\\u0000``, which a caller id could carry).
"""

from __future__ import annotations

import datetime as dt
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


class DeadLetterStore(Protocol):
    async def add(self, letters: Sequence[DeadLetter]) -> None: ...

    async def list(self, tenant: str, webhook_id: str | None = None, limit: int = 100) -> list[DeadLetter]: ...


class MemoryDeadLetterStore:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []
        self._keys: set[tuple[str, str, str]] = set()

    async def add(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            key = (letter.tenant, letter.webhook_id, letter.delivery_id)
            if key not in self._keys:
                self._keys.add(key)
                self.letters.append(letter)

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
ON CONFLICT (tenant, webhook_id, delivery_id) DO NOTHING
"""

_SELECT = """
SELECT tenant, webhook_id, delivery_id, event_type, event, reason, attempts, last_status, last_error,
       extract(epoch FROM failed_at)::float8 AS at
FROM webhook_dead_letters
WHERE tenant = $1 AND ($2::text IS NULL OR webhook_id = $2)
ORDER BY failed_at DESC, id DESC
LIMIT $3
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
