"""Voicemail end to end (#10 part 1): the engine's node runs a voicemail flow against the FreeSWITCH
emulator over real ESL on 127.0.0.1, the message lands in PostgreSQL (embedded server), and MWI
goes back to the switch as ``sendevent MESSAGE_WAITING``, seen by a second, plain ESL client.

Checked: the apps the switch ran (greeting, beep, ``record`` with time limit and silence args),
RECORD_STOP ending the message, VOICEMAIL_NEW on the CTI stream, the row, the MWI headers on every
change (new, saved, deleted), one CDR; a caller hanging up while recording still leaves a message;
one hanging up during the greeting leaves none (VOICEMAIL_ABANDONED, no row, no MWI).

Rules: real sockets on port 0, short real time, every wait bounded (``trio.fail_after``/``until``).
"""

from __future__ import annotations

import json

import trio

from adapters.freeswitch import codec as c
from adapters.freeswitch.voicemail import esl_mwi
from adapters.postgres.bridge import open_postgres
from adapters.postgres.migrate import apply_migrations
from adapters.postgres.voicemail import VoicemailService, VoicemailStore
from adapters.webhooks import (
    MemoryDeadLetterStore,
    WebhookCti,
    load_config,
    open_webhook_dispatcher,
)
from engine.actors.ports import InMemoryCdrs, InMemoryCti
from engine.flows.loader import decode_document, parse_flows
from engine.messages import EnterFlow, RouteToExtension
from tests.integration.test_fs_emulator import named, tcp_client
from tests.support.esl import node_on_emulator, until
from tests.support.http import HttpReceiver as Receiver
from tests.support.pg import fresh_dsn

BEEP = "tone_stream://%(250,0,1000)"
FLOW, ACCESS = parse_flows(decode_document(b"""
flows:
- id: vm
  start: vm
  nodes:
    vm: {type: voicemail, box: "1001", greeting: vm-greeting.wav, max_length_s: 4, silence_threshold: 200,
         silence_hits: 1, min_length_s: 0.5}
- id: access
  start: menu
  nodes:
    menu: {type: voicemail_access}
""", "vm.yaml"), "vm.yaml")


def _router(event):
    if event.destination == "1001":  # the extension itself: its mailbox when it does not answer
        return RouteToExtension(call_id=event.call_id, at=event.at, target="1001", timeout_s=5.0, voicemail="1001")
    flow = ACCESS if event.destination == "*97" else FLOW
    return EnterFlow(call_id=event.call_id, at=event.at, flow_id=flow.id, flow=flow)


class FeedingCti(InMemoryCti):
    """Records CTI events and hands them to the voicemail service, as a node's CTI stream would."""

    service: VoicemailService | None = None

    def __init__(self) -> None:
        super().__init__()
        self.also: list = []  # more CTI ports (a webhook's)

    def publish(self, event) -> None:
        super().publish(event)
        if self.service is not None:
            self.service.feed(event)
        for port in self.also:
            port.publish(event)


async def _setup_pg(pg) -> None:
    await pg.run(apply_migrations)

    async def rows(conn):
        await conn.execute("INSERT INTO tenants (tenant) VALUES ('default')")
        await conn.execute("INSERT INTO sip_domains (tenant, domain) VALUES ('default', 'pbx.example')")
        await conn.execute("INSERT INTO extensions (tenant, extension) VALUES ('default', '1001')")

    await pg.run(rows)


def run(body, *, timeout: float = 20.0) -> None:
    async def main():
        async with open_postgres(fresh_dsn("vm")) as pg, trio.open_nursery() as n:
            await _setup_pg(pg)
            store = VoicemailStore(pg)
            await store.set_mailbox("default", "1001", pin="4711")
            cdrs, cti = InMemoryCdrs(), FeedingCti()
            async with node_on_emulator(n, cti=cti, cdrs=cdrs, router=_router,
                                        emulator={"playback_seconds": 0.05}) as (emu, node, links):
                service = VoicemailService(store, esl_mwi(links))
                cti.service = service
                service.deliver = node.deliver_nowait
                n.start_soon(service.run)
                watcher = await tcp_client(emu)
                reply = await watcher.cmd(c.event("plain", "MESSAGE_WAITING", "CHANNEL_EXECUTE", "RECORD_START",
                                                  "RECORD_STOP"))
                assert reply.reply_text.startswith("+OK")
                with trio.fail_after(timeout):
                    await body(emu, cti, cdrs, store, service, watcher)
            n.cancel_scope.cancel()
    trio.run(main)


async def _mwi(watcher):
    f = await watcher.event(named("MESSAGE_WAITING"), timeout=5)
    h = f.event.headers
    return h["MWI-Messages-Waiting"], h["MWI-Message-Account"], h["MWI-Voice-Message"]


async def _drain(watcher, seconds):
    with trio.move_on_after(seconds):
        while await watcher.frame() is not None:
            pass


def _apps(watcher, call_uuid):
    return [(f.event.headers.get("Application"), f.event.headers.get("Application-Data"))
            for f in watcher.frames if f.event is not None and f.name == "CHANNEL_EXECUTE"
            and f.event.headers.get("Unique-ID") == call_uuid]


def test_a_caller_leaves_a_message_then_the_owner_saves_and_deletes_it_with_mwi_each_time() -> None:
    async def body(emu, cti, cdrs, store, service, watcher):
        ch = await emu.place_inbound_call("+4930123", "5000", variables={"emulator_record_talk_s": "0.6"})
        # the switch ends the message by itself: 0.6 s of talk, then 1 s of silence (success-silence)
        stop = await watcher.event(named("RECORD_STOP", ch.uuid), timeout=8)
        await until(lambda: cti.named("VOICEMAIL_NEW") and cdrs.items)
        (new,) = cti.named("VOICEMAIL_NEW")
        call_id = new.call_id
        path = f"voicemail/1001/{call_id}.wav"
        assert stop.event.headers["Record-File-Path"] == path
        assert stop.event.headers["Record-Completion-Cause"] == "success-silence"
        assert (new.tenant, new.data["box"], new.data["message_id"], new.data["caller_id"], new.data["path"],
                new.data["ended"]) == ("default", "1001", call_id, "+4930123", path, "success-silence")
        assert 1.3 <= new.data["duration_s"] <= 2.6, new.data
        # what the switch ran on the caller's channel: answer, greeting, beep, record with its limits
        apps = _apps(watcher, ch.uuid)
        assert ("playback", "vm-greeting.wav") in apps and ("playback", BEEP) in apps
        assert ("record", f"{path} 4 200 1") in apps
        assert [a for a, _ in apps].index("record") > apps.index(("playback", BEEP))
        assert emu.record_log == [(ch.uuid, path, 4, 200, 1)]
        # one CDR; the flow answered, then hung up
        assert cdrs.by_call() == {call_id: 1} and cdrs.items[0].disposition == "answered"
        # the row, then MWI with the counts as stored
        assert await _mwi(watcher) == ("yes", "sip:1001@pbx.example", "1/0 (0/0)")
        (msg,) = await store.messages("default", "1001")
        assert (msg.id, msg.caller_id, msg.folder, msg.path) == (call_id, "+4930123", "new", path)
        assert abs(msg.duration_s - new.data["duration_s"]) < 1e-6
        assert msg.expires_at is not None and abs(msg.expires_at - msg.created_at - 30 * 86400) < 1
        # the owner saves it: MWI off, one saved; then deletes it: nothing left
        await service.save("default", "1001", call_id)
        assert await _mwi(watcher) == ("no", "sip:1001@pbx.example", "0/1 (0/0)")
        assert await service.delete("default", "1001", call_id)
        assert await _mwi(watcher) == ("no", "sip:1001@pbx.example", "0/0 (0/0)")
        assert await store.messages("default", "1001") == []
        assert await store.files_to_remove() == [("default", call_id, path)]
        assert service.stored == 1 and service.mwi_sent == 3 and service.mwi_failed == 0

    run(body)


def test_hanging_up_while_recording_keeps_the_message() -> None:
    async def body(emu, cti, cdrs, store, service, watcher):
        ch = await emu.place_inbound_call("+4930999", "5000")  # talks until the limit
        await watcher.event(named("RECORD_START", ch.uuid), timeout=5)
        await trio.sleep(0.8)
        await emu.hangup(ch.uuid)
        await until(lambda: cti.named("VOICEMAIL_NEW") and cdrs.items)
        (new,) = cti.named("VOICEMAIL_NEW")
        assert new.data["ended"] == "hangup" and 0.7 <= new.data["duration_s"] <= 1.6
        assert await _mwi(watcher) == ("yes", "sip:1001@pbx.example", "1/0 (0/0)")
        (msg,) = await store.messages("default", "1001")
        assert msg.id == new.call_id and msg.caller_id == "+4930999"
        assert len(cdrs.items) == 1

    run(body)


def test_hanging_up_during_the_greeting_leaves_no_message() -> None:
    async def body(emu, cti, cdrs, store, service, watcher):
        emu.playback_durations["vm-greeting.wav"] = 5.0
        ch = await emu.place_inbound_call("+4930777", "5000")
        await watcher.event(lambda f: f.name == "CHANNEL_EXECUTE" and f.event.unique_id == ch.uuid
                            and f.event.headers.get("Application-Data") == "vm-greeting.wav", timeout=5)
        await emu.hangup(ch.uuid)
        await until(lambda: cti.named("VOICEMAIL_ABANDONED") and cdrs.items)
        (ab,) = cti.named("VOICEMAIL_ABANDONED")
        assert (ab.data["box"], ab.data["reason"], ab.data["caller_id"]) == ("1001", "hangup_greeting", "+4930777")
        await _drain(watcher, 0.3)  # whatever the switch fires meanwhile is read
        assert cti.named("VOICEMAIL_NEW") == [] and await store.messages("default", "1001") == []
        assert not [f for f in watcher.frames if f.name == "MESSAGE_WAITING"] and emu.record_log == []

    run(body)


def test_a_webhook_takes_voicemail_new() -> None:
    async def body(emu, cti, cdrs, store, service, watcher):
        async with trio.open_nursery() as n:
            rx = await Receiver().start(n)
            cfg = load_config({"tenants": [{"tenant": "default", "webhooks": [{
                "id": "crm", "url": rx.url(), "events": ["VOICEMAIL_NEW"], "timeout_s": 2.0, "max_attempts": 2,
                "backoff_base_s": 0.01, "backoff_cap_s": 0.05,
                "body_template": '{"box": $box, "id": $message_id, "from": $caller_id, "seconds": $duration_s}'}]}]})
            async with open_webhook_dispatcher(cfg, MemoryDeadLetterStore()) as d:
                cti.also.append(WebhookCti(d))
                await emu.place_inbound_call("+4930555", "5000", variables={"emulator_record_talk_s": "0.3"})
                await until(lambda: rx.requests, timeout=8)
                assert await d.wait_idle()
            n.cancel_scope.cancel()
        (new,) = cti.named("VOICEMAIL_NEW")
        (req,) = rx.requests  # only VOICEMAIL_NEW: the call's other events are not taken
        assert req.headers["callengine-event"] == "VOICEMAIL_NEW"
        assert json.loads(req.body) == {"box": "1001", "id": new.call_id, "from": "+4930555",
                                        "seconds": new.data["duration_s"]}

    run(body)


def test_the_owner_dials_star97_enters_the_pin_listens_and_deletes_with_mwi() -> None:
    async def body(emu, cti, cdrs, store, service, watcher):
        ch = await emu.place_inbound_call("+4930123", "5000", variables={"emulator_record_talk_s": "0.3"})
        assert await _mwi(watcher) == ("yes", "sip:1001@pbx.example", "1/0 (0/0)")
        (new,) = cti.named("VOICEMAIL_NEW")
        path = new.data["path"]
        owner = await emu.place_inbound_call("1001", "*97")
        await until(lambda: cti.named("VOICEMAIL_ACCESS"))
        assert cti.named("VOICEMAIL_ACCESS")[0].data == {"box": "1001"}

        async def played(file):
            return await watcher.event(lambda f: f.name == "CHANNEL_EXECUTE" and f.event.unique_id == owner.uuid
                                       and f.event.headers.get("Application-Data") == file, timeout=5)

        await played("voicemail/vm-enter_pass.wav")  # the mailbox came: PIN prompt
        await emu.send_dtmf(owner.uuid, "4711#")
        await played("voicemail/vm-menu.wav")
        await emu.send_dtmf(owner.uuid, "1")
        await played(path)  # the message itself, from the media server's file
        await emu.send_dtmf(owner.uuid, "7")
        assert await _mwi(watcher) == ("no", "sip:1001@pbx.example", "0/0 (0/0)")
        assert [e.data["message_id"] for e in cti.named("VOICEMAIL_DELETED")] == [new.call_id]
        await emu.send_dtmf(owner.uuid, "#")
        await until(lambda: len(cdrs.items) == 2)
        assert await store.messages("default", "1001") == []
        assert owner.uuid not in emu.channels or not emu.channels[owner.uuid].up
        assert ch.uuid != owner.uuid

    run(body)


def test_a_wrong_pin_three_times_hangs_up_without_playing_anything() -> None:
    async def body(emu, cti, cdrs, store, service, watcher):
        await emu.place_inbound_call("+4930123", "5000", variables={"emulator_record_talk_s": "0.3"})
        await _mwi(watcher)
        owner = await emu.place_inbound_call("1001", "*97")
        await until(lambda: cti.named("VOICEMAIL_ACCESS"))
        await trio.sleep(0.2)
        await emu.send_dtmf(owner.uuid, "1234#0000#9999#")
        await until(lambda: len(cdrs.items) == 2)
        await _drain(watcher, 0.2)
        apps = _apps(watcher, owner.uuid)
        assert not [a for a in apps if a[0] == "playback" and a[1].startswith("voicemail/1001/")]
        assert ("playback", "voicemail/vm-fail_auth.wav") in apps
        assert len(await store.messages("default", "1001")) == 1

    run(body)


def test_a_busy_extension_sends_the_caller_to_its_mailbox() -> None:
    async def body(emu, cti, cdrs, store, service, watcher):
        emu.register_phone("1001")
        emu.set_endpoint("1001", outcome="busy")
        # the mailbox's own greeting and limit are used on this path (VOICEMAIL_SETTINGS)
        await store.set_mailbox("default", "1001", greeting="voicemail/1001/greeting.wav", max_length_s=30)
        ch = await emu.place_inbound_call("+4930666", "1001", variables={"emulator_record_talk_s": "0.3"})
        assert await _mwi(watcher) == ("yes", "sip:1001@pbx.example", "1/0 (0/0)")
        (flow,) = cti.named("CALL_IN_FLOW")
        assert (flow.data["flow_id"], flow.data["reason"]) == ("voicemail:1001", "busy")
        (new,) = cti.named("VOICEMAIL_NEW")
        assert (new.data["box"], new.data["caller_id"]) == ("1001", "+4930666")
        apps = _apps(watcher, ch.uuid)
        assert ("playback", "voicemail/1001/greeting.wav") in apps and ("playback", BEEP) in apps
        assert ("record", f"voicemail/1001/{new.call_id}.wav 30 200 3") in apps
        await until(lambda: cdrs.items)
        (msg,) = await store.messages("default", "1001")
        assert msg.id == new.call_id

    run(body)
