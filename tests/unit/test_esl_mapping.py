"""ESL <-> engine mapping: real FreeSWITCH 1.10.12 events in, media events out; every media
command out as the exact ESL bytes.

Rules: events come from the recordings in shared/esl/captures/fs-1.10.12, unchanged, except where a
test adds the two ``variable_callengine_*`` headers our own originate would have put on a channel
(said so where it happens). The mapping is pure, so nothing here runs trio.
"""

from __future__ import annotations

import ast
import os
from collections import Counter
from pathlib import Path

import pytest

from adapters.freeswitch import mapping as mp
from adapters.freeswitch.codec import EslEvent, EslParser
from adapters.freeswitch.mapping import (
    ChannelId,
    CommandError,
    DeviceEvent,
    EventMapper,
    OriginateSettings,
    Target,
    map_command,
    map_event,
)
from engine.messages import (
    ApplicationCompleted,
    ApplicationExecuted,
    ChannelAnswered,
    ChannelBridged,
    ChannelCreated,
    ChannelDestroyed,
    ChannelHangup,
    ChannelHangupComplete,
    ChannelHeld,
    ChannelProgress,
    ChannelUnbridged,
    ChannelUnheld,
    DtmfReceived,
    MediaAdopt,
    MediaAnswer,
    MediaBridge,
    MediaBroadcast,
    MediaCollectDigits,
    MediaConference,
    MediaHangup,
    MediaHold,
    MediaIntercept,
    MediaOriginate,
    MediaPark,
    MediaPlay,
    MediaRecordMask,
    MediaRecordStart,
    MediaRecordStop,
    MediaSendDtmf,
    MediaStopPlayback,
    MediaTransfer,
    MediaUnhold,
    PlaybackFinished,
    PlaybackStarted,
    RecordingStarted,
    RecordingStopped,
)


def _shared() -> Path | None:
    cands = [Path(__file__).resolve().parents[2].parent / "shared"]
    if os.environ.get("CALLENGINE_SHARED"):
        cands.append(Path(os.environ["CALLENGINE_SHARED"]))
    for c in cands:
        if (c / "esl" / "captures" / "fs-1.10.12").is_dir():
            return c
    return None


SHARED = _shared()
FS = SHARED / "esl" / "captures" / "fs-1.10.12" if SHARED else Path("/nonexistent")
needs_captures = pytest.mark.skipif(SHARED is None, reason="shared/esl/captures not found")


def events(name: str) -> list[EslEvent]:
    data = (FS / f"{name}.txt").read_bytes().split(b"\n", 1)[1]
    p = EslParser(eager_events=True)
    p.receive_data(data)
    p.receive_data(b"")
    return [f.event for f in p if f.event is not None and f.content_type != "command/reply"]


def ours(ev: EslEvent, call_id: str = "call-1", leg: str | None = None) -> EslEvent:
    """The same recorded event, as if the engine had originated that channel (our variables)."""
    raw = dict(ev.headers)
    raw["variable_callengine_call_id"] = call_id
    raw["variable_callengine_leg"] = leg or f"{call_id}-1"
    return EslEvent(raw, ev.body, "json", decoded=True)


def first(evs: list[EslEvent], name: str, **headers: str) -> EslEvent:
    for ev in evs:
        if ev.name == name and all(ev.get(k) == v for k, v in headers.items()):
            return ev
    raise AssertionError(f"no {name} with {headers}")


# ------------------------------------------------------------------------------ events


@needs_captures
def test_inbound_channel_is_leg_a_of_a_call_named_by_its_uuid() -> None:
    evs = events("02_bridge_two_legs")
    b = first(evs, "CHANNEL_CREATE", **{"Channel-Name": "loopback/7701-b"})
    m = map_event(b, now=12.5, node="fs1")
    assert m == ChannelCreated(call_id=b.unique_id, at=12.5, leg="a", node="fs1",
                               direction="inbound", caller_id="1001", caller_name="EslCapA",
                               destination="7701", tenant="default", variables={})


@needs_captures
def test_foreign_outbound_channel_maps_to_none_and_ours_to_its_leg() -> None:
    evs = events("02_bridge_two_legs")
    a = first(evs, "CHANNEL_CREATE", **{"Channel-Name": "loopback/7701-a"})
    assert map_event(a, now=1.0) is None  # originated by someone else: not ours to drive
    m = map_event(ours(a, "c9", "c9-1"), now=1.0, node="fs1")
    assert isinstance(m, ChannelCreated)
    assert (m.call_id, m.leg, m.direction) == ("c9", "c9-1", "outbound")


@needs_captures
def test_hangup_cause_bridge_and_unbridge_from_the_recording() -> None:
    evs = events("02_bridge_two_legs")
    busy = first(evs, "CHANNEL_HANGUP", **{"Channel-Name": "loopback/7702-b"})
    assert map_event(busy, now=2.0) == ChannelHangup(call_id=busy.unique_id, at=2.0,
                                                     cause="USER_BUSY")
    done = first(evs, "CHANNEL_HANGUP_COMPLETE", **{"Channel-Name": "loopback/7702-b"})
    assert map_event(done, now=2.0) == ChannelHangupComplete(call_id=done.unique_id, at=2.0,
                                                             cause="USER_BUSY")
    br = first(evs, "CHANNEL_BRIDGE")
    b_uuid = br.get("Bridge-B-Unique-ID")
    plain = map_event(ours(br, "c1", "a"), now=3.0)
    assert plain == ChannelBridged(call_id="c1", at=3.0, leg="a", other_leg=b_uuid)
    legs = {b_uuid: ChannelId("c1", "c1-2")}
    assert map_event(ours(br, "c1", "a"), now=3.0, legs=legs).other_leg == "c1-2"
    ub = first(evs, "CHANNEL_UNBRIDGE")
    assert map_event(ours(ub, "c1", "a"), now=4.0, legs=legs) == ChannelUnbridged(
        call_id="c1", at=4.0, leg="a", other_leg="c1-2")
    destroy = first(evs, "CHANNEL_DESTROY", **{"Channel-Name": "loopback/7701-b"})
    assert map_event(destroy, now=5.0) == ChannelDestroyed(call_id=destroy.unique_id, at=5.0)


@needs_captures
def test_dtmf_digits_are_url_decoded_and_duration_in_ms() -> None:
    evs = events("03_hold_dtmf_playback_record")
    dtmf = [e for e in evs if e.name == "DTMF" and e.get("Call-Direction") == "inbound"]
    assert dtmf, "the recording has RTP DTMF on the inbound SIP leg"
    assert "%23" in [e.raw_headers["DTMF-Digit"] for e in dtmf]
    got = [map_event(e, now=1.0) for e in dtmf]
    assert [m.digit for m in got] == ["1", "2", "3", "#"]
    assert all(isinstance(m, DtmfReceived) and m.duration_ms == 260 and m.leg == "a"
               for m in got)


@needs_captures
def test_hold_playback_record_execute_on_an_engine_leg() -> None:
    evs = [ours(e, "c3", "c3-1") if e.get("Call-Direction") == "outbound" else e
           for e in events("03_hold_dtmf_playback_record")]
    mapped = [m for m in (map_event(e, now=7.0, node="fs1") for e in evs) if m is not None]
    kinds = Counter(type(m).__name__ for m in mapped)
    assert kinds["ChannelHeld"] == 2 and kinds["ChannelUnheld"] == 2
    start = next(m for m in mapped if isinstance(m, PlaybackStarted))
    stop = next(m for m in mapped if isinstance(m, PlaybackFinished))
    assert start.file == stop.file == "tone_stream://%(500,500,440)" and stop.status == "done"
    rec0 = next(m for m in mapped if isinstance(m, RecordingStarted))
    rec1 = next(m for m in mapped if isinstance(m, RecordingStopped))
    assert rec0.path == rec1.path == "/var/rec/test_01.wav" and rec0.leg == "c3-1"
    assert rec1.cause  # Record-Completion-Cause is reported as is
    done = [m for m in mapped if isinstance(m, ApplicationCompleted) and m.app == "playback"]
    assert done and done[0].response == "FILE PLAYED" and done[0].call_id == "c3"
    answer_exec = [m for m in mapped if isinstance(m, ApplicationCompleted) and m.app == "answer"]
    assert answer_exec[0].response == ""  # _none_
    held = next(m for m in mapped if isinstance(m, (ChannelHeld, ChannelUnheld)))
    assert held.node == "fs1" and held.at == 7.0


@needs_captures
def test_progress_and_early_media() -> None:
    evs = events("09_baresip_sip_register_and_calls")
    pm = [map_event(ours(e), now=1.0) for e in evs if e.name == "CHANNEL_PROGRESS_MEDIA"]
    assert pm and all(m == ChannelProgress(call_id="call-1", leg="call-1-1", at=1.0,
                                           early_media=True) for m in pm)
    evs7 = events("07_background_jobs")
    p = [map_event(ours(e), now=1.0) for e in evs7 if e.name == "CHANNEL_PROGRESS"]
    assert p and not p[0].early_media
    ans = first(evs, "CHANNEL_ANSWER", **{"Call-Direction": "inbound"})
    assert map_event(ans, now=1.0) == ChannelAnswered(call_id=ans.unique_id, at=1.0)


@needs_captures
def test_background_job_failure_of_our_originate_is_the_legs_hangup() -> None:
    evs = events("07_background_jobs")
    fail = first(evs, "BACKGROUND_JOB", **{"Job-Command-Arg": "user/1005 &park"})
    assert map_event(fail, now=1.0) is None  # not an originate of ours
    raw = dict(fail.headers)
    raw["Job-Command-Arg"] = ("{origination_uuid=c7-2,callengine_call_id=c7,callengine_leg=c7-2,"
                              "originate_timeout=20}user/1005 &park()")
    m = map_event(EslEvent(raw, fail.body, "json", decoded=True), now=2.0, node="fs2")
    assert m == ChannelHangup(call_id="c7", leg="c7-2", at=2.0, node="fs2",
                              cause="USER_NOT_REGISTERED")
    ok = first(evs, "BACKGROUND_JOB", **{"Job-Command": "originate"})
    ok_raw = dict(ok.headers)
    ok_raw["Job-Command-Arg"] = "{callengine_call_id=c7,callengine_leg=c7-3}loopback/1 &park()"
    okev = EslEvent(ok_raw, "+OK 549d2e40-8888-4155-8f91-81d9b64e05b2\n", "json", decoded=True)
    assert map_event(okev, now=2.0) is None  # success: the channel's own events tell


@needs_captures
def test_sofia_register_and_unregister_are_device_events() -> None:
    evs = events("09_baresip_sip_register_and_calls")
    got = [m for m in (map_event(e, now=3.0, node="fs1") for e in evs)
           if isinstance(m, DeviceEvent)]
    assert [(m.extension, m.registered) for m in got] == [
        ("1000", True), ("1001", True), ("1001", False), ("1000", False)]
    assert got[0] == DeviceEvent(extension="1000", registered=True, at=3.0,
                                 contact="sip:1000-0x561c3e1daec0@127.0.0.1:5071",
                                 registration_id="7be6ea700ef47685", reason="register",
                                 node="fs1", realm="127.0.0.1")
    assert got[3].registration_id == "7be6ea700ef47685" and got[3].reason == "unregister"
    attempts = [e for e in evs if e.subclass == "sofia::register_attempt"]
    assert attempts and all(map_event(e, now=0.0) is None for e in attempts)


def test_sofia_expire_is_unregistered() -> None:
    ev = EslEvent({"Event-Name": "CUSTOM", "Event-Subclass": "sofia::expire",
                   "username": "1002", "contact": '"x" <sip:1002@10.0.0.9:5060>',
                   "call-id": "abc"}, "", "json", decoded=True)
    assert map_event(ev, now=1.0) == DeviceEvent(extension="1002", registered=False, at=1.0,
                                                 contact="sip:1002@10.0.0.9:5060",
                                                 registration_id="abc", reason="expire")


@needs_captures
def test_conference_members_join_and_leave() -> None:
    evs = events("04_conference")
    got = [map_event(e, now=1.0) for e in evs if e.subclass == "conference::maintenance"]
    joined = [m for m in got if isinstance(m, ApplicationExecuted)]
    left = [m for m in got if isinstance(m, ApplicationCompleted)]
    assert len(joined) == 2 and len(left) == 2
    assert {m.arg for m in joined + left} == {"esl_cap_room"}
    assert {m.app for m in joined + left} == {"conference"}
    assert sum(m is None for m in got) == 13  # create, play-file, floor, mute... not calls' business


@needs_captures
def test_json_and_xml_recordings_map_exactly_like_each_other() -> None:
    def seq(name: str) -> list:
        return [m for m in (map_event(e, now=0.0) for e in events(name)) if m is not None]

    j, x = seq("05_json_format_call"), seq("05_xml_format_call")
    assert [type(m) for m in j] == [type(m) for m in x]
    assert len(j) >= 5


@needs_captures
def test_every_table_entry_is_exercised_by_the_recordings_and_the_rest_is_counted() -> None:
    mapper = EventMapper("fs1")
    seen = set()
    for name in ("02_bridge_two_legs", "03_hold_dtmf_playback_record", "04_conference",
                 "07_background_jobs", "09_baresip_sip_register_and_calls"):
        for ev in events(name):
            if ev.get("Call-Direction") == "outbound":
                ev = ours(ev)
            if ev.name == "BACKGROUND_JOB" and ev.get("Job-Command") == "originate":
                raw = dict(ev.headers)
                raw["Job-Command-Arg"] = "{callengine_call_id=c,callengine_leg=c-1}" \
                    + raw["Job-Command-Arg"]
                ev = EslEvent(raw, ev.body, "json", decoded=True)
            if mapper(ev, 0.0) is not None:
                seen.add(mp.event_key(ev))
    assert set(mp.EVENT_TABLE) - seen == {"CUSTOM::sofia::expire"}  # not in any recording
    assert mapper.ignored["HEARTBEAT"] >= 1 and mapper.ignored["CHANNEL_STATE"] > 10
    assert mapper.ignored["API"] > 0 and mapper.mapped > 100


def test_mapping_module_is_pure() -> None:
    tree = ast.parse(Path(mp.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom)}
    assert not imported & {"trio", "socket", "time", "asyncio", "random", "logging"}


# ------------------------------------------------------------------------------ commands

A = "3f1c0e57-0000-4000-8000-000000000001"
B = "3f1c0e57-0000-4000-8000-000000000002"


def resolve(call_id: str, leg: str) -> Target:
    return {("c1", "a"): Target(A), ("c1", "c1-1"): Target(B),
            ("c2", "a"): Target(A, bridged=True)}[(call_id, leg)]


COMMANDS = [
    (MediaAnswer(call_id="c1"),
     [b"sendmsg " + A.encode() + b"\ncall-command: execute\nexecute-app-name: answer\n\n"]),
    (MediaHangup(call_id="c1", cause="USER_BUSY"), [f"api uuid_kill {A} USER_BUSY\n\n".encode()]),
    (MediaHangup(call_id="c1", leg="c1-1"), [f"api uuid_kill {B} NORMAL_CLEARING\n\n".encode()]),
    (MediaBridge(call_id="c1", other_leg="c1-1"), [f"api uuid_bridge {A} {B}\n\n".encode()]),
    (MediaHold(call_id="c1"), [f"api uuid_setvar {A} hold_music local_stream://moh\n\n".encode(),
                               f"api uuid_hold {A}\n\n".encode()]),
    (MediaUnhold(call_id="c1"), [f"api uuid_hold off {A}\n\n".encode()]),
    (MediaPlay(call_id="c1", file="/s/hello.wav", loops=2),
     [f"sendmsg {A}\ncall-command: execute\nexecute-app-name: playback\n"
      "execute-app-arg: /s/hello.wav\nloops: 2\n\n".encode()]),
    (MediaPlay(call_id="c2", file="/s/hello.wav"),
     [f"api uuid_broadcast {A} /s/hello.wav aleg\n\n".encode()]),
    (MediaStopPlayback(call_id="c1"), [f"api uuid_break {A} all\n\n".encode()]),
    (MediaCollectDigits(call_id="c1", prompt="/s/menu.wav", min_digits=1, max_digits=4,
                        timeout_s=5),
     [f"sendmsg {A}\ncall-command: execute\nexecute-app-name: play_and_get_digits\n"
      "execute-app-arg: 1 4 1 5000 # /s/menu.wav silence_stream://250 callengine_digits "
      "\\d{1,4} 5000\n\n".encode()]),
    (MediaTransfer(call_id="c1", destination="2000"), [f"api uuid_transfer {A} 2000\n\n".encode()]),
    (MediaPark(call_id="c1"), [f"api uuid_transfer {A} park inline\n\n".encode()]),
    (MediaPark(call_id="c1", slot="701"),
     [f"api uuid_transfer {A} park+701 XML callengine_park\n\n".encode()]),
    (MediaIntercept(call_id="c2", other_call_id="c1", other_leg="c1-1"),
     [f"api uuid_transfer {A} intercept:{B} inline\n\n".encode()]),
    # feature-code pickup: the picker's channel becomes leg c1-1 of c1 (its variables say so)
    (MediaAdopt(call_id="c1", leg="c1-1"),
     [f"api uuid_setvar {B} callengine_call_id c1\n\n".encode(),
      f"api uuid_setvar {B} callengine_leg {B}\n\n".encode()]),
    (MediaConference(call_id="c1", room="r1"),
     [f"api uuid_transfer {A} conference:r1@default inline\n\n".encode()]),
    (MediaSendDtmf(call_id="c1", digits="12#"), [f"api uuid_send_dtmf {A} 12#\n\n".encode()]),
    (MediaRecordStart(call_id="c1", path="/rec/c1.wav"),
     [f"api uuid_record {A} start /rec/c1.wav\n\n".encode()]),
    # a voicemail message: the record app with its time limit and silence detection
    (MediaRecordStart(call_id="c1", path="voicemail/1001/c1.wav", limit_s=120, silence_threshold=200,
                      silence_hits=3),
     [f"sendmsg {A}\ncall-command: execute\nexecute-app-name: record\n"
      "execute-app-arg: voicemail/1001/c1.wav 120 200 3\n\n".encode()]),
    (MediaRecordStart(call_id="c1", path="voicemail/1001/c1.wav", limit_s=30),
     [f"sendmsg {A}\ncall-command: execute\nexecute-app-name: record\n"
      "execute-app-arg: voicemail/1001/c1.wav 30\n\n".encode()]),
    (MediaRecordStop(call_id="c1"), [f"api uuid_record {A} stop all\n\n".encode()]),
    (MediaRecordStop(call_id="c1", path="/rec/c1.wav"),
     [f"api uuid_record {A} stop /rec/c1.wav\n\n".encode()]),
    (MediaRecordMask(call_id="c1", path="/rec/c1.wav"),
     [f"api uuid_record {A} mask /rec/c1.wav\n\n".encode()]),
    (MediaRecordMask(call_id="c1", path="/rec/c1.wav", mask=False),
     [f"api uuid_record {A} unmask /rec/c1.wav\n\n".encode()]),
    (MediaBroadcast(call_id="c1", file="/snd/consent.wav"),
     [f"api uuid_broadcast {A} /snd/consent.wav both\n\n".encode()]),
]


@pytest.mark.parametrize(("cmd", "expected"), COMMANDS, ids=lambda x: type(x).__name__)
def test_command_table(cmd, expected) -> None:
    assert map_command(cmd, resolve) == expected


def test_every_media_command_type_has_a_table_entry_and_a_test() -> None:
    from engine.messages import MediaCommand

    assert set(mp.COMMAND_TABLE) == set(MediaCommand.__args__)
    tested = {type(c) for c, _ in COMMANDS} | {MediaOriginate}
    assert tested == set(MediaCommand.__args__)


def test_originate_goes_through_bgapi_with_our_variables_and_job_uuid() -> None:
    cmd = MediaOriginate(call_id="c1", leg="c1-1", destination="1000", timeout_s=20,
                         caller_id="5551234", variables={"sip_h_X-Queue": "sales, east"})
    (data,) = map_command(cmd, resolve, job_uuid="job-1")
    assert data == (b"bgapi originate {origination_uuid=c1-1,callengine_call_id=c1,"
                    b"callengine_leg=c1-1,originate_timeout=20,hangup_after_bridge=true,"
                    b"origination_caller_id_number=5551234,sip_h_X-Queue='sales\\, east'}"
                    b"user/1000 &park()\nJob-UUID: job-1\n\n")
    # click-to-call: leg "a" is originated with the call id as its UUID
    (a,) = map_command(MediaOriginate(call_id="c5", leg="a", destination="sofia/gw/123"))
    assert a.startswith(b"bgapi originate {origination_uuid=c5,callengine_call_id=c5,"
                        b"callengine_leg=a,") and b"}sofia/gw/123 &park()" in a
    custom = OriginateSettings(dial_template="sofia/internal/{dest}@pbx.example")
    (c,) = map_command(MediaOriginate(call_id="c6", leg="c6-1", destination="7"),
                       settings=custom)
    assert b"}sofia/internal/7@pbx.example &park()" in c


def test_default_resolution_uses_call_id_and_leg_ids() -> None:
    assert map_command(MediaHangup(call_id="c1", leg="c1-2")) == [
        b"api uuid_kill c1-2 NORMAL_CLEARING\n\n"]
    assert map_command(MediaAnswer(call_id="u-9"))[0].startswith(b"sendmsg u-9\n")


@pytest.mark.parametrize("cmd", [
    MediaPlay(call_id="c1", file="/has space.wav"),
    MediaRecordStart(call_id="c1", path="/x\n/y.wav"),
    MediaSendDtmf(call_id="c1", digits="12x"),
    MediaOriginate(call_id="c1", leg="c1-1", destination="1000\napi hupall"),
    MediaOriginate(call_id="c1", leg="c1-1", destination="1000", variables={"a b": "x"}),
    MediaOriginate(call_id="c1", leg="c1-1", destination="1000", variables={"x": "1\r\n"}),
    MediaHangup(call_id="c1", cause="NORMAL CLEARING"),
], ids=lambda c: type(c).__name__)
def test_arguments_esl_cannot_carry_are_refused(cmd) -> None:
    with pytest.raises(CommandError):
        map_command(cmd, resolve)
