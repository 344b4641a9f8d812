"""The one place where trio meets asyncpg.

Rules
1. asyncpg is an asyncio library; the engine runs on trio. ``open_postgres`` runs a trio-asyncio
   loop (or reuses the one already open) and an asyncpg pool on it. Everything crosses the bridge
   through ``Postgres.run(fn, *args)``: ``fn(conn, *args)`` is an asyncio coroutine function run on
   a pooled connection. Callers cross once per *batch* or per admin request, never per message.
2. Losing the server is not an exception type callers need to know: every connection-level
   failure (refused, reset, admin shutdown, too many clients, timeout) becomes ``Unavailable``.
   SQL errors (constraint violations, syntax) pass through as asyncpg's own types.
3. The pool is created with ``min_size=0``, so opening it never blocks on the server; a dead
   server shows up as ``Unavailable`` at the first use and the pool replaces broken connections.
4. ``wait_ready`` is how a process starts against a server that is not up yet: retry with
   exponential backoff (capped) and one clear log line per attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import trio
import trio_asyncio

from adapters.postgres.embedded import redact
from adapters.postgres.errors import Unavailable

__all__ = ["Postgres", "open_postgres", "CONNECTION_ERRORS", "is_connection_error"]

log = logging.getLogger("callengine.postgres")
T = TypeVar("T")

#: what "the server is gone" looks like from asyncpg
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,     # SQLSTATE class 08
    asyncpg.exceptions.CannotConnectNowError,       # 57P03 starting up / shutting down
    asyncpg.exceptions.AdminShutdownError,          # 57P01
    asyncpg.exceptions.CrashShutdownError,          # 57P02
    asyncpg.exceptions.TooManyConnectionsError,     # 53300
    asyncpg.exceptions.InterfaceError,              # connection closed under us
    # "cannot switch to state N; another operation is in progress": a connection left mid-operation
    # by a server that died under it (seen in the e2e fault test); run() terminates it
    asyncpg.exceptions._base.InternalClientError,
)


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, CONNECTION_ERRORS)


class Postgres:
    """A pool of asyncpg connections reachable from trio. Build it with ``open_postgres``."""

    def __init__(self, dsn: str, pool: Any, loop: Any) -> None:
        self.dsn = dsn
        self.pool = pool
        self.loop = loop
        self.crossings = 0

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = 30.0) -> T:
        """Run the asyncio coroutine function ``fn(conn, *args)`` on a pooled connection."""

        async def on_conn() -> T:
            async with self.pool.acquire(timeout=timeout) as conn:
                try:
                    return await fn(conn, *args)
                except asyncpg.exceptions._base.InternalClientError:
                    conn.terminate()  # its protocol state is broken: the pool opens a new one
                    raise

        self.crossings += 1
        try:
            return await trio_asyncio.aio_as_trio(on_conn)()
        except CONNECTION_ERRORS as exc:
            raise Unavailable(f"postgres unavailable: {type(exc).__name__}: {exc}") from exc

    async def aio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run any asyncio coroutine function (no connection)."""
        return await trio_asyncio.aio_as_trio(fn)(*args)

    async def ping(self) -> None:
        async def one(conn: Any) -> None:
            await conn.fetchval("SELECT 1")

        await self.run(one, timeout=5.0)

    async def wait_ready(self, *, first_delay: float = 0.25, max_delay: float = 5.0,
                         attempts: int | None = None) -> None:
        """Block until the server answers. Logs each failed attempt and the recovery."""
        delay = first_delay
        n = 0
        while True:
            n += 1
            try:
                await self.ping()
            except Unavailable as exc:
                if attempts is not None and n >= attempts:
                    raise
                log.warning("postgres at %s is not reachable (%s); retrying in %.2f s (attempt %d)",
                            redact(self.dsn), exc.__cause__ or exc, delay, n)
                await trio.sleep(delay)
                delay = min(max_delay, delay * 2)
                continue
            if n > 1:
                log.warning("postgres at %s is reachable again after %d attempts", redact(self.dsn), n)
            return


def _log_orphaned_error(loop: Any, context: dict[str, Any]) -> None:
    log.warning("postgres: asyncio error outside any request (ignored): %s %r",
                context.get("message", ""), context.get("exception"))


@asynccontextmanager
async def open_postgres(dsn: str, *, max_size: int = 4, command_timeout: float = 60.0,
                        setup: Callable[[Any], Awaitable[None]] | None = None) -> AsyncIterator[Postgres]:
    """A ``Postgres`` for the block. Opens a trio-asyncio loop unless one is already running."""
    loop = trio_asyncio.current_loop.get()
    if loop is None:
        async with trio_asyncio.open_loop() as loop:
            # trio-asyncio's default handler re-raises any orphaned asyncio error into the loop's
            # nursery, so a "Future exception was never retrieved" from a connection that died
            # with the server (outage) would tear the whole store down: log it instead
            loop.set_exception_handler(_log_orphaned_error)
            async with _pool(dsn, loop, max_size, command_timeout, setup) as pg:
                yield pg
    else:
        async with _pool(dsn, loop, max_size, command_timeout, setup) as pg:
            yield pg


@asynccontextmanager
async def _pool(dsn: str, loop: Any, max_size: int, command_timeout: float,
                setup: Callable[[Any], Awaitable[None]] | None) -> AsyncIterator[Postgres]:
    async def create() -> Any:
        return await asyncpg.create_pool(dsn, min_size=0, max_size=max_size,
                                         command_timeout=command_timeout, init=setup)

    pool = await trio_asyncio.aio_as_trio(create)()
    try:
        yield Postgres(dsn, pool, loop)
    finally:
        with trio.CancelScope(shield=True):
            async def close() -> None:
                try:
                    await asyncio.wait_for(pool.close(), 5.0)
                except BaseException:  # noqa: BLE001 - a dead server must not block shutdown
                    pool.terminate()

            await trio_asyncio.aio_as_trio(close)()
