"""Recordings through ``callengine run`` (``open_engine``, in process; docs/recordings.md): an
extension whose row says ``record`` (written while the node runs, in embedded PostgreSQL) records
every call it answers after the consent announcement, dialled directly or sent by an IVR flow; the API starts, pauses and stops an on-demand
recording under the tenant's policy row; the rows land in ``recordings`` (the node's recordings
writer) and Recordings/List and Get return them with the media store's URL. The FreeSWITCH emulator
(real ESL on 127.0.0.1) plays, records and masks. Every wait is bounded."""

from __future__ import annotations

import pytest
import trio

from api.auth import issue_token
from tests.support.engine import SECRET, run_engine
from tests.support.engine import until as _until
from tests.support.nats import http_call

TENANT = "default"
CONSENT = "/snd/recorded.wav"


@pytest.mark.timeout(120)
def test_always_on_extension_and_on_demand_recording_through_callengine_run(monkeypatch) -> None:
    from adapters.postgres.config import Extension
    from adapters.postgres.recordings import load_policy

    monkeypatch.setenv("CALLENGINE_RECORDINGS_URL", "https://media.example/rec")
    out: dict = {}

    async def body(engine, emu) -> None:
        emu.playback_durations[CONSENT] = 0.1
        store = engine.store
        admin = issue_token(SECRET, tenant=TENANT, sub="root", roles=("admin",))

        async def api(method: str, params: dict, tok: str = admin) -> tuple[int, dict]:
            return await http_call(engine.stack, method, params, tok)

        # written through the Admin API while the node runs (PostgreSQL rows, NOTIFY back)
        await store.create(Extension(tenant=TENANT, extension="1001"))
        out["ext"] = await api("Admin/CreateExtension", {"id": "1002", "record": True,
                                                         "record_consent": CONSENT})
        out["policy"] = await api("Admin/SetRecordingPolicy", {"retention_days": 7})
        out["policy_row"] = await load_policy(engine.pg, TENANT)
        await _until(lambda: engine.config.snapshot.get(Extension, TENANT, "1002") is not None)

        # always-on: a call to 1002 is recorded after the announcement, until it ends
        ch = await emu.place_inbound_call("2001", "1002")
        await _until(lambda: ch.recording is not None)
        out["broadcast_first"] = any(f"uuid_broadcast {ch.uuid} {CONSENT} both" in line
                                     for line in emu.command_log)
        out["stop_compliance"] = await api("CallControl/StopRecording", {"call_id": ch.uuid})
        await emu.hangup(ch.uuid)
        # always-on through an IVR: DID 7100 runs a flow whose transfer node rings 1002; run fills
        # the extension's flag in, so this call is recorded too (it was not before)
        from adapters.postgres.config import Did, Flow

        await store.create(Flow(tenant=TENANT, flow_id="ivr", document={
            "id": "ivr", "start": "to", "nodes": {"to": {"type": "transfer", "target": "1002"}}}))
        await store.create(Did(tenant=TENANT, number="7100", destination="flow:ivr"))
        await _until(lambda: engine.config.snapshot.get(Did, TENANT, "7100") is not None)
        via_flow = await emu.place_inbound_call("2003", "7100")
        await _until(lambda: via_flow.recording is not None)
        out["flow_broadcast_first"] = any(f"uuid_broadcast {via_flow.uuid} {CONSENT} both" in line
                                          for line in emu.command_log)
        await emu.hangup(via_flow.uuid)
        # on demand: a call to 1001, started, paused, resumed and stopped through the API
        ch2 = await emu.place_inbound_call("2002", "1001")
        await _until(lambda: ch2.peer is not None)
        await _until(lambda: engine.node.runtime.state_of("call", ch2.uuid) is not None
                     and engine.node.runtime.state_of("call", ch2.uuid).state.name == "ACTIVE")
        out["start"] = await api("CallControl/StartRecording", {"call_id": ch2.uuid})
        await _until(lambda: ch2.recording is not None)
        out["pause"] = await api("CallControl/PauseRecording", {"call_id": ch2.uuid})
        await _until(lambda: ch2.record_masked)
        await trio.sleep(0.2)
        out["resume"] = await api("CallControl/ResumeRecording", {"call_id": ch2.uuid})
        out["stop"] = await api("CallControl/StopRecording", {"call_id": ch2.uuid})
        await _until(lambda: ch2.recording is None)
        await emu.hangup(ch2.uuid)
        await _until(lambda: not emu.channels, 10)

        async def rows() -> int:
            return len((await api("Recordings/List", {}))[1].get("items", []))

        with trio.fail_after(10):
            while await rows() < 3 or any(i["stopped_at"] is None for i in
                                          (await api("Recordings/List", {}))[1]["items"]):
                await trio.sleep(0.05)
        out["list"] = await api("Recordings/List", {})
        rid = out["start"][1]["data"]["recording_id"]
        out["get"] = await api("Recordings/Get", {"recording_id": rid})
        other = issue_token(SECRET, tenant="other", sub="root", roles=("admin",))
        out["other_tenant"] = await api("Recordings/Get", {"recording_id": rid}, other)

    run_engine(monkeypatch, body, phones=("1001", "1002"))
    assert out["ext"][0] == 200 and out["ext"][1]["record"], out["ext"]
    assert out["policy"][0] == 200 and out["policy_row"].retention_days == 7, out["policy"]
    assert out["broadcast_first"]
    status, body = out["stop_compliance"]
    assert status == 403 and body["code"] == "permission_denied", body
    for step in ("start", "pause", "resume", "stop"):
        assert out[step][0] == 200, (step, out[step])
    status, body = out["list"]
    assert {i["extension"] for i in body["items"]} == {"1001", "1002"}, body
    always = [i for i in body["items"] if i["extension"] == "1002"]
    assert len(always) == 2, always  # the direct call and the one through the flow
    assert all(i["compliance"] and i["started_by"] == "auto:extension:1002" and i["stop_reason"] == "call_ended"
               for i in always), always
    assert out["flow_broadcast_first"]
    status, got = out["get"]
    assert status == 200 and got["started_by"] == "user:root" and got["stop_reason"] == "stopped", got
    assert got["paused_s"] >= 0.15 and got["audio_url"] == f"https://media.example/rec/{got['path']}"
    assert abs(got["retain_until"] - got["started_at"] - 7 * 86_400) < 1e-3
    status, body = out["other_tenant"]
    assert status == 404 and body["code"] == "not_found", body
