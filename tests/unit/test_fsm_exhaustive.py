"""h2's cheap exhaustive check: every (state, event type) pair transitions or raises IllegalTransition.

For each machine, every state is reached through the machine itself, then every message type the
engine knows is applied. Anything other than a result or ``IllegalTransition`` fails. The
machine's own events must be covered in every state by an explicit table entry (transition,
refusal or deliberate no-op), so no event of a machine is ever "forgotten" in some state.
"""

from __future__ import annotations

import pytest

from engine.fsm import IllegalTransition
from engine.fsm import agent as A
from engine.fsm import call as C
from engine.fsm import queue as Q
from engine.messages import ALL_MESSAGE_TYPES, Message
from tests.support.builders import agent_in, call_in, queue_in
from tests.support.samples import sample

INPUT_TYPES = [t for t in ALL_MESSAGE_TYPES if t in Message.__args__]  # type: ignore[attr-defined]

MACHINES = [
    ("call", C.MACHINE, C.CallState, call_in, C.CALL_EVENTS),
    ("agent", A.MACHINE, A.AgentState, agent_in, A.AGENT_EVENTS),
    ("queue", Q.MACHINE, Q.QueueState, queue_in, Q.QUEUE_EVENTS),
]


def test_there_are_inputs():
    assert len(INPUT_TYPES) >= 50


@pytest.mark.parametrize("name, machine, states, build, own", MACHINES, ids=[m[0] for m in MACHINES])
def test_every_pair_transitions_or_raises_the_typed_error(name, machine, states, build, own):
    transitions = refusals = 0
    for state in states:
        current = build(state)
        assert current.state is state, f"builder for {state} reached {current.state}"
        for event_type in INPUT_TYPES:
            event = sample(event_type)
            try:
                new, effects = machine.step(current, event)
            except IllegalTransition as err:
                assert err.state is state and err.event is event
                assert state.name in str(err) and event_type.__name__ in str(err)
                assert event_type not in own, f"{name}: {state.name} has no entry for its own {event_type.__name__}"
                refusals += 1
            else:
                assert isinstance(effects, list)
                assert type(new) is type(current)
                transitions += 1
    assert transitions and refusals


@pytest.mark.parametrize("name, machine, states, build, own", MACHINES, ids=[m[0] for m in MACHINES])
def test_own_events_have_an_explicit_entry_in_every_state(name, machine, states, build, own):
    missing = [(s.name, t.__name__) for s in states for t in own if not machine.allows(s, t)]
    assert missing == []


@pytest.mark.parametrize("name, machine, states, build, own", MACHINES, ids=[m[0] for m in MACHINES])
def test_foreign_events_are_illegal(name, machine, states, build, own):
    foreign = [t for t in INPUT_TYPES if t not in own]
    assert foreign, "every machine has messages that are not for it"
    for state in states:
        for t in foreign:
            assert not machine.allows(state, t), f"{name} handles foreign {t.__name__} in {state.name}"
