"""Behaviours: how the runtime hosts a pure state machine as an actor kind.

A behaviour is the kind's name, its ``step(state, message) -> (state, effects)`` and, for kinds
whose actors end (calls), a *tombstone*: the state a stopped actor would be in. Messages that
arrive after the actor stopped are not errors: media noise (``late_noise`` types) is dropped and
counted; anything else is stepped on the tombstone so that, e.g., a ``ConnectAgent`` racing the
caller's hangup still releases the agent (``OfferFailed(caller_gone)``) and a late command still
gets its ``FAILED_PRECONDITION`` reply. The tombstone is built on demand from the id, so an ended
call costs the runtime only its id in the bounded "recently stopped" set.

The actor is finished when a step returns a ``Stop`` effect (performed after the others).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.fsm import agent as agent_fsm
from engine.fsm import call as call_fsm
from engine.fsm import queue as queue_fsm
from engine.messages import Effect, MediaEventBase

Step = Callable[[Any, Any], tuple[Any, list[Effect]]]


class Behaviour:
    __slots__ = ("kind", "step", "tombstone", "late_noise", "tenant_of")

    def __init__(
        self,
        kind: str,
        step: Step,
        *,
        tombstone: Callable[[str], Any] | None = None,
        late_noise: tuple[type, ...] = (),
        tenant_of: Callable[[Any], str] | None = None,
    ) -> None:
        self.kind = kind
        self.step = step
        self.tombstone = tombstone
        self.late_noise = late_noise
        self.tenant_of = tenant_of or _tenant

    def __repr__(self) -> str:
        return f"Behaviour({self.kind!r})"


def _tenant(state: Any) -> str:
    tenant = getattr(state, "tenant", None)
    if isinstance(tenant, str):
        return tenant
    config = getattr(state, "config", None)
    return getattr(config, "tenant", "default") if config is not None else "default"


def _ended_call(call_id: str) -> call_fsm.Call:
    return call_fsm.Call(call_id=call_id, state=call_fsm.CallState.ENDED, a_up=False, cdr_written=True)


CALL = Behaviour("call", call_fsm.step, tombstone=_ended_call, late_noise=(MediaEventBase,))
AGENT = Behaviour("agent", agent_fsm.step)
QUEUE = Behaviour("queue", queue_fsm.step)
