"""Property test (hypothesis) of voicemail in the call machine: a call routed to an extension with a
mailbox, then random ring timers, leg answers and hang-ups (busy, no answer, normal), playbacks
ending (greeting, beep), RECORD_STOPs (of the message or of another file), flow timers and the
caller's hang-up and the mailbox's settings arriving (or not), in any order and with duplicates. Invariants:
- the call ends with exactly one CDR, and nothing is published after it;
- at most one of VOICEMAIL_NEW / VOICEMAIL_ABANDONED, and only after the call entered the
  voicemail flow; never for a call an extension answered;
- VOICEMAIL_NEW's duration is within [min_length_s, max_length_s] and its message id is the call's;
- the recording is started at most once, and only after the extension failed to answer.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.fsm import call as C
from engine.messages import (
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    MediaOriginate,
    MediaRecordStart,
    PlaybackFinished,
    PublishCti,
    RecordingStopped,
    RouteToExtension,
    SendMedia,
    TimerFired,
    VoicemailBox,
    WriteCdr,
)

S = C.CallState
BEEP = "tone_stream://%(250,0,1000)"
PATH = "voicemail/1001/c1.wav"

ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("ring_timer"), st.integers(0, 3)),
    st.tuples(st.just("answer"), st.integers(0, 3)),
    st.tuples(st.just("leg_hangup"), st.sampled_from(["NO_ANSWER", "USER_BUSY", "NORMAL_CLEARING"])),
    st.tuples(st.just("beep_done"), st.just(0)),
    st.tuples(st.just("record_stop"), st.sampled_from([PATH, "other.wav", ""])),
    st.tuples(st.just("flow_timer"), st.integers(0, 200)),
    st.tuples(st.just("hangup"), st.just(0)),
    st.tuples(st.just("wait"), st.integers(1, 150)),
    st.tuples(st.just("settings"), st.sampled_from([0, 30, 60])),
), max_size=20)


@settings(max_examples=400, deadline=None)
@given(actions=ACTIONS)
def test_voicemail_call_invariants(actions):
    call, _ = C.new_call(ChannelCreated(call_id="c1", at=0.0, caller_id="+4930", destination="1001", tenant="t"))
    call, effects = C.step(call, RouteToExtension(call_id="c1", at=0.1, target="1001", timeout_s=20,
                                                  voicemail="1001"))
    t = 0.1
    legs = [e.command.leg for e in effects if isinstance(e, SendMedia) and isinstance(e.command, MediaOriginate)]
    names: list[str] = []
    cdrs = 0
    records = 0
    in_flow = False
    answered_by_extension = False
    after_end: list[str] = []
    for kind, arg in actions:
        t += 0.5
        match kind:
            case "ring_timer":
                ev = TimerFired(key=f"ring:{legs[arg % len(legs)]}", at=t)
            case "answer":
                ev = ChannelAnswered(call_id="c1", at=t, leg=legs[arg % len(legs)])
            case "leg_hangup":
                ev = ChannelHangup(call_id="c1", at=t, leg=legs[0], cause=arg)
            case "beep_done":
                ev = PlaybackFinished(call_id="c1", at=t, file=BEEP)
            case "record_stop":
                ev = RecordingStopped(call_id="c1", at=t, path=arg, cause="success-silence")
            case "flow_timer":
                t += arg
                ev = TimerFired(key="flow", at=t)
            case "wait":
                t += arg
                continue
            case "settings":  # the mailbox's settings (no greeting; max length 0 = the node's own)
                ev = VoicemailBox(call_id="c1", at=t, box="1001", max_length_s=arg)
            case _:
                ev = ChannelHangup(call_id="c1", at=t)
        was_ended = call.state is S.ENDED
        was_ringing = call.state is S.RINGING
        call, effects = C.step(call, ev)
        if kind == "answer" and was_ringing and call.state is S.ACTIVE:
            answered_by_extension = True
        for e in effects:
            if was_ended:
                after_end.append(type(e).__name__)
            if isinstance(e, PublishCti):
                names.append(e.event.name)
                if e.event.name == "CALL_IN_FLOW":
                    in_flow = True
                if e.event.name in ("VOICEMAIL_NEW", "VOICEMAIL_ABANDONED"):
                    assert in_flow and not answered_by_extension
                if e.event.name == "VOICEMAIL_NEW":
                    assert e.event.call_id == "c1" and e.event.data["message_id"] == "c1"
                    assert 1.0 <= float(e.event.data["duration_s"]) <= 120.0  # type: ignore[arg-type]
            elif isinstance(e, WriteCdr):
                cdrs += 1
            elif isinstance(e, SendMedia) and isinstance(e.command, MediaRecordStart):
                records += 1
                assert in_flow and not answered_by_extension
            elif isinstance(e, SendMedia) and isinstance(e.command, MediaOriginate):
                legs.append(e.command.leg)
    if call.state is not S.ENDED:
        call, effects = C.step(call, ChannelHangup(call_id="c1", at=t + 1000))
        cdrs += sum(isinstance(e, WriteCdr) for e in effects)
        names += [e.event.name for e in effects if isinstance(e, PublishCti)]
    assert call.state is S.ENDED and cdrs == 1 and after_end == []
    assert names.count("VOICEMAIL_NEW") + names.count("VOICEMAIL_ABANDONED") <= 1
    assert records <= 1
    if answered_by_extension:
        assert "CALL_IN_FLOW" not in names
