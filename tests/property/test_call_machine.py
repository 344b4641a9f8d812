"""Stateful property test of the call machine: random (and hostile) event orders, invariants always.

Invariants: a call never leaves ENDED; exactly one CDR per ended call and none before;
wait + talk + hold <= duration; the timers the machine believes are running are exactly those its
effects started and did not cancel, and none survives the end; no leg is originated to an agent
after the caller hung up; nothing but the typed machine raises.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from engine.fsm import call as C
from engine.messages import (
    AttendedTransferCancel,
    AttendedTransferComplete,
    AttendedTransferStart,
    BlindTransfer,
    CancelTimer,
    ChannelAnswered,
    ChannelCreated,
    ChannelDestroyed,
    ChannelHangup,
    ChannelHangupComplete,
    ChannelHeld,
    ChannelUnheld,
    ConnectAgent,
    DtmfReceived,
    EnterFlow,
    Hangup,
    Hold,
    MediaOriginate,
    Park,
    Pickup,
    QueueOverflow,
    Retrieve,
    RouteToExtension,
    RouteToQueue,
    SendMedia,
    StartRecording,
    StartTimer,
    StopRecording,
    TimerFired,
    WriteCdr,
)

CAUSES = st.sampled_from(["NORMAL_CLEARING", "USER_BUSY", "NO_ANSWER", "ORIGINATOR_CANCEL", "CALL_REJECTED"])


class Tracked:
    def __init__(self, call: C.Call, t: float) -> None:
        self.call = call
        self.t = t
        self.timers: set[str] = set()
        self.cdrs: list = []
        self.caller_gone = False
        self.offers = 0


class CallMachine(RuleBasedStateMachine):
    calls = Bundle("calls")

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.live: dict[str, Tracked] = {}

    @rule(target=calls)
    def channel_created(self):
        self.n += 1
        cid = f"c{self.n}"
        call, effects = C.new_call(ChannelCreated(call_id=cid, at=0.0, caller_id="+1", destination="500"))
        self.live[cid] = Tracked(call, 0.0)
        self._absorb(cid, effects)
        return cid

    def _apply(self, cid: str, event) -> None:
        tr = self.live[cid]
        was_ended = tr.call.state is C.CallState.ENDED
        call, effects = C.step(tr.call, event)
        if was_ended:
            assert call.state is C.CallState.ENDED, "a call left ENDED"
        if isinstance(event, TimerFired) and event.key in tr.timers:
            tr.timers.discard(event.key)
        tr.call = call
        self._absorb(cid, effects)

    def _absorb(self, cid: str, effects) -> None:
        tr = self.live[cid]
        for e in effects:
            if isinstance(e, StartTimer):
                tr.timers.add(e.key)
            elif isinstance(e, CancelTimer):
                assert e.key in tr.timers, f"cancelled a timer that was not running: {e.key}"
                tr.timers.discard(e.key)
            elif isinstance(e, WriteCdr):
                tr.cdrs.append(e.cdr)
            elif isinstance(e, SendMedia) and isinstance(e.command, MediaOriginate) and e.command.leg != "a":
                assert not tr.caller_gone, "a leg was originated for a caller who hung up"

    def _time(self, cid: str, dt: float) -> float:
        tr = self.live[cid]
        tr.t = max(0.0, tr.t + dt)
        return tr.t

    def _leg(self, cid: str, n: int) -> str:
        return "a" if n == 0 else f"{cid}-{n}"

    dt = st.floats(min_value=-1.0, max_value=40.0, allow_nan=False)

    @rule(cid=calls, dt=dt, n=st.integers(0, 4), cause=CAUSES,
          kind=st.sampled_from([ChannelHangup, ChannelHangupComplete, ChannelDestroyed]))
    def leg_gone(self, cid, dt, n, cause, kind):
        leg = self._leg(cid, n)
        kw = {"cause": cause} if kind is not ChannelDestroyed else {}
        self._apply(cid, kind(call_id=cid, at=self._time(cid, dt), leg=leg, **kw))
        if leg == "a":
            self.live[cid].caller_gone = True

    @rule(cid=calls, dt=dt, n=st.integers(0, 4),
          kind=st.sampled_from([ChannelAnswered, ChannelHeld, ChannelUnheld]))
    def leg_event(self, cid, dt, n, kind):
        self._apply(cid, kind(call_id=cid, at=self._time(cid, dt), leg=self._leg(cid, n)))

    @rule(cid=calls, dt=dt, digit=st.sampled_from("0123456789*#"))
    def dtmf(self, cid, dt, digit):
        self._apply(cid, DtmfReceived(call_id=cid, at=self._time(cid, dt), digit=digit))

    @rule(cid=calls, dt=dt, what=st.integers(0, 3))
    def route(self, cid, dt, what):
        t = self._time(cid, dt)
        ev = [EnterFlow(call_id=cid, at=t, flow_id="ivr"), RouteToQueue(call_id=cid, at=t, queue_id="q1"),
              RouteToExtension(call_id=cid, at=t, target="1001", timeout_s=20),
              RouteToQueue(call_id=cid, at=t, queue_id="q2")][what]
        self._apply(cid, ev)

    @rule(cid=calls, dt=dt, agent=st.sampled_from(["a1", "a2", "a3"]), queue=st.sampled_from(["q1", "q2"]))
    def connect_agent(self, cid, dt, agent, queue):
        tr = self.live[cid]
        tr.offers += 1
        self._apply(cid, ConnectAgent(call_id=cid, at=self._time(cid, dt), queue_id=queue, offer_id=f"o{tr.offers}",
                                      agent_id=agent, extension=f"x{agent}", ring_timeout_s=15))

    @rule(cid=calls, dt=dt, dest=st.sampled_from(["", "queue:q2", "2000"]))
    def overflow(self, cid, dt, dest):
        self._apply(cid, QueueOverflow(call_id=cid, at=self._time(cid, dt), queue_id="q1", target=dest))

    @rule(cid=calls, data=st.data())
    def timer(self, cid, data):
        tr = self.live[cid]
        keys = sorted(tr.timers) + ["ring:bogus"]
        key = data.draw(st.sampled_from(keys))
        self._apply(cid, TimerFired(key=key, at=self._time(cid, data.draw(self.dt))))

    @rule(cid=calls, dt=dt, which=st.integers(0, 11))
    def command(self, cid, dt, which):
        t = self._time(cid, dt)
        cmd = [Hold(call_id=cid, at=t, request_id="r"), Retrieve(call_id=cid, at=t, request_id="r"),
               BlindTransfer(call_id=cid, at=t, target="3000", request_id="r"),
               AttendedTransferStart(call_id=cid, at=t, target="4000", request_id="r"),
               AttendedTransferComplete(call_id=cid, at=t, request_id="r"),
               AttendedTransferCancel(call_id=cid, at=t, request_id="r"),
               Park(call_id=cid, at=t, request_id="r"), Pickup(call_id=cid, at=t, extension="1009", request_id="r"),
               StartRecording(call_id=cid, at=t, request_id="r"), StopRecording(call_id=cid, at=t, request_id="r"),
               Hangup(call_id=cid, at=t, request_id="r"), Hangup(call_id=cid, at=t)][which]
        self._apply(cid, cmd)

    @rule(cid=consumes(calls), dt=dt)
    def caller_hangs_up(self, cid, dt):
        self._apply(cid, ChannelHangup(call_id=cid, at=self._time(cid, dt), leg="a"))
        self.live[cid].caller_gone = True
        # a live caller's channel going away always ends the call (a click-to-call is not made here)
        assert self.live[cid].call.state is C.CallState.ENDED

    @invariant()
    def one_cdr_exactly_when_ended(self):
        for cid, tr in self.live.items():
            ended = tr.call.state is C.CallState.ENDED
            assert len(tr.cdrs) == (1 if ended else 0), (cid, tr.call.state, len(tr.cdrs))

    @invariant()
    def timers_match_and_none_survive_the_end(self):
        for cid, tr in self.live.items():
            assert set(tr.call.timers) == tr.timers, cid
            if tr.call.state is C.CallState.ENDED:
                assert tr.timers == set()

    @invariant()
    def time_buckets_fit_the_duration(self):
        for tr in self.live.values():
            c = tr.call
            assert min(c.wait_s, c.talk_s, c.hold_s) >= 0
            assert c.wait_s + c.talk_s + c.hold_s <= (c.now - c.created_at) + 1e-6
            for cdr in tr.cdrs:
                assert cdr.wait_s + cdr.talk_s + cdr.hold_s <= cdr.duration_s + 1e-6
                assert cdr.disposition in ("answered", "abandoned", "no_answer", "busy", "failed", "overflowed")
                assert (cdr.answered_at is not None) == (cdr.disposition == "answered") or cdr.disposition == "overflowed"

    @invariant()
    def legs_are_consistent(self):
        for tr in self.live.values():
            c = tr.call
            ids = [leg.id for leg in c.legs]
            assert len(ids) == len(set(ids))
            if c.state is C.CallState.RINGING and c.a_up:
                assert c.ringing or c.consult or not c.a_up, "RINGING with nothing ringing"
            if c.state is C.CallState.ENDED:
                assert c.legs == () and not c.in_queue


TestCallMachine = CallMachine.TestCase
TestCallMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])
