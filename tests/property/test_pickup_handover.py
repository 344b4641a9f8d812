"""Property test (hypothesis) of feature-code pickup between two call machines (docs/parking.md).

The feature call F (a phone that dialled ``**1001``, ``*8`` or a slot; its channel is ``p1``) gets
``RouteToPickup`` for the caller's call T, in any state T may be in. Messages between the machines
are delivered in order, interleaved with random events: the picker or the caller hanging up, F's
handover timer firing, duplicated decisions and offers. The channel ``p1`` reports to F (as its
leg "a") until T has adopted it, then to T (as leg ``p1``). Invariants:
- every PickupChannel gets exactly one PickupHandedOver, and T says ok only when it was PARKED (slot)
  or RINGING (directed), after which ``p1`` is T's leg, connected when its answer comes;
- T never stays connected to a dead ``p1`` (a channel the feature call hung up before T adopted it
  never answers; T's ring timer drops it);
- F never hangs ``p1`` up once it has T's ok (the channel is T's), and once T adopted it the
  picker's hangup ends T's conversation. (A handover timer that fires while T's ok is still in
  flight does hang up the channel T just adopted: the pickup is lost, T's conversation ends; no
  call is left behind. docs/parking.md says so.);
- each call writes at most one CDR, and exactly one once both channels are gone.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.fsm import call as C
from engine.messages import (
    ChannelAnswered,
    ChannelCreated,
    ChannelHangup,
    MediaAdopt,
    MediaAnswer,
    MediaHangup,
    PickupChannel,
    PickupHandedOver,
    RouteToPickup,
    Send,
    SendMedia,
    TimerFired,
    WriteCdr,
)
from tests.support.builders import call_in

S = C.CallState
STATES = [S.ROUTING, S.QUEUED, S.RINGING, S.ACTIVE, S.HELD, S.PARKED, S.ENDED]
EVENTS = st.lists(st.sampled_from(["deliver", "picker_hangup", "caller_hangup", "handover_timer",
                                   "dup_route", "dup_offer"]), max_size=12)


@settings(max_examples=400, deadline=None)
@given(state=st.sampled_from(STATES), kind=st.sampled_from(["slot", "directed"]), events=EVENTS)
def test_handover_between_two_calls(state, kind, events):
    target = call_in(state, "t1")
    feature, _ = C.new_call(ChannelCreated(call_id="p1", at=0.0, caller_id="1005", destination="**1001"))
    calls = {"t1": target, "p1": feature}
    cdrs = {"t1": 1 if target.state is S.ENDED else 0, "p1": 0}
    inbox: list = []  # messages in flight between the machines, in order
    offers = replies = 0
    ok_said = False
    ok_received = False  # F has T's ok
    later: list = []  # switch events the step caused (a hangup of p1 reaches its owner)
    adopted = False  # p1's channel variables name t1 (MediaAdopt applied)
    p1_up, caller_up = True, target.state is not S.ENDED
    t = 10.0

    def step(call_id, event):
        nonlocal offers, replies, ok_said, ok_received, adopted, p1_up, caller_up
        if calls[call_id].state is S.ENDED:
            return  # a stopped actor gets nothing
        if isinstance(event, PickupHandedOver) and event.ok:
            ok_received = True
        was_state = calls[call_id].state
        if isinstance(event, PickupChannel):
            offers += 1
        before = replies
        calls[call_id], effects = C.step(calls[call_id], event)
        for e in effects:
            if isinstance(e, WriteCdr):
                cdrs[call_id] += 1
                assert cdrs[call_id] == 1, f"{call_id}: a second CDR"
            elif isinstance(e, Send) and e.to == "call":
                if isinstance(e.message, PickupHandedOver):
                    replies += 1
                    if e.message.ok:
                        assert was_state in (S.PARKED, S.RINGING), was_state
                        assert calls["t1"].leg("p1") is not None and calls["t1"].state is S.RINGING
                        ok_said = True
                inbox.append(e.message)
            elif isinstance(e, SendMedia):
                cmd = e.command
                if isinstance(cmd, MediaAdopt):
                    assert cmd.leg == "p1" and call_id == "t1"
                    adopted = True
                elif isinstance(cmd, MediaAnswer) and cmd.leg == "p1" and p1_up:
                    later.append(("t1", ChannelAnswered(call_id="t1", at=event.at, leg="p1")))
                elif isinstance(cmd, MediaHangup):
                    if call_id == "p1" and cmd.leg == "a":
                        assert not ok_received, "the feature call hung up a channel it had handed over"
                        if p1_up and adopted:
                            later.append(("t1", ChannelHangup(call_id="t1", at=event.at, leg="p1")))
                        p1_up = False
                    elif call_id == "t1" and cmd.leg == "p1":
                        p1_up = False
                    elif call_id == "t1" and cmd.leg == "a":
                        caller_up = False
        if isinstance(event, PickupChannel):
            assert replies == before + 1, "an offer of a channel got no answer, or two"
        while later:
            step(*later.pop(0))

    def picker_gone():
        nonlocal p1_up
        p1_up = False
        if adopted:
            step("t1", ChannelHangup(call_id="t1", at=t, leg="p1"))
        else:
            step("p1", ChannelHangup(call_id="p1", at=t, leg="a"))

    step("p1", RouteToPickup(call_id="p1", at=t, target_call="t1", kind=kind, extension="1005",
                             target="1001" if kind == "directed" else "", slot="701" if kind == "slot" else ""))
    for name in events:
        t += 1.0
        if name == "deliver" and inbox:
            msg = inbox.pop(0)
            step(msg.call_id, msg)
        elif name == "picker_hangup" and p1_up:
            picker_gone()
        elif name == "caller_hangup" and caller_up:
            caller_up = False
            step("t1", ChannelHangup(call_id="t1", at=t, leg="a"))
        elif name == "handover_timer":
            step("p1", TimerFired(key=C.HANDOVER_TIMER, at=t))
        elif name == "dup_route":
            step("p1", RouteToPickup(call_id="p1", at=t, target_call="t1", kind=kind, extension="1005"))
        elif name == "dup_offer":
            inbox.append(PickupChannel(call_id="t1", at=t, from_call="p1", leg="p1", node="", extension="1005",
                                       kind=kind, target="1001" if kind == "directed" else ""))
    # drain the messages, then both channels go away
    while inbox:
        msg = inbox.pop(0)
        step(msg.call_id, msg)
    t += 1.0
    if ok_said:
        assert adopted and calls["p1"].state is S.ENDED
    step("p1", TimerFired(key=C.HANDOVER_TIMER, at=t + 10))  # a feature call still waiting gives up
    while inbox:
        msg = inbox.pop(0)
        step(msg.call_id, msg)
    # answered, refused or timed out: the feature call never waits forever (nor leaves its phone up)
    assert calls["p1"].state is S.ENDED, calls["p1"]
    step("t1", TimerFired(key="ring:p1", at=t + 10))  # an adopted channel that never answers
    # no ghost: the caller talks to the picker's channel only while it is up
    assert not (calls["t1"].connected == "p1" and not p1_up), "connected to a dead channel"
    assert p1_up == (adopted and calls["t1"].state is not S.ENDED), (p1_up, adopted)
    if p1_up:
        picker_gone()
    if caller_up:
        step("t1", ChannelHangup(call_id="t1", at=t + 11, leg="a"))
    assert cdrs == {"t1": 1, "p1": 1}, (cdrs, calls["t1"].state, calls["p1"].state)
    assert replies <= offers
    # a live target answers every offer it got (a stopped actor drops it; F's timer covers that)
    assert calls["t1"].state is S.ENDED and calls["p1"].state is S.ENDED
