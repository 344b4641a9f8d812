"""Recordings end to end (#10 part 2, docs/recordings.md): the engine's node against the FreeSWITCH
emulator over real ESL on 127.0.0.1 (uuid_broadcast / uuid_record start, mask, unmask, stop sent;
PLAYBACK_STOP and RECORD_START/STOP seen), CTI events, and the recording row and the CDR in embedded
PostgreSQL (the recordings writer fed by the CTI events, the CDR writer by the CDRs).

Rules: real sockets on port 0, short real time, every wait bounded (``trio.fail_after``/``until``).
"""

from __future__ import annotations

import warnings

import trio

from adapters.postgres.bridge import open_postgres
from adapters.postgres.cdr import open_cdr_writer
from adapters.postgres.events import TeeCti
from adapters.postgres.migrate import apply_migrations
from adapters.postgres.recordings import get_recording, list_recordings, open_recording_writer
from engine.actors.ports import InMemoryCti
from engine.messages import (
    PauseRecording,
    ResumeRecording,
    RouteToExtension,
    StartRecording,
    StopRecording,
)
from tests.support.esl import node_on_emulator, until
from tests.support.pg import fresh_dsn

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

CONSENT = "/snd/consent.wav"


def run(body, tmp_path, *, record_ext: str = "", timeout: float = 20.0) -> None:
    def router(event):
        # extension ``record_ext`` records every call (always-on), after the consent announcement
        record = event.destination == record_ext
        return RouteToExtension(call_id=event.call_id, at=event.at, target=event.destination, timeout_s=5.0,
                                record=record, record_consent=CONSENT if record else "")

    async def main():
        async with open_postgres(fresh_dsn("rec")) as pg:
            await pg.run(apply_migrations)
            async with trio.open_nursery() as n, open_cdr_writer(pg, tmp_path / "cdr.spool", batch=10) as cdrw, \
                    open_recording_writer(pg) as recw:
                cti = InMemoryCti()
                async with node_on_emulator(n, cti=TeeCti(cti, recw), cdrs=cdrw, router=router,
                                            phones=("1001", "1002")) as (emu, node, _):
                    emu.playback_durations[CONSENT] = 0.2
                    with trio.fail_after(timeout):
                        await body(emu, node, cti, pg, cdrw, recw)
                n.cancel_scope.cancel()
    trio.run(main)


async def _talking(emu, cti, ext="1001"):
    ch = await emu.place_inbound_call("2001", ext)
    await until(lambda: ch.peer is not None)
    (created,) = cti.named("CALL_CREATED")
    return ch, created.call_id


def _lines(emu, word):
    return [line for line in emu.command_log if word in line]


async def _row(pg, recw, tenant, recording_id):
    assert await recw.wait_settled(10)
    return await get_recording(pg, tenant, recording_id)


def test_on_demand_consent_then_record_pause_resume_stop_writes_the_row_and_the_cdr(tmp_path) -> None:
    async def body(emu, node, cti, pg, cdrw, recw):
        ch, call_id = await _talking(emu, cti)
        now = trio.current_time
        reply = await node.ask(StartRecording(call_id=call_id, at=now(), by="agent:a1", consent=CONSENT))
        assert reply.ok and reply.data["stage"] == "consent"
        rid, path = reply.data["recording_id"], reply.data["path"]
        # the announcement plays to both parties; nothing records until its PLAYBACK_STOP
        await until(lambda: _lines(emu, f"uuid_broadcast {call_id} {CONSENT} both"))
        assert ch.recording is None and not _lines(emu, "uuid_record")
        await until(lambda: ch.recording == path)
        broadcast_at = list(emu.command_log).index(f"api uuid_broadcast {call_id} {CONSENT} both")
        start_at = list(emu.command_log).index(f"api uuid_record {call_id} start {path}")
        assert broadcast_at < start_at
        (started,) = cti.named("CALL_RECORDING_STARTED")
        (consent,) = cti.named("CALL_RECORDING_CONSENT")
        assert started.at >= consent.at + 0.15  # after the 0.2 s announcement
        # pause / resume: mask and unmask, no switch event (as FreeSWITCH)
        assert (await node.ask(PauseRecording(call_id=call_id, at=now()))).ok
        await until(lambda: ch.record_masked)
        assert emu.record_masks == [(call_id, path, "mask")]
        assert not (await node.ask(PauseRecording(call_id=call_id, at=now()))).ok  # already paused
        await trio.sleep(0.3)
        assert (await node.ask(ResumeRecording(call_id=call_id, at=now()))).ok
        await until(lambda: not ch.record_masked)
        assert [a for *_, a in emu.record_masks] == ["mask", "unmask"]
        assert len(cti.named("CALL_RECORDING_PAUSED")) == 1 and len(cti.named("CALL_RECORDING_RESUMED")) == 1
        row = await _row(pg, recw, "default", rid)
        assert row is not None and row.stopped_at is None and row.call_id == call_id and row.path == path
        assert (await node.ask(StopRecording(call_id=call_id, at=now()))).ok
        await until(lambda: ch.recording is None)
        assert _lines(emu, f"uuid_record {call_id} stop {path}")
        await emu.hangup(ch.uuid)
        await until(lambda: cti.named("CALL_ENDED"))
        assert await cdrw.wait_settled(10)
        row = await _row(pg, recw, "default", rid)
        assert row.stop_reason == "stopped" and row.started_by == "agent:a1" and not row.compliance
        assert 0.25 <= row.paused_s < row.duration_s and row.extension == "1001"
        assert row.retain_until - row.started_at == 90 * 86_400  # the default policy
        # the CDR of the same call is there: the recording row links to it by call id
        cdr_rows = await pg.run(lambda conn: conn.fetch("SELECT call_id FROM cdrs WHERE call_id = $1", call_id))
        assert len(cdr_rows) == 1
        assert [r.recording_id for r in await list_recordings(pg, "default")] == [rid]
        assert await get_recording(pg, "other", rid) is None  # another tenant reads nothing
    run(body, tmp_path)


def test_always_on_extension_records_after_consent_until_the_call_ends(tmp_path) -> None:
    async def body(emu, node, cti, pg, cdrw, recw):
        ch, call_id = await _talking(emu, cti, ext="1002")
        await until(lambda: ch.recording is not None)
        (started,) = cti.named("CALL_RECORDING_STARTED")
        rid = started.data["recording_id"]
        assert started.data["by"] == "auto:extension:1002" and started.data["compliance"] is True
        assert _lines(emu, f"uuid_broadcast {call_id} {CONSENT} both")
        # a compliance recording: no stop without the policy's override
        refused = await node.ask(StopRecording(call_id=call_id, at=trio.current_time()))
        assert refused.code == "PERMISSION_DENIED" and ch.recording is not None
        await emu.hangup(ch.uuid)
        await until(lambda: cti.named("CALL_ENDED"))
        (stopped,) = cti.named("CALL_RECORDING_STOPPED")
        assert stopped.data["reason"] == "call_ended"
        row = await _row(pg, recw, "default", rid)
        assert row.compliance and row.stop_reason == "call_ended" and row.stopped_at is not None
        assert not _lines(emu, "uuid_record " + call_id + " stop")  # the switch closed it with the channel
    run(body, tmp_path, record_ext="1002")


def test_a_call_to_an_extension_without_the_flag_is_not_recorded(tmp_path) -> None:
    async def body(emu, node, cti, pg, cdrw, recw):
        ch, call_id = await _talking(emu, cti, ext="1001")
        await trio.sleep(0.3)
        await emu.hangup(ch.uuid)
        await until(lambda: cti.named("CALL_ENDED"))
        assert not _lines(emu, "uuid_record") and not _lines(emu, "uuid_broadcast")
        assert await list_recordings(pg, "default") == []
    run(body, tmp_path, record_ext="1002")
