"""Property test (hypothesis) of the call machine's conference transitions (#10 part 3).

From an agent call (ACTIVE or HELD), a JoinConference (both legs, or a blind transfer into the
room: the caller alone) or from a flow whose conference node ends it, then random further joins
(repeated, into other rooms), mutes of nothing, hangups of any leg seen (duplicated, late), and
the caller's hangup. Invariants:
- the call ends exactly once, with exactly one CDR, when the caller's leg goes (a kick hangs the
  caller's leg up, so a kicked caller ends its call); never before;
- the CDR names the last room the call was moved into;
- after a blind transfer into the room the party the caller talked to is hung up, its agent told
  once, and nothing is sent to that leg afterwards;
- nothing is sent to the switch after the end.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.fsm import call as C
from engine.messages import (
    AgentCallEnded,
    ChannelHangup,
    JoinConference,
    MediaConference,
    MediaHangup,
    Send,
    SendMedia,
    WriteCdr,
)
from tests.support.builders import call_in

S = C.CallState

ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("join"), st.sampled_from(["3000-t", "3001-t"]), st.booleans()),
    st.tuples(st.just("leg_hangup"), st.just(""), st.booleans()),
    st.tuples(st.just("caller_hangup"), st.just(""), st.booleans()),
), max_size=12)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(start=st.sampled_from([S.ACTIVE, S.HELD]), first_caller_only=st.booleans(), actions=ACTIONS)
def test_conference_transitions(start, first_caller_only, actions) -> None:
    call = call_in(start)
    partner = call.connected
    cdrs: list = []
    agent_told = 0
    t = 10.0
    last_room = ""
    released = False

    def apply(event) -> None:
        nonlocal call, agent_told, last_room, released
        was_ended = call.state is S.ENDED
        if was_ended:
            # a finished call is gone: the host drops its late events (the actor stopped)
            return
        call, effects = C.step(call, event)
        for e in effects:
            if isinstance(e, WriteCdr):
                cdrs.append(e.cdr)
            elif isinstance(e, Send) and isinstance(e.message, AgentCallEnded):
                agent_told += 1
            elif isinstance(e, SendMedia):
                cmd = e.command
                if released and cmd.leg == partner and not isinstance(cmd, MediaHangup):
                    raise AssertionError(f"sent {cmd} to the released partner")
                if isinstance(cmd, MediaConference):
                    last_room = cmd.room
                if isinstance(cmd, MediaHangup) and cmd.leg == partner and cmd.cause == "BLIND_TRANSFER":
                    released = True
        assert (len(cdrs) == 1) == (call.state is S.ENDED), "exactly one CDR, at the end"

    apply(JoinConference(call_id="c1", at=t, room="3000-t", caller_only=first_caller_only, request_id="j0"))
    assert call.state is S.ACTIVE if first_caller_only else call.state is start
    assert released == first_caller_only and (agent_told == 1) == first_caller_only
    for i, (kind, room, flag) in enumerate(actions):
        t += 1.0
        if kind == "join":
            apply(JoinConference(call_id="c1", at=t, room=room, caller_only=flag, request_id=f"j{i}"))
        elif kind == "leg_hangup" and partner:
            apply(ChannelHangup(call_id="c1", at=t, leg=partner, cause="NORMAL_CLEARING"))
        elif kind == "caller_hangup":
            apply(ChannelHangup(call_id="c1", at=t, leg="a", cause="NORMAL_CLEARING"))
    if call.state is not S.ENDED:
        apply(ChannelHangup(call_id="c1", at=t + 1, leg="a", cause="NORMAL_CLEARING"))
    assert call.state is S.ENDED and len(cdrs) == 1
    assert cdrs[0].conference == last_room
    assert agent_told <= 1, "the agent is told its call ended once"
