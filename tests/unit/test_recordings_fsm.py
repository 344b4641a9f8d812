"""Recordings in the call machine (#10 part 2, docs/recordings.md): consent before recording,
pause/resume (mask), always-on per queue or extension, compliance override, the end of the call."""

from __future__ import annotations

from engine.fsm import call as C
from engine.messages import (
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    ConnectAgent,
    MediaBroadcast,
    MediaRecordMask,
    MediaRecordStart,
    MediaRecordStop,
    PauseRecording,
    PlaybackFinished,
    PublishCti,
    RecordingStopped,
    Reply,
    ResumeRecording,
    RouteToExtension,
    RouteToQueue,
    SendMedia,
    StartRecording,
    StopRecording,
)
from tests.support.builders import call_in, steps

S = C.CallState


def drive(call, *events):
    return steps(C.step, call, *events)


def media(effects, kind):
    return [e.command for e in effects if isinstance(e, SendMedia) and isinstance(e.command, kind)]


def cti(effects, name=None):
    return [e.event for e in effects if isinstance(e, PublishCti) and (name is None or e.event.name == name)]


def reply(effects):
    [r] = [e for e in effects if isinstance(e, Reply)]
    return r


def test_start_pause_resume_stop_sends_record_mask_unmask_stop_and_accounts_paused_time():
    call = call_in(S.ACTIVE)
    call, fx = drive(call, StartRecording(call_id="c1", at=10.0, request_id="r", by="agent:a1"))
    [start] = media(fx, MediaRecordStart)
    assert start.path == "c1.wav" and call.recording == "c1.wav"
    [ev] = cti(fx, "CALL_RECORDING_STARTED")
    assert ev.data["recording_id"] == "c1-r1" and ev.data["by"] == "agent:a1" and ev.data["extension"] == "1001"
    call, fx = drive(call, PauseRecording(call_id="c1", at=12.0, request_id="r"))
    assert media(fx, MediaRecordMask) == [MediaRecordMask(call_id="c1", path="c1.wav", mask=True)]
    assert cti(fx, "CALL_RECORDING_PAUSED") and call.rec.paused
    call, fx = drive(call, PauseRecording(call_id="c1", at=12.5, request_id="r"))
    assert reply(fx).code == "FAILED_PRECONDITION" and not media(fx, MediaRecordMask)
    call, fx = drive(call, ResumeRecording(call_id="c1", at=15.0, request_id="r"))
    assert media(fx, MediaRecordMask) == [MediaRecordMask(call_id="c1", path="c1.wav", mask=False)]
    assert cti(fx, "CALL_RECORDING_RESUMED")[0].data["paused_s"] == 3.0
    call, fx = drive(call, PauseRecording(call_id="c1", at=20.0), StopRecording(call_id="c1", at=21.0, request_id="s"))
    [stop] = media(fx, MediaRecordStop)
    assert stop.path == "c1.wav" and call.rec is None and call.recording == ""
    [ev] = cti(fx, "CALL_RECORDING_STOPPED")
    assert ev.data["paused_s"] == 4.0 and ev.data["duration_s"] == 11.0 and ev.data["reason"] == "stopped"
    assert ev.data["started_at"] == 10.0
    # a second recording gets its own id and file
    call, fx = drive(call, StartRecording(call_id="c1", at=30.0))
    assert media(fx, MediaRecordStart)[0].path == "c1-2.wav" and call.rec.id == "c1-r2"


def test_resume_without_pause_and_pause_without_recording_are_refused():
    call = call_in(S.ACTIVE)
    _, fx = drive(call, ResumeRecording(call_id="c1", at=5.0, request_id="r"))
    assert reply(fx).code == "FAILED_PRECONDITION"
    _, fx = drive(call, PauseRecording(call_id="c1", at=5.0, request_id="r"))
    assert reply(fx).code == "FAILED_PRECONDITION"
    _, fx = drive(call_in(S.QUEUED), PauseRecording(call_id="c1", at=5.0, request_id="r"))
    assert reply(fx).code == "FAILED_PRECONDITION"


def test_consent_plays_to_both_and_recording_starts_only_after_it_finished():
    call = call_in(S.ACTIVE)
    call, fx = drive(call, StartRecording(call_id="c1", at=10.0, request_id="r", consent="consent.wav"))
    assert media(fx, MediaBroadcast) == [MediaBroadcast(call_id="c1", file="consent.wav")]
    assert not media(fx, MediaRecordStart) and call.recording == "" and call.rec.stage == "consent"
    assert reply(fx).data["stage"] == "consent" and cti(fx, "CALL_RECORDING_CONSENT")
    # pausing during the announcement: nothing is recorded yet
    _, fx = drive(call, PauseRecording(call_id="c1", at=10.5, request_id="p"))
    assert reply(fx).code == "FAILED_PRECONDITION"
    # the other leg's end of playback, another file's: not yet
    call, fx = drive(call, PlaybackFinished(call_id="c1", at=11.0, leg="c1-1", file="consent.wav"),
                     PlaybackFinished(call_id="c1", at=11.0, leg="a", file="other.wav"))
    assert not media(fx, MediaRecordStart)
    call, fx = drive(call, PlaybackFinished(call_id="c1", at=14.0, leg="a", file="consent.wav"))
    [start] = media(fx, MediaRecordStart)
    assert call.recording == start.path and cti(fx, "CALL_RECORDING_STARTED")[0].at == 14.0
    call, fx = drive(call, PlaybackFinished(call_id="c1", at=15.0, leg="a", file="consent.wav"))
    assert not media(fx, MediaRecordStart)  # a duplicate starts nothing


def test_stop_during_consent_cancels_without_a_stop_command_or_event():
    call, _ = drive(call_in(S.ACTIVE), StartRecording(call_id="c1", at=10.0, consent="consent.wav"))
    call, fx = drive(call, StopRecording(call_id="c1", at=11.0, request_id="s"),
                     PlaybackFinished(call_id="c1", at=12.0, leg="a", file="consent.wav"))
    assert not media(fx, MediaRecordStop) and not media(fx, MediaRecordStart) and not cti(fx, "CALL_RECORDING_STOPPED")
    assert call.rec is None


def test_always_on_queue_records_when_the_agent_answers_with_consent_and_is_a_compliance_recording():
    call, _ = C.new_call(ChannelCreated(call_id="c1", at=0.0, caller_id="+100", destination="5000"))
    call, fx = drive(call, RouteToQueue(call_id="c1", at=1.0, queue_id="q1"),
                     ConnectAgent(call_id="c1", at=2.0, queue_id="q1", offer_id="o1", agent_id="a1",
                                  extension="1001", record=True, record_consent="consent.wav"))
    assert not media(fx, MediaBroadcast)
    call, fx = drive(call, ChannelAnswered(call_id="c1", at=3.0, leg="c1-1"))
    assert media(fx, MediaBroadcast) and not media(fx, MediaRecordStart)
    call, fx = drive(call, PlaybackFinished(call_id="c1", at=6.0, leg="a", file="consent.wav"))
    [ev] = cti(fx, "CALL_RECORDING_STARTED")
    assert ev.data["by"] == "auto:queue:q1" and ev.data["compliance"] is True
    for cmd in (StopRecording(call_id="c1", at=7.0, request_id="x"), PauseRecording(call_id="c1", at=7.0, request_id="x")):
        _, fx = drive(call, cmd)
        assert reply(fx).code == "PERMISSION_DENIED" and not media(fx, MediaRecordStop) and not media(fx, MediaRecordMask)
    _, fx = drive(call, StopRecording(call_id="c1", at=7.0, request_id="x", override=True))
    assert media(fx, MediaRecordStop)
    # the end of the call ends the recording: one STOPPED (no uuid_record stop: the channel is gone)
    call, fx = drive(call, ChannelHangup(call_id="c1", at=9.0, leg="a"))
    [ev] = cti(fx, "CALL_RECORDING_STOPPED")
    assert ev.data["reason"] == "call_ended" and ev.data["duration_s"] == 3.0
    assert not media(fx, MediaRecordStop)
    names = [e.name for e in cti(fx)]
    assert names.index("CALL_RECORDING_STOPPED") < names.index("CALL_ENDED")


def test_always_on_extension_without_consent_records_at_answer():
    call, _ = C.new_call(ChannelCreated(call_id="c1", at=0.0, caller_id="+100", destination="5000"))
    call, fx = drive(call, RouteToExtension(call_id="c1", at=1.0, target="1002", record=True),
                     ChannelAnswered(call_id="c1", at=2.0, leg="c1-1"))
    [start] = media(fx, MediaRecordStart)
    assert cti(fx, "CALL_RECORDING_STARTED")[0].data["by"] == "auto:extension:1002"
    # without the flag nothing is recorded
    call2, _ = C.new_call(ChannelCreated(call_id="c2", at=0.0, caller_id="+100", destination="5000"))
    _, fx = drive(call2, RouteToExtension(call_id="c2", at=1.0, target="1002"),
                  ChannelAnswered(call_id="c2", at=2.0, leg="c2-1"))
    assert not media(fx, MediaRecordStart)


def test_media_server_stop_of_the_current_file_ends_it_a_late_one_of_an_earlier_file_does_not():
    call, _ = drive(call_in(S.ACTIVE), StartRecording(call_id="c1", at=10.0), StopRecording(call_id="c1", at=11.0),
                    StartRecording(call_id="c1", at=12.0))
    call, fx = drive(call, RecordingStopped(call_id="c1", at=12.5, path="c1.wav"))
    assert call.rec is not None and not cti(fx)
    call, fx = drive(call, RecordingStopped(call_id="c1", at=13.0, path="c1-2.wav", cause="limit"))
    assert call.rec is None and cti(fx, "CALL_RECORDING_STOPPED")[0].data["reason"] == "limit"


def test_an_always_on_queue_tells_the_call_to_record_when_it_connects_an_agent():
    from engine.fsm import queue as Q
    from engine.messages import AgentStatus, QueueCall, ReservationAccepted, ReserveAgent, Send

    def connect(**cfg):
        q = Q.new_queue(Q.QueueConfig(queue_id="q1", **cfg))
        effects = []
        for ev in (AgentStatus(queue_id="q1", agent_id="a1", at=0.0, logged_in=True, available=True, extension="1001"),
                   QueueCall(queue_id="q1", call_id="c1", at=1.0)):
            q, out = Q.step(q, ev)
            effects.extend(out)
        [r] = [e.message for e in effects if isinstance(e, Send) and isinstance(e.message, ReserveAgent)]
        q, out = Q.step(q, ReservationAccepted(queue_id="q1", agent_id="a1", at=2.0, offer_id=r.offer_id,
                                               extension="1001"))
        [c] = [e.message for e in out if isinstance(e, Send) and isinstance(e.message, ConnectAgent)]
        return c

    c = connect(record=True, record_consent="consent.wav")
    assert c.record and c.record_consent == "consent.wav"
    assert not connect().record


def test_a_consent_the_switch_never_reports_finished_gives_the_recording_up_after_the_timeout():
    from engine.messages import CancelTimer, StartTimer, TimerFired

    call, fx = drive(call_in(S.ACTIVE), StartRecording(call_id="c1", at=10.0, consent="consent.wav"))
    [timer] = [e for e in fx if isinstance(e, StartTimer)]
    assert timer.key == C.CONSENT_TIMER and timer.deadline == 10.0 + C.CONSENT_TIMEOUT_S
    call, fx = drive(call, TimerFired(key=C.CONSENT_TIMER, at=timer.deadline))
    [failed] = cti(fx, "CALL_RECORDING_FAILED")
    assert failed.data["reason"] == "consent_timeout" and call.rec is None and not media(fx, MediaRecordStart)
    call, fx = drive(call, PlaybackFinished(call_id="c1", at=timer.deadline + 1, leg="a", file="consent.wav"))
    assert not media(fx, MediaRecordStart)  # too late: never recorded without a new start
    # finished in time: the timer is cancelled, and a late firing changes nothing
    call, _ = drive(call_in(S.ACTIVE), StartRecording(call_id="c1", at=10.0, consent="consent.wav"))
    call, fx = drive(call, PlaybackFinished(call_id="c1", at=15.0, leg="a", file="consent.wav"))
    assert [e.key for e in fx if isinstance(e, CancelTimer)] == [C.CONSENT_TIMER] and media(fx, MediaRecordStart)
    call, fx = drive(call, TimerFired(key=C.CONSENT_TIMER, at=130.0))
    assert call.rec is not None and call.rec.stage == "recording" and not cti(fx)


def test_a_blind_transfer_to_an_always_on_extension_records_once_it_answers():
    from engine.messages import BlindTransfer

    call, fx = drive(call_in(S.ACTIVE), BlindTransfer(call_id="c1", at=5.0, target="1002", record=True))
    assert not media(fx, MediaRecordStart)
    leg = call.ringing[0].id
    call, fx = drive(call, ChannelAnswered(call_id="c1", at=6.0, leg=leg))
    [ev] = cti(fx, "CALL_RECORDING_STARTED")
    assert ev.data["by"] == "auto:extension:1002" and ev.data["compliance"] is True
    # to one without the flag: nothing
    call, fx = drive(call_in(S.ACTIVE), BlindTransfer(call_id="c1", at=5.0, target="1003"))
    _, fx = drive(call, ChannelAnswered(call_id="c1", at=6.0, leg=call.ringing[0].id))
    assert not media(fx, MediaRecordStart)


def test_a_flow_transfer_to_an_always_on_extension_records_and_keeps_its_mailbox():
    """A flow's transfer node carries the target extension's flags (``callengine run`` fills them
    from the row, ``fill_flow_targets``), as the DID router gives them to a direct call: before,
    a call an IVR sent to an always-on extension was not recorded."""
    from engine.flows.model import Flow, TargetFlags, TransferNode, fill_flow_targets
    from engine.messages import EnterFlow

    flow = Flow(id="ivr", start="to", nodes={"to": TransferNode(target="1002", timeout_s=20)})
    rows = {"1002": TargetFlags(record=True, record_consent="/snd/rec.wav", voicemail="1002")}
    filled = fill_flow_targets(flow, rows.get)
    call, _ = C.new_call(ChannelCreated(call_id="c1", at=0.0, caller_id="+100", destination="5000"))
    call, fx = drive(call, EnterFlow(call_id="c1", at=1.0, flow_id="ivr", flow=filled))
    assert call.state is S.RINGING and call.voicemail_box == "1002"
    call, fx = drive(call, ChannelAnswered(call_id="c1", at=2.0, leg="c1-1"))
    assert [b.file for b in media(fx, MediaBroadcast)] == ["/snd/rec.wav"] and not media(fx, MediaRecordStart)
    call, fx = drive(call, PlaybackFinished(call_id="c1", at=3.0, leg="a", file="/snd/rec.wav"))
    [start] = media(fx, MediaRecordStart)
    assert cti(fx, "CALL_RECORDING_STARTED")[0].data["by"] == "auto:extension:1002"
    # the flow unfilled (no row for the target) records nothing
    call2, _ = C.new_call(ChannelCreated(call_id="c2", at=0.0, caller_id="+100", destination="5000"))
    _, fx = drive(call2, EnterFlow(call_id="c2", at=1.0, flow_id="ivr", flow=fill_flow_targets(flow, {}.get)),
                  ChannelAnswered(call_id="c2", at=2.0, leg="c2-1"))
    assert not media(fx, MediaRecordStart) and not media(fx, MediaBroadcast)


def test_fill_flow_targets_adds_the_rows_flags_and_never_turns_recording_off():
    from engine.flows.model import Flow, HangupNode, TargetFlags, TransferNode, fill_flow_targets

    nodes = {"a": TransferNode(target="1001"), "b": TransferNode(target="1002", record=True, record_consent="/mine.wav"),
             "c": TransferNode(target="+3225551234"), "d": TransferNode(target="1003", voicemail="2000"),
             "h": HangupNode()}
    flow = Flow(id="f", start="a", nodes=nodes)
    rows = {"1001": TargetFlags(record=True, record_consent="/row.wav", voicemail="1001"),
            "1002": TargetFlags(record=False, record_consent=""),
            "1003": TargetFlags(voicemail="1003")}
    got = fill_flow_targets(flow, rows.get).nodes
    assert (got["a"].record, got["a"].record_consent, got["a"].voicemail) == (True, "/row.wav", "1001")
    assert (got["b"].record, got["b"].record_consent) == (True, "/mine.wav")  # the flow's own wins
    assert got["c"] is nodes["c"] and got["h"] is nodes["h"]  # not an extension: unchanged
    assert got["d"].voicemail == "2000" and not got["d"].record
    assert fill_flow_targets(flow, {}.get) is flow
