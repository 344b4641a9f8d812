"""Voicemail through ``callengine run`` (``open_engine``, in process): the DID, the flow with its
voicemail node, the extension and its mailbox are rows in (embedded) PostgreSQL; a call from the
FreeSWITCH emulator (real ESL on 127.0.0.1) leaves a message; the node's VoicemailService (on the
CTI tee) stores it and MESSAGE_WAITING reaches the switch; the Voicemail API lists it and its
deletion turns the lamp off. Every wait is bounded."""

from __future__ import annotations

import pytest
import trio

from tests.support.engine import SECRET, run_engine

TENANT = "default"
FLOW = {"id": "vm", "start": "vm", "nodes": {"vm": {
    "type": "voicemail", "box": "1001", "greeting": "vm-greeting.wav", "max_length_s": 10, "silence_hits": 1,
    "min_length_s": 0.2}}}
ACCESS = {"id": "vmaccess", "start": "menu", "nodes": {"menu": {"type": "voicemail_access"}}}


async def _equals(read, value) -> bool:
    return await read() == value


async def _until(predicate, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.05)


@pytest.mark.parametrize("in_process", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["in_process", "ray"])
@pytest.mark.timeout(180)
def test_run_stores_a_message_sends_mwi_and_serves_the_api(monkeypatch, in_process: bool) -> None:
    from adapters.freeswitch import codec as c
    from adapters.postgres.config import Did, Extension, Flow
    from api.auth import issue_token
    from tests.integration.test_fs_emulator import named, tcp_client

    if not in_process:
        pytest.importorskip("ray")
    out: dict = {}

    async def body(engine, emu) -> None:
        store = engine.store
        await store.create(Extension(tenant=TENANT, extension="1001"))
        await store.create(Flow(tenant=TENANT, flow_id="vm", document=FLOW))
        await store.create(Did(tenant=TENANT, number="5000", destination="flow:vm"))
        await store.create(Flow(tenant=TENANT, flow_id="vmaccess", document=ACCESS))
        await store.create(Did(tenant=TENANT, number="*97", destination="flow:vmaccess"))
        api = engine.stack.api
        admin = issue_token(SECRET, tenant=TENANT, sub="root", roles=("admin",))
        await api.invoke_json(admin, "Voicemail/SetPin", b'{"box": "1001", "pin": "4711"}', "test")

        async def did_known() -> bool:
            return engine.config.snapshot.get(Did, TENANT, "*97") is not None

        await _until(did_known)
        watcher = await tcp_client(emu)
        await watcher.cmd(c.event("plain", "MESSAGE_WAITING", "CHANNEL_EXECUTE"))
        await emu.place_inbound_call("2001", "5000", variables={"emulator_record_talk_s": "0.3"})
        mwi = await watcher.event(named("MESSAGE_WAITING"), timeout=15)
        out["mwi"] = mwi.event.headers["MWI-Voice-Message"]
        listed = await api.invoke_json(admin, "Voicemail/ListMessages", b'{"box": "1001"}', "test")
        out["listed"] = listed
        import json

        (msg,) = json.loads(listed)["items"]
        out["msg"] = msg
        # the owner dials *97 from extension 1001: PIN, 1 (listen), 7 (delete), # (exit)
        owner = await emu.place_inbound_call("1001", "*97")

        async def played(file):
            return await watcher.event(lambda f: f.name == "CHANNEL_EXECUTE"
                                       and f.event.unique_id == owner.uuid
                                       and f.event.headers.get("Application-Data") == file, timeout=10)

        async def failures() -> int:
            return json.loads(await api.invoke_json(admin, "Voicemail/GetMailbox", b'{"box": "1001"}',
                                                    "test"))["pin_failures"]

        await played("voicemail/vm-enter_pass.wav")
        await emu.send_dtmf(owner.uuid, "1111#")  # a wrong PIN first: counted across calls (lockout)
        await played("voicemail/vm-fail_auth.wav")
        await _until(lambda: _equals(failures, 1))
        await emu.send_dtmf(owner.uuid, "4711#")
        await played("voicemail/vm-menu.wav")
        await emu.send_dtmf(owner.uuid, "1")
        await played(msg["path"])
        await emu.send_dtmf(owner.uuid, "7")
        mwi = await watcher.event(named("MESSAGE_WAITING"), timeout=10)
        await emu.send_dtmf(owner.uuid, "#")
        out["mwi_after"] = mwi.event.headers["MWI-Voice-Message"]
        await _until(lambda: _equals(failures, 0))  # the right PIN cleared the count

    run_engine(monkeypatch, body, in_process=in_process, emulator={"playback_seconds": 0.05})
    assert out["mwi"] == "1/0 (0/0)" and out["mwi_after"] == "0/0 (0/0)"
    assert out["msg"]["caller_id"] == "2001" and out["msg"]["folder"] == "new"
    assert out["msg"]["path"] == f"voicemail/1001/{out['msg']['message_id']}.wav"
    assert 1.0 <= out["msg"]["duration_s"] <= 2.5
