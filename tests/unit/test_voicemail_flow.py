"""Voicemail flow nodes inside the call machine (engine.fsm.call + engine.flows): leaving a message
(greeting, beep, record with limits, VOICEMAIL_NEW at RECORD_STOP or at the caller's hangup,
VOICEMAIL_ABANDONED) and the owner's menu (VOICEMAIL_ACCESS, the loaded mailbox, PIN, 1/9/7/#)."""

from __future__ import annotations

from engine import voicemail as vm
from engine.flows.loader import decode_document, parse_flows
from engine.fsm import call as C
from engine.fsm.call import CallState as S
from engine.messages import (
    ChannelCreated,
    ChannelHangup,
    DtmfReceived,
    EnterFlow,
    MediaPlay,
    MediaRecordStart,
    MediaStopPlayback,
    PlaybackFinished,
    PublishCti,
    RecordingStopped,
    SendMedia,
    TimerFired,
    VoicemailBox,
    WriteCdr,
)

BEEP = "tone_stream://%(250,0,1000)"
LEAVE, ACCESS = parse_flows(decode_document(b"""
flows:
- id: leave
  start: vm
  nodes:
    vm: {type: voicemail, box: "1001", greeting: g.wav, max_length_s: 60, silence_hits: 3}
- id: access
  start: menu
  nodes:
    menu: {type: voicemail_access, idle_timeout_s: 15}
""", "f.yaml"), "f.yaml")
PIN_HASH = vm.hash_pin("4711", b"0123456789abcdef", rounds=1)


def start(flow, caller="+4930111", at=0.0):
    call, _ = C.new_call(ChannelCreated(call_id="c1", at=at, caller_id=caller, destination="5000", tenant="acme"))
    return C.step(call, EnterFlow(call_id="c1", at=at + 0.1, flow_id=flow.id, flow=flow))


def cti(effects, name=None):
    return [e.event for e in effects if isinstance(e, PublishCti) and (name is None or e.event.name == name)]


def medias(effects):
    return [e.command for e in effects if isinstance(e, SendMedia)]


def recording(at=0.0):
    call, _ = start(LEAVE, at=at)
    call, _ = C.step(call, PlaybackFinished(call_id="c1", at=at + 3, file="g.wav"))
    call, effects = C.step(call, PlaybackFinished(call_id="c1", at=at + 3.5, file=BEEP))
    assert medias(effects) == [MediaRecordStart(call_id="c1", path="voicemail/1001/c1.wav", limit_s=60,
                                                silence_threshold=200, silence_hits=3)]
    return call


def test_record_stop_leaves_a_message_of_the_tenant_and_ends_the_call_once():
    call = recording()
    call, effects = C.step(call, RecordingStopped(call_id="c1", at=20.5, path="voicemail/1001/c1.wav",
                                                  cause="success-silence"))
    (new,) = cti(effects, "VOICEMAIL_NEW")
    assert (new.tenant, new.call_id) == ("acme", "c1")
    assert new.data == {"box": "1001", "message_id": "c1", "caller_id": "+4930111", "duration_s": 17.0,
                        "path": "voicemail/1001/c1.wav", "ended": "success-silence"}
    assert call.state is S.ENDED and len([e for e in effects if isinstance(e, WriteCdr)]) == 1
    # a late RECORD_STOP / hangup change nothing
    assert C.step(call, ChannelHangup(call_id="c1", at=21.0))[1] == []


def test_record_stop_of_another_file_is_not_the_message():
    call = recording()
    same, effects = C.step(call, RecordingStopped(call_id="c1", at=9.0, path="other.wav"))
    assert same.state is S.IN_FLOW and cti(effects) == []


def test_hangup_while_recording_keeps_the_message_hangup_before_it_abandons():
    call = recording()
    call, effects = C.step(call, ChannelHangup(call_id="c1", at=10.0))
    (new,) = cti(effects, "VOICEMAIL_NEW")
    assert (new.data["ended"], new.data["duration_s"]) == ("hangup", 6.5) and call.state is S.ENDED
    call, _ = start(LEAVE)
    call, effects = C.step(call, ChannelHangup(call_id="c1", at=1.0))  # during the greeting
    (ab,) = cti(effects, "VOICEMAIL_ABANDONED")
    assert ab.data["reason"] == "hangup_greeting" and not cti(effects, "VOICEMAIL_NEW")
    call = recording()
    call, effects = C.step(call, ChannelHangup(call_id="c1", at=4.0))  # 0.5 s: too short
    assert [e.data["reason"] for e in cti(effects, "VOICEMAIL_ABANDONED")] == ["too_short"]


def box(at=1.0, pin_hash=PIN_HASH):
    return VoicemailBox(call_id="c1", at=at, box="1001", pin_hash=pin_hash, messages=(
        ("m2", "saved", "voicemail/1001/m2.wav", 50.0), ("m1", "new", "voicemail/1001/m1.wav", 100.0)))


def press(call, keys, at):
    effects = []
    for i, k in enumerate(keys):
        call, e = C.step(call, DtmfReceived(call_id="c1", at=at + i * 0.2, digit=k))
        effects += e
    return call, effects


def test_owner_menu_pin_listen_save_delete_exit():
    call, effects = start(ACCESS, caller="1001")
    (ask,) = cti(effects, "VOICEMAIL_ACCESS")
    assert ask.data == {"box": "1001"} and ask.tenant == "acme"  # "" box: the caller's own extension
    call, effects = C.step(call, box())
    assert medias(effects) == [MediaPlay(call_id="c1", file=vm.PROMPTS["enter_pin"])]
    call, effects = press(call, "4711#", 2.0)
    assert MediaPlay(call_id="c1", file=vm.PROMPTS["menu"]) in medias(effects)
    call, effects = press(call, "1", 4.0)  # the new message first
    assert medias(effects) == [MediaStopPlayback(call_id="c1"), MediaPlay(call_id="c1", file="voicemail/1001/m1.wav")]
    call, effects = press(call, "9", 5.0)
    assert [(e.name, e.data) for e in cti(effects)] == [("VOICEMAIL_SAVED", {"box": "1001", "message_id": "m1"})]
    call, effects = press(call, "17", 6.0)
    assert MediaPlay(call_id="c1", file="voicemail/1001/m2.wav") in medias(effects)
    assert [(e.name, e.data["message_id"]) for e in cti(effects)] == [("VOICEMAIL_DELETED", "m2")]
    call, effects = press(call, "#", 8.0)
    assert call.state is S.ENDED
    assert [c for c in cti(effects, "CALL_FLOW_ENDED")] and len([e for e in effects if isinstance(e, WriteCdr)]) == 1


def test_wrong_pins_hang_up_and_never_play_a_message():
    call, _ = start(ACCESS, caller="1001")
    call, _ = C.step(call, box())
    call, effects = press(call, "1#2#3#", 2.0)
    assert call.state is S.ENDED
    assert not [m for m in medias(effects) if isinstance(m, MediaPlay) and m.file.startswith("voicemail/1001/")]
    # an unknown mailbox (no PIN hash) behaves like a wrong PIN
    call, _ = start(ACCESS, caller="1001")
    call, _ = C.step(call, box(pin_hash=""))
    call, effects = press(call, "4711#4711#4711#", 2.0)
    assert call.state is S.ENDED and not cti(effects, "VOICEMAIL_SAVED")


def test_no_mailbox_or_no_keys_time_out():
    call, _ = start(ACCESS, caller="1001")
    call, _ = C.step(call, TimerFired(key="flow", at=10.1))  # the mailbox never came
    assert call.state is S.ENDED
    call, _ = start(ACCESS, caller="1001")
    call, _ = C.step(call, box(at=1.0))
    call, _ = C.step(call, TimerFired(key="flow", at=16.0))  # 15 s without a key
    assert call.state is S.ENDED
    # a mailbox arriving after the call ended is ignored
    assert C.step(call, box(at=17.0)) == (call, [])


# ---- an extension that does not answer sends the caller to its mailbox ----------------------


def ringing(voicemail="1001"):
    from engine.messages import MediaOriginate, RouteToExtension

    call, _ = C.new_call(ChannelCreated(call_id="c1", at=0.0, caller_id="+4930111", destination="1001",
                                        tenant="acme"))
    call, effects = C.step(call, RouteToExtension(call_id="c1", at=0.1, target="1001", timeout_s=20,
                                                  voicemail=voicemail))
    (orig,) = [m for m in medias(effects) if isinstance(m, MediaOriginate)]
    assert call.state is S.RINGING
    return call, orig.leg


def test_no_answer_goes_to_the_mailbox_and_a_message_is_left():
    call, leg = ringing()
    call, effects = C.step(call, TimerFired(key=f"ring:{leg}", at=20.1))
    assert call.state is S.IN_FLOW
    (in_flow,) = cti(effects, "CALL_IN_FLOW")
    assert in_flow.data["flow_id"] == "voicemail:1001" and in_flow.data["reason"] == "no_answer"
    # the mailbox's own greeting and max length are asked for first
    assert [e.data for e in cti(effects, "VOICEMAIL_SETTINGS")] == [{"box": "1001"}]
    assert not [m for m in medias(effects) if isinstance(m, MediaPlay)]
    call, effects = C.step(call, VoicemailBox(call_id="c1", at=20.2, box="1001", greeting="voicemail/1001/greet.wav",
                                              max_length_s=45))
    assert medias(effects) == [MediaPlay(call_id="c1", file="voicemail/1001/greet.wav")]
    call, effects = C.step(call, PlaybackFinished(call_id="c1", at=20.4, file="voicemail/1001/greet.wav"))
    assert medias(effects) == [MediaPlay(call_id="c1", file=BEEP)]
    call, effects = C.step(call, PlaybackFinished(call_id="c1", at=20.5, file=BEEP))
    (rec,) = [m for m in medias(effects) if isinstance(m, MediaRecordStart)]
    assert rec.path == "voicemail/1001/c1.wav" and rec.limit_s == 45
    call, effects = C.step(call, RecordingStopped(call_id="c1", at=30.5, path=rec.path, cause="success-silence"))
    (new,) = cti(effects, "VOICEMAIL_NEW")
    assert (new.data["box"], new.data["duration_s"]) == ("1001", 10.0) and call.state is S.ENDED
    assert len([e for e in effects if isinstance(e, WriteCdr)]) == 1


def test_without_the_mailbox_settings_the_node_uses_its_own_and_a_hangup_while_waiting_abandons():
    call, leg = ringing()
    call, _ = C.step(call, TimerFired(key=f"ring:{leg}", at=20.1))
    call, effects = C.step(call, TimerFired(key="flow", at=23.2))  # nothing came in 3 s
    assert medias(effects) == [MediaPlay(call_id="c1", file=BEEP)]
    call, effects = C.step(call, PlaybackFinished(call_id="c1", at=23.5, file=BEEP))
    assert [m.limit_s for m in medias(effects) if isinstance(m, MediaRecordStart)] == [120]
    call, leg = ringing()
    call, _ = C.step(call, TimerFired(key=f"ring:{leg}", at=20.1))
    call, effects = C.step(call, ChannelHangup(call_id="c1", at=21.0))
    assert [e.data["reason"] for e in cti(effects, "VOICEMAIL_ABANDONED")] == ["hangup_greeting"]


def test_busy_goes_to_the_mailbox_an_answer_or_no_mailbox_does_not():
    call, leg = ringing()
    call, effects = C.step(call, ChannelHangup(call_id="c1", at=1.0, leg=leg, cause="USER_BUSY"))
    assert call.state is S.IN_FLOW and cti(effects, "CALL_IN_FLOW")[0].data["reason"] == "busy"
    call, leg = ringing(voicemail="")
    call, effects = C.step(call, ChannelHangup(call_id="c1", at=1.0, leg=leg, cause="USER_BUSY"))
    assert call.state is S.ENDED and not cti(effects, "CALL_IN_FLOW")
    from engine.messages import ChannelAnswered

    call, leg = ringing()
    call, _ = C.step(call, ChannelAnswered(call_id="c1", at=2.0, leg=leg))
    assert call.state is S.ACTIVE and call.voicemail_box == ""
    call, effects = C.step(call, ChannelHangup(call_id="c1", at=9.0, leg=leg))
    assert call.state is S.ENDED and not cti(effects, "CALL_IN_FLOW")


def test_the_router_names_the_mailbox_of_an_extension_with_voicemail():
    import trio

    from adapters.postgres.config import Did, Extension, InMemoryConfigStore, NodeConfig, Tenant

    async def main():
        s = InMemoryConfigStore()
        await s.create(Tenant(tenant="t"))
        await s.create(Extension(tenant="t", extension="1001", voicemail=True))
        await s.create(Extension(tenant="t", extension="1002"))
        await s.create(Did(tenant="t", number="5001", destination="extension:1001"))
        return NodeConfig(await s.snapshot()).router()

    route = trio.run(main)
    by_did = route(ChannelCreated(call_id="a", at=0, destination="5001", tenant="t"))
    direct = route(ChannelCreated(call_id="b", at=0, destination="1001", tenant="t"))
    plain = route(ChannelCreated(call_id="c", at=0, destination="1002", tenant="t"))
    assert (by_did.voicemail, direct.voicemail, plain.voicemail) == ("1001", "1001", "")
