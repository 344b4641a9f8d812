"""``callengine run`` (``open_engine``) against the FreeSWITCH emulator over real ESL, embedded
PostgreSQL and NATS: the scaffold the run tests share (state dir, no external database, the
emulator with its phones, the tenant row, the links up).

    def test_x(monkeypatch):
        async def body(engine, emu): ...
        run_engine(monkeypatch, body, in_process=True, phones=("1001",))
"""

from __future__ import annotations

import pathlib
import tempfile
import warnings
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

SECRET = "s" * 32


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def run_engine(monkeypatch: Any, body: Callable[[Any, Any], Awaitable[None]], *, in_process: bool = True,
               phones: Iterable[str] = (), tenant: str = "default", shards: int = 2,
               emulator: dict[str, Any] | None = None, **options: Any) -> None:
    """Run ``body(engine, emu)`` inside a running engine (in process, or on ``shards`` Ray shard
    hosts) whose ESL link to the emulator is up and whose PostgreSQL has ``tenant``. ``emulator``:
    more ``FreeSwitchEmulator`` settings; ``options``: more ``RunOptions``."""
    from adapters.freeswitch.config import EslNodeConfig
    from adapters.postgres.config import Tenant
    from adapters.postgres.errors import AlreadyExists
    from engine.run import EpochClock, RunOptions, open_engine
    from sim.freeswitch import FreeSwitchEmulator

    state = pathlib.Path(tempfile.mkdtemp(prefix="callengine-run-test-"))
    monkeypatch.setenv("CALLENGINE_STATE_DIR", str(state))
    monkeypatch.delenv("CALLENGINE_PG_DSN", raising=False)

    async def main() -> None:
        emu = FreeSwitchEmulator(**{"heartbeat": 1.0, "answer_delay": 0.01, "ring_delay": 0.002, **(emulator or {})})
        async with trio.open_nursery() as outer:
            port = await outer.start(emu.run)
            for phone in phones:
                emu.register_phone(phone)
            run_options = RunOptions(**{
                "secret": SECRET, "state_dir": str(state), "in_process": in_process, "node_name": "t",
                "shards": None if in_process else shards, "esl_nodes": [EslNodeConfig(name="fs1", port=port)],
                "esl_heartbeat_s": 1.0, "webhook_drain_s": 0.2, **options})
            async with open_engine(run_options) as engine:
                try:
                    await engine.store.create(Tenant(tenant=tenant))
                except AlreadyExists:
                    pass
                with trio.fail_after(15):
                    await engine.links.wait_all_up()
                await body(engine, emu)
            outer.cancel_scope.cancel()

    trio.run(main, clock=EpochClock())


def run_engine_plainly(monkeypatch: Any, body: Callable[[Any, Any], Awaitable[None]], **kw: Any) -> None:
    """``run_engine``, with a failure of ``body`` (an assertion and its message) raised as itself
    after the engine stopped, not wrapped in the nurseries' exception groups."""
    failed: list[Exception] = []

    async def guarded(engine: Any, emu: Any) -> None:
        try:
            await body(engine, emu)
        except Exception as exc:  # noqa: BLE001 - raised again below, as itself
            failed.append(exc)

    run_engine(monkeypatch, guarded, **kw)
    if failed:
        raise failed[0]
