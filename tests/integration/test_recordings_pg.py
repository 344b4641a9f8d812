"""Recording metadata on embedded PostgreSQL (#10 part 2, migration 0010, docs/recordings.md): the
writer is idempotent and order-proof (one row per recording), the retention date follows the
tenant's policy, the retention job is bounded and marks only expired, stopped rows, reads are
tenant-isolated, and the always-on flags of queues and extensions reach the queue machine's config
and the router."""

from __future__ import annotations

import warnings

import trio

from adapters.postgres.bridge import open_postgres
from adapters.postgres.config import Extension, NodeConfig, PgConfigStore, QueueDef, Tenant
from adapters.postgres.migrate import apply_migrations
from adapters.postgres.recordings import (
    PgRecordings,
    expire_recordings,
    get_recording,
    list_recordings,
    load_policy,
    open_recording_writer,
    run_retention,
    save_policy,
)
from engine.messages import ChannelCreated, CtiEvent, RouteToExtension
from engine.recordings import DAY_S, RecordingPolicy
from tests.support.pg import fresh_dsn

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

T0 = 1_700_000_000.0


def started(rid: str, at: float, tenant: str = "acme", call_id: str = "c1", **data) -> CtiEvent:
    return CtiEvent(name="CALL_RECORDING_STARTED", tenant=tenant, at=at, call_id=call_id, agent_id="a1",
                    queue_id="q1", data={"recording_id": rid, "path": f"{rid}.wav", "by": "agent:a1",
                                         "compliance": False, "extension": "201", **data})


def stopped(rid: str, at: float, start: float, tenant: str = "acme", call_id: str = "c1") -> CtiEvent:
    return CtiEvent(name="CALL_RECORDING_STOPPED", tenant=tenant, at=at, call_id=call_id, agent_id="a1",
                    queue_id="q1", data={"recording_id": rid, "path": f"{rid}.wav", "by": "agent:a1",
                                         "compliance": False, "extension": "201", "reason": "stopped",
                                         "started_at": start, "duration_s": at - start, "paused_s": 2.0})


def run(body) -> None:
    async def main() -> None:
        with trio.fail_after(30):
            async with open_postgres(fresh_dsn("recpg")) as pg:
                await pg.run(apply_migrations)
                await body(pg)

    trio.run(main)


def test_one_row_per_recording_whatever_the_order_and_replays_with_the_policy_retention():
    async def body(pg):
        await save_policy(pg, RecordingPolicy(tenant="acme", retention_days=30, compliance_stop_roles=("admin",)))
        policy = await load_policy(pg, "acme")
        assert policy.retention_days == 30 and policy.compliance_stop_roles == ("admin",)
        assert (await load_policy(pg, "nobody")).retention_days == 90  # the default
        async with open_recording_writer(pg) as w:
            for e in (started("c1-r1", T0), stopped("c1-r1", T0 + 10, T0), started("c1-r1", T0),  # replayed
                      stopped("c2-r1", T0 + 20, T0 + 5, call_id="c2"),  # its STARTED comes after
                      started("c2-r1", T0 + 5, call_id="c2"),
                      started("c3-r1", T0, tenant="other", call_id="c3"),
                      CtiEvent(name="CALL_HELD", tenant="acme", at=T0, call_id="c1")):  # not kept
                w.publish(e)
            assert await w.wait_settled(10)
        rows = await list_recordings(pg, "acme")
        assert [r.recording_id for r in rows] == ["c2-r1", "c1-r1"]  # newest first
        r1 = await get_recording(pg, "acme", "c1-r1")
        assert (r1.stopped_at, r1.duration_s, r1.paused_s, r1.stop_reason) == (T0 + 10, 10.0, 2.0, "stopped")
        assert (r1.agent_id, r1.queue_id, r1.extension, r1.started_by) == ("a1", "q1", "201", "agent:a1")
        assert r1.retain_until == T0 + 30 * DAY_S
        r2 = await get_recording(pg, "acme", "c2-r1")
        assert r2.started_at == T0 + 5 and r2.stopped_at == T0 + 20
        assert await get_recording(pg, "acme", "c3-r1") is None  # another tenant's
        assert (await get_recording(pg, "other", "c3-r1")).retain_until == T0 + 90 * DAY_S
        count = await pg.run(lambda conn: conn.fetchval("SELECT count(*) FROM recordings"))
        assert count == 3
        cat = PgRecordings(pg, audio_base="https://m.example/r")
        assert cat.audio_url(r1) == "https://m.example/r/c1-r1.wav"
        assert [r.recording_id for r in await cat.list("acme", call_id="c2")] == ["c2-r1"]
    run(body)


def test_retention_marks_only_expired_stopped_rows_in_bounded_steps():
    async def body(pg):
        await save_policy(pg, RecordingPolicy(tenant="acme", retention_days=1))
        async with open_recording_writer(pg) as w:
            for i in range(5):
                w.publish(started(f"old-{i}", T0 + i, call_id=f"o{i}"))
                w.publish(stopped(f"old-{i}", T0 + i + 5, T0 + i, call_id=f"o{i}"))
            w.publish(started("running", T0, call_id="r"))  # still recording: never expired
            w.publish(started("young", T0 + 2 * DAY_S, call_id="y"))
            w.publish(stopped("young", T0 + 2 * DAY_S + 5, T0 + 2 * DAY_S, call_id="y"))
            assert await w.wait_settled(10)
        now = T0 + 1.5 * DAY_S
        first = await expire_recordings(pg, now, limit=2)
        assert [r.recording_id for r in first] == ["old-0", "old-1"]
        told: list[str] = []
        total = await run_retention(pg, limit=2, clock=lambda: now, rounds=1,
                                    on_expired=lambda rows: told.extend(r.recording_id for r in rows))
        assert total == 3 and told == ["old-2", "old-3", "old-4"]
        assert await expire_recordings(pg, now) == []
        left = {r.recording_id for r in await list_recordings(pg, "acme")}
        assert left == {"running", "young"}
        assert len(await list_recordings(pg, "acme", include_expired=True)) == 7
    run(body)


def test_always_on_flags_of_queues_and_extensions_reach_the_queue_config_and_the_router():
    async def body(pg):
        store = PgConfigStore(pg)
        await store.create(Tenant(tenant="acme"))
        await store.create(Extension(tenant="acme", extension="201", record=True, record_consent="/snd/c.wav"))
        await store.create(Extension(tenant="acme", extension="202"))
        await store.create(QueueDef(tenant="acme", queue_id="sales", record=True, record_consent="/snd/q.wav"))
        snap = await store.snapshot()
        config = snap.get(QueueDef, "acme", "sales").to_config()
        assert config.record and config.record_consent == "/snd/q.wav"
        route = NodeConfig(snap).router()
        to_201 = route(ChannelCreated(call_id="c1", at=T0, destination="201", tenant="acme"))
        assert isinstance(to_201, RouteToExtension) and to_201.record and to_201.record_consent == "/snd/c.wav"
        to_202 = route(ChannelCreated(call_id="c2", at=T0, destination="202", tenant="acme"))
        assert isinstance(to_202, RouteToExtension) and not to_202.record and to_202.record_consent == ""
    run(body)
