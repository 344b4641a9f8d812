"""adapters/postgres/listen.py on a real embedded PostgreSQL: notifications reach ``consume``, a
killed LISTEN connection is replaced (``on_listening(True)``, ``on_closed``), and a full channel
calls ``on_overflow``."""

from __future__ import annotations

import subprocess

import trio
import trio_asyncio

from adapters.postgres.listen import listen_forever
from tests.support.pg import fresh_dsn


def _psql(dsn: str, sql: str) -> None:
    from pgserver._commands import POSTGRES_BIN_PATH

    subprocess.run([str(POSTGRES_BIN_PATH / "psql"), dsn, "-q", "-c", sql], check=True, capture_output=True)


def test_listen_receives_reconnects_and_reports_overflow() -> None:
    dsn = fresh_dsn("listen")
    seen: list[str] = []
    listening: list[bool] = []
    closed: list[int] = []
    overflows: list[int] = []

    async def main() -> None:
        async def consume(recv: trio.MemoryReceiveChannel[str | None]) -> None:
            async for payload in recv:
                if payload is None:
                    return
                seen.append(payload)

        async def on_listening(reconnected: bool) -> None:
            listening.append(reconnected)

        async def until(cond, timeout: float = 15.0) -> None:
            with trio.fail_after(timeout):
                while not cond():
                    await trio.sleep(0.02)

        async with trio_asyncio.open_loop(), trio.open_nursery() as n:
            await n.start(lambda task_status: listen_forever(
                dsn, "chan", name="test watcher", consume=consume, on_listening=on_listening,
                on_closed=lambda: closed.append(1), on_overflow=lambda: overflows.append(1), capacity=1000,
                max_backoff_s=0.2, task_status=task_status))
            await trio.to_thread.run_sync(_psql, dsn, "NOTIFY chan, 'one'")
            await until(lambda: seen == ["one"])
            assert listening == [False]
            # the LISTEN connection is killed: it is replaced, and the new one hears what follows
            await trio.to_thread.run_sync(_psql, dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                                      "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()")
            await until(lambda: listening == [False, True])
            assert closed, "on_closed runs when the connection is gone"
            await trio.to_thread.run_sync(_psql, dsn, "NOTIFY chan, 'two'")
            await until(lambda: seen == ["one", "two"])
            n.cancel_scope.cancel()

    trio.run(main)
    assert overflows == []  # capacity 1000: never full here


def test_a_full_channel_calls_on_overflow() -> None:
    dsn = fresh_dsn("listen")
    seen: list[str | None] = []
    overflows: list[int] = []

    async def main() -> None:
        gate = trio.Event()

        async def consume(recv: trio.MemoryReceiveChannel[str | None]) -> None:
            await gate.wait()  # a watcher busy with a reload
            async for payload in recv:
                seen.append(payload)
                if payload is None:
                    return

        async def on_listening(reconnected: bool) -> None:
            pass

        async with trio_asyncio.open_loop(), trio.open_nursery() as n:
            await n.start(lambda task_status: listen_forever(
                dsn, "chan", name="test watcher", consume=consume, on_listening=on_listening,
                on_overflow=lambda: overflows.append(1), capacity=1, task_status=task_status))
            await trio.to_thread.run_sync(_psql, dsn, "NOTIFY chan, 'a'; NOTIFY chan, 'b'; NOTIFY chan, 'c'")
            with trio.fail_after(15):
                while len(overflows) < 2:
                    await trio.sleep(0.02)
            gate.set()
            with trio.fail_after(15):
                while not seen:
                    await trio.sleep(0.02)
            n.cancel_scope.cancel()

    trio.run(main)
    assert overflows == [1, 1] and seen[0] == "a"
