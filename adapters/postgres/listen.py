"""LISTEN on one PostgreSQL channel for as long as the task runs: the connection, the hand-over of
notifications into trio, and reconnection with backoff, shared by the configuration watcher
(config.py) and the webhook configuration watcher (adapters/webhooks/pgconfig.py).

Rules
1. One dedicated connection (LISTEN needs one). asyncpg calls ``on_notify`` on the asyncio side;
   each payload is put in a trio channel without waiting. A full channel calls ``on_overflow``
   (the watcher decides: resync, or nothing when any reload reads everything anyway).
2. A lost connection puts ``None`` in the channel; ``consume`` returns when it sees it (or
   whenever it wants a fresh connection), and the loop connects again after a backoff that
   doubles up to ``max_backoff_s``.
3. ``on_listening(reconnected)`` runs once LISTEN is in place, ``reconnected`` False the first time:
   notifications sent while disconnected are gone, so a watcher reloads then. ``on_closed`` runs
   whenever the connection is gone.
4. Only connection problems are retried (``is_connection_error``, ``Unavailable``); anything else
   is a bug and propagates. ``task_status.started()`` is called after the first attempt, whether it
   connected or not, so a node starts while PostgreSQL is down.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["listen_forever"]

log = logging.getLogger("callengine.postgres")


async def listen_forever(dsn: str, channel: str, *, name: str,
                         consume: Callable[[trio.MemoryReceiveChannel[str | None]], Awaitable[None]],
                         on_listening: Callable[[bool], Awaitable[None]],
                         on_overflow: Callable[[], None] | None = None,
                         on_closed: Callable[[], None] | None = None,
                         capacity: int = 1000, max_backoff_s: float = 5.0,
                         logger: logging.Logger = log,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    import asyncpg
    import trio_asyncio

    from adapters.postgres.bridge import is_connection_error
    from adapters.postgres.errors import Unavailable

    send, recv = trio.open_memory_channel[str | None](capacity)
    delay = 0.1
    started = False
    first = True
    while True:
        conn = None
        try:
            conn = await trio_asyncio.aio_as_trio(asyncpg.connect)(dsn)

            def on_notify(_c: Any, _pid: int, _channel: str, payload: str) -> None:
                try:
                    send.send_nowait(payload)
                except trio.WouldBlock:
                    if on_overflow is not None:
                        on_overflow()

            def on_lost(_c: Any) -> None:
                try:
                    send.send_nowait(None)
                except trio.WouldBlock:
                    pass

            await trio_asyncio.aio_as_trio(conn.add_listener)(channel, on_notify)
            conn.add_termination_listener(on_lost)
            await on_listening(not first)
            first = False
            delay = 0.1
            if not started:
                task_status.started()
                started = True
            await consume(recv)
        except Exception as exc:  # noqa: BLE001 - connection problems: retry (Rule 4)
            if not is_connection_error(exc) and not isinstance(exc, Unavailable):
                raise
            logger.warning("%s: postgres unavailable (%s); retrying in %.2f s", name, exc, delay)
        finally:
            if on_closed is not None:
                on_closed()
            if conn is not None:
                with trio.CancelScope(shield=True):
                    try:
                        await trio_asyncio.aio_as_trio(conn.close)(timeout=1)
                    except Exception:  # noqa: BLE001
                        conn.terminate()
        if not started:
            task_status.started()
            started = True
        await trio.sleep(delay)
        delay = min(max_backoff_s, delay * 2)
