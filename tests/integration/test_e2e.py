"""End to end: the demo (emulator -> ESL -> node -> API/WebSocket agent desktops, embedded NATS and
PostgreSQL) for a short bounded run; every call the emulator created has exactly one CDR in
PostgreSQL and its CTI events on NATS (JetStream), and no agent is stuck. Then the same with faults
(ESL drop, PostgreSQL stopped 10 s; NATS restart and shard kill are not implemented yet)."""

from __future__ import annotations

import pathlib
import shutil
import tempfile

import pytest
import trio

from adapters.postgres.embedded import EmbeddedPostgres
from engine.demo import run_demo, summary
from engine.run import EpochClock


def _run(**kw: object) -> object:
    state = tempfile.mkdtemp(prefix="callengine-e2e-")  # not pytest's 0700 tmp_path: pgserver runs as its own user
    lines: list[str] = []
    try:
        result = trio.run(lambda: run_demo(state_dir=state, print_fn=lines.append, **kw), clock=EpochClock())
    finally:
        # the demo leaves its embedded PostgreSQL running for `callengine report`; a test must not
        EmbeddedPostgres(pathlib.Path(state) / "pg").stop()
        shutil.rmtree(state, ignore_errors=True)
    print("\n".join(lines[-5:]))
    print(summary(result))
    return result


@pytest.mark.slow
def test_demo_every_call_has_one_cdr_and_nats_events_and_no_agent_stuck() -> None:
    r = _run(seconds=15.0, rate=2.0, agents=8, seed=7)
    assert r.placed >= 15, r.placed
    assert len(r.emulator_calls) == r.placed
    assert r.calls_with_one_cdr == r.placed, (r.calls_without_cdr, r.calls_with_duplicate_cdrs)
    assert not r.calls_without_nats_events
    assert not r.agents_stuck
    assert r.bridged > 0 and r.dispositions.get("answered", 0) > 0
    assert r.ok


@pytest.mark.slow
def test_demo_survives_esl_drop_and_postgres_outage() -> None:
    r = _run(seconds=25.0, rate=2.0, agents=8, seed=11, faults=True)
    assert any(f.startswith("esl drop") for f in r.faults), r.faults
    assert any(f.startswith("postgres stopped 10 s") for f in r.faults), r.faults
    assert r.placed >= 25, r.placed
    assert r.calls_with_one_cdr == r.placed, (r.calls_without_cdr, r.calls_with_duplicate_cdrs)
    assert not r.calls_without_nats_events, r.calls_without_nats_events[:5]
    assert not r.agents_stuck
