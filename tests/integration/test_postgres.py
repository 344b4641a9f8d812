"""The PostgreSQL adapter against a real server (pgserver, unix socket): migrations, configuration
round trips and live changes, CDR writing, hostile strings, statistics."""

from __future__ import annotations

import datetime as dt
import itertools
import warnings

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.postgres.bridge import open_postgres
from adapters.postgres.cdr import open_cdr_writer
from adapters.postgres.config import (
    AgentDef,
    AgentSkill,
    Did,
    Extension,
    Flow,
    NodeConfig,
    PgConfigStore,
    QueueDef,
    Skill,
    Tenant,
    open_config_watcher,
)
from adapters.postgres.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from adapters.postgres.events import open_event_sink
from adapters.postgres.migrate import apply_migrations, migrations
from adapters.postgres.stats import agent_performance, queue_kpis
from engine.messages import Cdr, CtiEvent
from tests.support.pg import fresh_dsn

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

T0 = 1_700_000_000.0  # 2023-11-14


def cdr(i: int, **kw) -> Cdr:
    base = dict(call_id=f"c{i}", tenant="acme", direction="inbound", caller_id="+441234", destination="100",
                created_at=T0 + i, answered_at=T0 + i + 3, ended_at=T0 + i + 60, disposition="answered",
                hangup_cause="NORMAL_CLEARING", queue_id="q1", agent_id="a1", wait_s=3.0, talk_s=57.0)
    base.update(kw)
    return Cdr(**base)


def run_pg(fn, dsn=None):
    """trio.run ``fn(pg)`` on a fresh, migrated database."""
    dsn = dsn or fresh_dsn()

    async def main():
        async with open_postgres(dsn) as pg:
            await pg.run(apply_migrations)
            return await fn(pg)

    return trio.run(main)


async def fetch(pg, sql, *args):
    async def go(conn):
        return await conn.fetch(sql, *args)

    return await pg.run(go)


# ---- migrations ----------------------------------------------------------------------------------


def test_migrations_from_empty_then_rerun_is_a_no_op():
    async def body(pg):
        again = await pg.run(apply_migrations)
        rows = await fetch(pg, "SELECT version FROM schema_migrations ORDER BY version")
        tables = {r["tablename"] for r in await fetch(pg, "SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        return again, [r["version"] for r in rows], tables

    dsn = fresh_dsn()

    async def first(pg):  # applied by run_pg; check what it applied
        return [r["version"] for r in await fetch(pg, "SELECT version FROM schema_migrations")]

    applied = run_pg(first, dsn)
    assert applied == [m.version for m in migrations()]
    again, versions, tables = run_pg(body, dsn)
    assert again == [] and versions == applied
    for table in ("tenants", "users", "roles", "extensions", "dids", "trunks", "outbound_routes", "queues",
                  "agents", "skills", "agent_skills", "queue_members", "flows", "time_conditions", "holidays",
                  "cdrs", "queue_events", "agent_state_log", "audit_log"):
        assert table in tables


def test_struct_fields_match_table_columns():
    from adapters.postgres.config import ENTITIES

    async def body(pg):
        out = {}
        for kind in ENTITIES:
            rows = await fetch(pg, "SELECT column_name FROM information_schema.columns WHERE table_name = $1",
                               kind.TABLE)
            out[kind] = {r["column_name"] for r in rows}
        return out

    columns = run_pg(body)
    for kind, cols in columns.items():
        assert set(kind.__struct_fields__) <= cols, kind


# ---- configuration -------------------------------------------------------------------------------

FLOW_DOC = {"id": "main", "start": "q", "nodes": {"q": {"type": "queue", "queue": "sales"}}}


async def seed(store):
    await store.create(Tenant(tenant="acme", name="Acme"))
    await store.create(Extension(tenant="acme", extension="1001", name="Alice"))
    await store.create(QueueDef(tenant="acme", queue_id="sales", strategy="round-robin", wrap_up_s=5))
    await store.create(AgentDef(tenant="acme", agent_id="a1", extension="1001"))
    await store.create(Skill(tenant="acme", skill="fr"))
    await store.create(AgentSkill(tenant="acme", agent_id="a1", skill="fr", level=80))
    await store.create(Did(tenant="acme", number="+3210000", destination="queue:sales"))
    await store.create(Flow(tenant="acme", flow_id="main", document=FLOW_DOC))


def test_config_round_trip_and_typed_errors():
    async def body(pg):
        store = PgConfigStore(pg)
        await seed(store)
        assert (await store.get(Extension, "acme", "1001")).name == "Alice"
        q = await store.get(QueueDef, "acme", "sales")
        assert q.to_config().strategy == "round-robin" and q.wrap_up_s == 5
        assert (await store.get(AgentSkill, "acme", "a1", "fr")).level == 80
        # update, put, flow versions
        await store.update(Extension(tenant="acme", extension="1001", name="Alice B"), actor="admin")
        assert (await store.get(Extension, "acme", "1001")).name == "Alice B"
        f2 = await store.put(Flow(tenant="acme", flow_id="main", document={**FLOW_DOC, "description": "v2"}))
        assert f2.version == 2 and (await store.get(Flow, "acme", "main")).version == 2
        assert [f.version for f in await store.flow_versions("acme", "main")] == [1, 2]
        # errors
        with pytest.raises(AlreadyExists):
            await store.create(Extension(tenant="acme", extension="1001"))
        with pytest.raises(NotFound):
            await store.get(Extension, "acme", "9999")
        with pytest.raises(NotFound):
            await store.update(Extension(tenant="acme", extension="9999"))
        with pytest.raises(FailedPrecondition):
            await store.create(Extension(tenant="nobody", extension="1"))
        with pytest.raises(InvalidArgument) as bad:
            await store.create(QueueDef(tenant="acme", queue_id="q2", strategy="random"))
        assert bad.value.row == "queues[acme/q2]" and bad.value.field == "strategy" and bad.value.code == "INVALID_ARGUMENT"
        with pytest.raises(InvalidArgument) as bad:
            await store.create(AgentSkill(tenant="acme", agent_id="a1", skill="fr", level=101))
        assert bad.value.field == "level"
        with pytest.raises(InvalidArgument) as bad:
            await store.create(Flow(tenant="acme", flow_id="f2", document={"id": "f2", "start": "x", "nodes": {}}))
        assert bad.value.field == "document"
        await store.delete(Extension, "acme", "1001", actor="admin")
        with pytest.raises(NotFound):
            await store.delete(Extension, "acme", "1001")
        audit = await fetch(pg, "SELECT actor, tbl, op FROM audit_log WHERE tbl = 'extensions' ORDER BY id")
        snap = await store.snapshot()
        return [tuple(r) for r in audit], snap

    audit, snap = run_pg(body)
    assert audit == [("", "extensions", "INSERT"), ("admin", "extensions", "UPDATE"), ("admin", "extensions", "DELETE")]
    assert snap.get(QueueDef, "acme", "sales") is not None and snap.get(Flow, "acme", "main").version == 2
    assert snap.rejected == []


def test_rows_that_fail_validation_at_load_are_refused_by_name():
    async def body(pg):
        store = PgConfigStore(pg)
        await seed(store)
        # someone edits the tables by hand, past the API's validation
        await fetch(pg, "UPDATE queues SET strategy = 'coin-toss' WHERE queue_id = 'sales'")
        await fetch(pg, "INSERT INTO extensions (tenant, extension) VALUES ('acme', 'abc')")
        return await store.snapshot()

    snap = run_pg(body)
    assert {(e.row, e.field) for e in snap.rejected} == {("queues[acme/sales]", "strategy"),
                                                        ("extensions[acme/abc]", "extension")}
    assert snap.get(QueueDef, "acme", "sales") is None
    assert snap.get(Extension, "acme", "1001") is not None and snap.get(AgentDef, "acme", "a1") is not None


def test_changes_reach_a_running_node_through_listen_notify():
    from engine.actors.node import open_node
    from engine.messages import ChannelCreated

    async def body(pg):
        store = PgConfigStore(pg)
        await seed(store)
        live = NodeConfig(await store.snapshot())
        store.subscribe(live.apply)
        async with open_node(router=live.router()) as node, open_config_watcher(store) as watcher:
            live.start(node)
            assert node.state_of("queue", "sales", "acme") is not None and node.state_of("agent", "a1", "acme") is not None
            await store.create(QueueDef(tenant="acme", queue_id="support"))
            await store.create(AgentDef(tenant="acme", agent_id="a2"))
            await store.put(Did(tenant="acme", number="+3210000", destination="queue:support"))
            await store.delete(Extension, "acme", "1001")
            with trio.fail_after(10):
                while live.snapshot.get(Extension, "acme", "1001") is not None or watcher.received < 4:
                    await trio.sleep(0.01)
            route = live.router()(ChannelCreated(call_id="x", at=0, destination="+3210000", tenant="acme"))
            return (node.state_of("queue", "support", "acme") is not None, node.state_of("agent", "a2", "acme") is not None, route)

    has_queue, has_agent, route = run_pg(body)
    assert has_queue and has_agent
    assert route.queue_id == "support"


# ---- CDRs ----------------------------------------------------------------------------------------


def test_cdrs_are_written_once_per_call_even_when_written_twice(tmp_path):
    async def body(pg):
        async with open_cdr_writer(pg, tmp_path / "cdr.spool", batch=100) as w:
            for i in range(1000):
                w.write(cdr(i))
            for i in range(500):
                w.write(cdr(i))  # a retried batch / a replayed spool
            assert await w.wait_settled(20)
            stats = w.statistics()
        rows = await fetch(pg, "SELECT call_id, count(*) AS n FROM cdrs GROUP BY call_id")
        one = await fetch(pg, "SELECT extract(epoch FROM started_at) AS s, talk_s, tableoid::regclass::text AS part"
                              " FROM cdrs WHERE call_id = 'c7'")
        return stats, rows, one[0]

    stats, rows, one = run_pg(body)
    assert len(rows) == 1000 and all(r["n"] == 1 for r in rows)
    assert stats.inserted == 1000 and stats.duplicates == 500
    assert float(one["s"]) == pytest.approx(T0 + 7) and one["talk_s"] == 57.0 and one["part"] == "cdrs_2023_11"
    assert not (tmp_path / "cdr.spool").read_bytes()  # acknowledged: the spool is empty


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
HOSTILE = st.one_of(TEXT, st.sampled_from([
    "'; DROP TABLE cdrs; --", "\\.", "\\N", "a\tb\nc\r\\", '"quoted"', "\u202eevil", "😀" * 10, "$1", "%s",
    "x" * 5000, "NULL", "", " ", "\\x00", "{\"json\": 1}",
]))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(HOSTILE, min_size=7, max_size=7))
def test_hostile_strings_are_stored_literally(texts):
    call_id, tenant, caller_id, destination, cause, queue_id, node = texts
    sent = cdr(0, call_id=f"c{next(_SEQ)}-{call_id}", tenant=tenant, caller_id=caller_id, destination=destination,
               hangup_cause=cause, queue_id=queue_id, node=node)
    row = run_pg(lambda pg: _store_and_read(pg, sent), _hostile_dsn())
    assert (row["call_id"], row["tenant"], row["caller_id"], row["destination"], row["hangup_cause"],
            row["queue_id"], row["node"]) == (sent.call_id, tenant, caller_id, destination, cause, queue_id, node)


_HOSTILE_DB: list[str] = []
_SEQ = itertools.count()


def _hostile_dsn() -> str:
    if not _HOSTILE_DB:
        _HOSTILE_DB.append(fresh_dsn("hostile"))
    return _HOSTILE_DB[0]


async def _store_and_read(pg, sent: Cdr):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        async with open_cdr_writer(pg, f"{d}/s") as w:
            w.write(sent)
            assert await w.wait_settled(10)
    rows = await fetch(pg, "SELECT * FROM cdrs WHERE call_id = $1", sent.call_id)
    assert len(rows) == 1
    return rows[0]


def test_hostile_strings_in_configuration_are_stored_literally_and_nul_is_refused():
    evil = "Robert'); DROP TABLE extensions;--\t\\N\n\u202e😀"

    async def body(pg):
        store = PgConfigStore(pg)
        await store.create(Tenant(tenant=evil, name=evil, settings={evil: evil}))
        await store.create(Extension(tenant=evil, extension="1", name=evil, caller_id=evil))
        got = await store.get(Extension, evil, "1")
        with pytest.raises(InvalidArgument) as bad:
            await store.create(Extension(tenant=evil, extension="2", name="a\x00b"))
        return got, bad.value, (await store.get(Tenant, evil)).settings

    got, bad, settings_ = run_pg(body)
    assert got.name == evil and got.caller_id == evil and settings_ == {evil: evil}
    assert bad.field == "name" and "NUL" in str(bad)


def test_nul_in_a_cdr_does_not_block_the_batch(tmp_path):
    async def body(pg):
        async with open_cdr_writer(pg, tmp_path / "s") as w:
            w.write(cdr(1, caller_id="a\x00b"))
            w.write(cdr(2))
            assert await w.wait_settled(10)
        return await fetch(pg, "SELECT call_id, caller_id FROM cdrs ORDER BY call_id")

    rows = run_pg(body)
    assert [(r["call_id"], r["caller_id"]) for r in rows] == [("c1", "a\ufffdb"), ("c2", "+441234")]


# ---- statistics ----------------------------------------------------------------------------------


def test_queue_kpis_and_agent_performance_follow_the_queue_machine_definitions():
    from engine.fsm import queue as Q
    from engine.messages import AgentStatus, CallerLeft, OfferAnswered, QueueCall

    # drive the real queue machine; its CTI events feed the sink; compare SQL with its own stats
    cfg = Q.QueueConfig(queue_id="q1", tenant="acme", sl_threshold_s=20, short_abandon_s=5)
    q = Q.new_queue(cfg)
    events: list[CtiEvent] = []

    def step(msg):
        nonlocal q
        q, effects = Q.step(q, msg)
        events.extend(e.event for e in effects if type(e).__name__ == "PublishCti")

    step(AgentStatus(queue_id="q1", agent_id="a1", at=T0, logged_in=True, available=False))
    step(QueueCall(queue_id="q1", call_id="c1", at=T0 + 1))
    step(QueueCall(queue_id="q1", call_id="c2", at=T0 + 2))
    step(QueueCall(queue_id="q1", call_id="c3", at=T0 + 3))
    step(QueueCall(queue_id="q1", call_id="c4", at=T0 + 4))
    step(CallerLeft(queue_id="q1", call_id="c3", at=T0 + 6))        # short abandon (3 s)
    step(OfferAnswered(at=T0 + 11, offer_id="x", call_id="c1", agent_id="a1", queue_id="q1"))   # 10 s
    step(CallerLeft(queue_id="q1", call_id="c4", at=T0 + 40))       # abandon (36 s)
    step(OfferAnswered(at=T0 + 52, offer_id="y", call_id="c2", agent_id="a1", queue_id="q1"))   # 50 s
    agent = [
        CtiEvent(name="AGENT_STATE_CHANGED", tenant="acme", at=T0, agent_id="a1",
                 data={"state": "AVAILABLE", "previous": "LOGGED_OUT"}),
        CtiEvent(name="AGENT_STATE_CHANGED", tenant="acme", at=T0 + 11, agent_id="a1",
                 data={"state": "ON_CALL", "previous": "AVAILABLE"}),
        CtiEvent(name="AGENT_STATE_CHANGED", tenant="acme", at=T0 + 41, agent_id="a1",
                 data={"state": "WRAP_UP", "previous": "ON_CALL"}),
        CtiEvent(name="AGENT_STATE_CHANGED", tenant="acme", at=T0 + 51, agent_id="a1",
                 data={"state": "NOT_READY", "previous": "WRAP_UP", "reason": "lunch"}),
        CtiEvent(name="AGENT_STATE_CHANGED", tenant="acme", at=T0 + 111, agent_id="a1",
                 data={"state": "NOT_READY", "previous": "NOT_READY", "reason": "training"}),
    ]

    async def body(pg):
        store = PgConfigStore(pg)
        await store.create(Tenant(tenant="acme"))
        await store.create(QueueDef(tenant="acme", queue_id="q1", wrap_up_s=10))
        async with open_event_sink(pg) as sink:
            for e in events + agent + events:  # the second copy: a retried batch inserts nothing
                sink.publish(e)
            sink.publish(CtiEvent(name="CALL_CREATED", tenant="acme", at=T0, call_id="c1"))  # ignored
        async with open_cdr_writer(pg, tmp / "s") as w:
            w.write(cdr(1, created_at=T0 + 1, answered_at=T0 + 11, talk_s=30.0, hold_s=4.0))
            w.write(cdr(2, created_at=T0 + 2, answered_at=T0 + 52, talk_s=50.0, hold_s=0.0))
            assert await w.wait_settled(10)
        kpis = await queue_kpis(pg, T0, T0 + 3600, interval_s=3600)
        perf = await agent_performance(pg, T0, T0 + 200)
        return kpis, perf

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        kpis, perf = run_pg(body)
    assert len(kpis) == 1
    k = kpis[0]
    s = q.stats
    assert (k.offered, k.answered, k.abandoned, k.short_abandoned, k.answered_within_sl) == (
        s.offered, s.answered, s.abandoned, s.short_abandoned, s.answered_within_sl) == (4, 2, 2, 1, 1)
    assert k.sl == pytest.approx(1 / 3)
    assert k.asa_s == pytest.approx(s.total_wait_answered / s.answered) == pytest.approx(30.0)
    assert k.aht_s == pytest.approx((34 + 50) / 2 + 10)
    (a,) = perf
    assert a.calls == 2 and a.talk_s == 80 and a.hold_s == 4
    assert a.available_s == pytest.approx(11) and a.on_call_s == pytest.approx(30) and a.wrap_up_s == pytest.approx(10)
    assert a.not_ready_by_reason == pytest.approx({"lunch": 60.0, "training": 89.0})
    assert k.interval_start == dt.datetime.fromtimestamp(T0 // 3600 * 3600, dt.UTC)


def test_report_cli_renders_table_csv_and_json(capsys):
    import argparse

    from adapters.postgres import cli

    dsn = fresh_dsn()
    run_pg(lambda pg: _seed_events(pg), dsn)
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    start = dt.datetime.fromtimestamp(T0 - 10, dt.UTC).isoformat()
    end = dt.datetime.fromtimestamp(T0 + 3600, dt.UTC).isoformat()
    outputs = {}
    for fmt in ("", "--csv", "--json"):
        args = parser.parse_args(["report", "queues", "--from", start, "--to", end, "--interval", "1h",
                                  "--dsn", dsn] + ([fmt] if fmt else []))
        assert args.func(args) == 0
        outputs[fmt] = capsys.readouterr().out
    assert outputs[""].splitlines()[0].split()[:3] == ["queue_id", "interval_start", "offered"]
    assert outputs["--csv"].splitlines()[1].startswith("q1,")
    assert msgspec.json.decode(outputs["--json"])[0]["answered"] == 1


async def _seed_events(pg):
    async with open_event_sink(pg) as sink:
        sink.publish(CtiEvent(name="QUEUE_LEFT", tenant="acme", at=T0 + 5, queue_id="q1", call_id="c1",
                              data={"outcome": "answered", "wait_s": 5.0}))
