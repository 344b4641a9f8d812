"""Property test (hypothesis) of recordings in the call machine (#10 part 2, docs/recordings.md).

From an active agent call, random sequences of start (with or without consent, compliance or not),
stop (with or without override), pause, resume, end-of-playback events (the right file or another,
leg "a" or the agent's, duplicated), media-side RECORD_STOP (current file or an old one), hold and
retrieve, then the caller hangs up. Invariants:
- nothing is recorded before the consent announcement finished: a ``uuid_record start`` follows
  the announcement's PlaybackFinished on leg "a" (and never happens while one is pending);
- mask only while recording and not masked, unmask only while masked;
- one row per recording: every CALL_RECORDING_STARTED has exactly one CALL_RECORDING_STOPPED with
  the same id (the call's end closes the last one), ids are unique, and at most one recording runs;
- a compliance recording is never stopped or paused by a command without override;
- paused time never exceeds the recording's duration.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.fsm import call as C
from engine.messages import (
    CancelTimer,
    ChannelHangup,
    Hold,
    MediaBroadcast,
    MediaRecordMask,
    MediaRecordStart,
    PauseRecording,
    PlaybackFinished,
    PublishCti,
    RecordingStopped,
    ResumeRecording,
    Retrieve,
    SendMedia,
    StartRecording,
    StartTimer,
    StopRecording,
    TimerFired,
)
from tests.support.builders import call_in

S = C.CallState
CONSENT = "consent.wav"

ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("start"), st.booleans(), st.booleans()),          # consent?, compliance?
    st.tuples(st.just("stop"), st.booleans(), st.just(False)),          # override?
    st.tuples(st.just("pause"), st.booleans(), st.just(False)),         # override?
    st.tuples(st.just("resume"), st.just(False), st.just(False)),
    st.tuples(st.just("played"), st.booleans(), st.booleans()),         # leg a?, right file?
    st.tuples(st.just("media_stop"), st.booleans(), st.just(False)),    # current file?
    st.tuples(st.just("hold"), st.booleans(), st.just(False)),
    st.tuples(st.just("consent_timer"), st.booleans(), st.just(False)),  # fired on time / stale
), max_size=30)


@settings(max_examples=400, deadline=None)
@given(actions=ACTIONS)
def test_recording_invariants(actions):
    call = call_in(S.ACTIVE)
    t = 10.0
    consent_pending = False   # an announcement was broadcast and has not finished on leg "a"
    finished_since = False    # the pending announcement finished (a start may follow now)
    recording = False
    masked = False
    started: dict[str, float] = {}
    stopped: dict[str, int] = {}
    compliance: set[str] = set()
    last_path = ""
    timers: set[str] = set()

    def apply(event, kind=""):
        nonlocal call, consent_pending, finished_since, recording, masked, last_path
        before = call.rec
        call, effects = C.step(call, event)
        for e in effects:
            if isinstance(e, SendMedia) and isinstance(e.command, MediaBroadcast):
                consent_pending, finished_since = True, False
            elif isinstance(e, SendMedia) and isinstance(e.command, MediaRecordStart):
                assert not consent_pending or finished_since, "recorded before the consent finished"
                assert not recording, "two recordings at once"
                consent_pending, recording, masked, last_path = False, True, False, e.command.path
            elif isinstance(e, SendMedia) and isinstance(e.command, MediaRecordMask):
                assert recording and masked != e.command.mask, "mask/unmask out of turn"
                masked = e.command.mask
            elif isinstance(e, PublishCti) and e.event.name == "CALL_RECORDING_STARTED":
                rid = e.event.data["recording_id"]
                assert rid not in started, "recording id reused"
                started[rid] = e.event.at
                if e.event.data["compliance"]:
                    compliance.add(rid)
            elif isinstance(e, PublishCti) and e.event.name == "CALL_RECORDING_STOPPED":
                rid = e.event.data["recording_id"]
                assert rid in started
                stopped[rid] = stopped.get(rid, 0) + 1
                assert 0.0 <= e.event.data["paused_s"] <= e.event.data["duration_s"] + 1e-9
                if rid in compliance and kind in ("stop", "pause"):
                    assert getattr(event, "override", False), "a compliance recording stopped without override"
                recording, masked = False, False
            elif isinstance(e, PublishCti) and e.event.name == "CALL_RECORDING_FAILED":
                assert consent_pending and not recording, "gave up a recording that was not waiting"
                consent_pending = False
            elif isinstance(e, StartTimer) and e.key == C.CONSENT_TIMER:
                timers.add(e.key)
            elif isinstance(e, CancelTimer) and e.key == C.CONSENT_TIMER:
                timers.discard(e.key)
            elif isinstance(e, PublishCti) and e.event.name == "CALL_RECORDING_PAUSED":
                rid = e.event.data["recording_id"]
                assert rid not in compliance or event.override, "a compliance recording paused without override"
        if before is not None and before.stage == "consent" and call.rec is None:
            consent_pending = False  # cancelled before it started

    for i, (kind, a, b) in enumerate(actions):
        t += 1.0
        if kind == "start":
            apply(StartRecording(call_id="c1", at=t, request_id=f"r{i}", consent=CONSENT if a else "",
                                 compliance=b), kind)
        elif kind == "stop":
            apply(StopRecording(call_id="c1", at=t, request_id=f"r{i}", override=a), kind)
        elif kind == "pause":
            apply(PauseRecording(call_id="c1", at=t, request_id=f"r{i}", override=a), kind)
        elif kind == "resume":
            apply(ResumeRecording(call_id="c1", at=t, request_id=f"r{i}"), kind)
        elif kind == "played":
            if a and b and consent_pending:
                finished_since = True
            apply(PlaybackFinished(call_id="c1", at=t, leg="a" if a else "c1-1", file=CONSENT if b else "x.wav"))
        elif kind == "media_stop":
            apply(RecordingStopped(call_id="c1", at=t, path=(call.recording or last_path) if a else "old.wav"))
        elif kind == "consent_timer":
            if a and C.CONSENT_TIMER in timers:
                timers.discard(C.CONSENT_TIMER)
                apply(TimerFired(key=C.CONSENT_TIMER, at=t))
            elif not a:
                apply(TimerFired(key=C.CONSENT_TIMER, at=t))  # stale: must change nothing
        elif kind == "hold":
            apply(Hold(call_id="c1", at=t) if call.state is S.ACTIVE else Retrieve(call_id="c1", at=t))
    apply(ChannelHangup(call_id="c1", at=t + 1.0, leg="a"))
    assert call.state is S.ENDED and call.rec is None and C.CONSENT_TIMER not in call.timers
    assert set(stopped) == set(started) and all(n == 1 for n in stopped.values()), "one row per recording"
