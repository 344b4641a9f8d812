"""Property test (hypothesis) of parking in the call machine (#10 part 4).

From a parked agent call, random sequences of pickups (slot, directed, group, duplicated), park
timers (fired on time, late, duplicated), ring timers, answers and hangups of any leg seen so far,
re-parks and hangups. Invariants, per park episode (CALL_PARKED to the next CALL_PARKED):
- the parked call is picked up by slot at most once, and never after its park timed out;
- a timed-out park rings the parker exactly once (one CALL_PARK_TIMEOUT naming it, one originate to
  it), then at most once the fallback;
- nothing is rung after the end; the call ends with exactly one CDR, none before, and no timer
  the machine started survives it.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.fsm import call as C
from engine.messages import (
    CancelTimer,
    ChannelAnswered,
    ChannelHangup,
    Hangup,
    MediaOriginate,
    Park,
    Pickup,
    PublishCti,
    SendMedia,
    StartTimer,
    TimerFired,
    WriteCdr,
)
from tests.support.builders import call_in

S = C.CallState
PARKER = "1001"  # call_in's agent extension: the first parker
FALLBACK = "2000"

ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("pickup"), st.sampled_from(["1005", "1006"])),
    st.tuples(st.just("pickup_ringing"), st.sampled_from(["directed", "group"])),
    st.tuples(st.just("park_timer"), st.integers(0, 100)),
    st.tuples(st.just("ring_timer"), st.integers(0, 8)),
    st.tuples(st.just("answer"), st.integers(0, 8)),
    st.tuples(st.just("leg_hangup"), st.sampled_from(["NO_ANSWER", "USER_BUSY", "NORMAL_CLEARING"])),
    st.tuples(st.just("repark"), st.booleans()),
    st.tuples(st.just("hangup"), st.just(0)),
), max_size=25)


@settings(max_examples=300, deadline=None)
@given(actions=ACTIONS, fallback=st.booleans(), timeout=st.sampled_from([5.0, 60.0]))
def test_parking_invariants(actions, fallback, timeout):
    call = call_in(S.ACTIVE)
    t = 10.0
    timers: set[str] = set()
    legs_seen: list[str] = []
    episodes: list[dict] = []
    cdrs = 0
    ended_at_step = None

    def apply(event, i):
        nonlocal call, cdrs, ended_at_step
        was_ended = call.state is S.ENDED
        talking_to = call.leg(call.connected)
        parker = talking_to.destination if talking_to is not None else ""  # who parks, if this parks
        if isinstance(event, TimerFired):
            timers.discard(event.key)  # a timer that fired is no longer running
        call, effects = C.step(call, event)
        for e in effects:
            if isinstance(e, StartTimer):
                timers.add(e.key)
            elif isinstance(e, CancelTimer):
                timers.discard(e.key)
            elif isinstance(e, WriteCdr):
                cdrs += 1
            elif isinstance(e, SendMedia) and isinstance(e.command, MediaOriginate):
                assert not was_ended, "rang someone after the end"
                legs_seen.append(e.command.leg)
                if episodes:
                    episodes[-1]["rung"].append(e.command.destination)
            elif isinstance(e, PublishCti):
                ev = e.event
                if ev.name == "CALL_PARKED":
                    episodes.append({"picked": 0, "timeouts": [], "rung": [], "parker": parker})
                elif ev.name == "CALL_PICKED_UP" and ev.data.get("kind") == "slot":
                    episodes[-1]["picked"] += 1
                    assert not episodes[-1]["timeouts"], "picked up by slot after the park timed out"
                elif ev.name == "CALL_PARK_TIMEOUT":
                    episodes[-1]["timeouts"].append(ev.data["target"])
        if call.state is S.ENDED and ended_at_step is None:
            ended_at_step = i
        assert (cdrs == 1) == (call.state is S.ENDED), "exactly one CDR, at the end"
        assert call.timers == frozenset(timers), "the machine's timers are those its effects left running"

    fb = FALLBACK if fallback else ""
    apply(Park(call_id="c1", at=t, slot="701", timeout_s=timeout, fallback=fb), -1)
    for i, (kind, arg) in enumerate(actions):
        t += 1.0
        if kind == "pickup":
            apply(Pickup(call_id="c1", at=t, extension=arg, request_id=f"p{i}"), i)
        elif kind == "pickup_ringing":
            apply(Pickup(call_id="c1", at=t, extension="1009", kind=arg, request_id=f"g{i}"), i)
        elif kind == "park_timer":
            t += arg
            apply(TimerFired(key="park", at=t), i)
        elif kind == "ring_timer" and legs_seen:
            apply(TimerFired(key=f"ring:{legs_seen[arg % len(legs_seen)]}", at=t), i)
        elif kind == "answer" and legs_seen:
            apply(ChannelAnswered(call_id="c1", at=t, leg=legs_seen[arg % len(legs_seen)]), i)
        elif kind == "leg_hangup" and call.legs:
            apply(ChannelHangup(call_id="c1", at=t, leg=call.legs[0].id, cause=arg), i)
        elif kind == "repark" and call.state in (S.ACTIVE, S.HELD):
            apply(Park(call_id="c1", at=t, slot="702" if arg else "", timeout_s=timeout, fallback=fb), i)
        elif kind == "hangup":
            apply(Hangup(call_id="c1", at=t, request_id=f"h{i}"), i)
    # whatever happened, the call ends with exactly one CDR and no timer left
    apply(ChannelHangup(call_id="c1", at=t + 1, leg="a"), len(actions))
    apply(ChannelHangup(call_id="c1", at=t + 2, leg="a"), len(actions) + 1)
    assert cdrs == 1 and not timers and call.state is S.ENDED
    assert episodes[0]["parker"] == PARKER
    for ep in episodes:
        p = ep["parker"]
        assert ep["picked"] <= 1
        assert ep["timeouts"] in ([], [p], [p, FALLBACK] if fb else [p]), ep
        if ep["timeouts"]:
            assert ep["picked"] == 0
            # the parker (whoever the caller talked to when parked) is rung exactly once, then the
            # fallback at most once: one ring per CALL_PARK_TIMEOUT, to its target
            for target in set(ep["timeouts"]):
                assert ep["rung"].count(target) == ep["timeouts"].count(target), ep
