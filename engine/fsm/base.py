"""What every state machine shares: the typed error, the step table and effect helpers.

Rules
1. Pure: nothing here does I/O, reads a clock or imports an async library (a test enforces it).
2. A machine is a table ``{(state, event type): handler}``; ``dispatch`` looks the pair up and
   raises ``IllegalTransition`` naming both when it is missing. Nothing else decides.
3. Handlers receive an ``Out`` collector for effects and return the new (frozen) state.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from engine.messages import (
    CancelTimer,
    CtiEvent,
    Effect,
    PublishCti,
    Reply,
    Scalar,
    Send,
    StartTimer,
)

S = TypeVar("S")  # machine state (a frozen Struct)
E = TypeVar("E")  # event


class IllegalTransition(Exception):
    """An event that the machine's table does not allow in the current state."""

    def __init__(self, state: enum.Enum, event: object, machine: str = "") -> None:
        self.state = state
        self.event = event
        self.machine = machine
        super().__init__(
            f"{machine + ': ' if machine else ''}illegal transition: "
            f"state={state.name} event={type(event).__name__}({_brief(event)})"
        )


def _brief(event: object) -> str:
    text = repr(event)
    start = text.find("(")
    inner = text[start + 1 : -1] if start >= 0 else text
    return inner if len(inner) <= 160 else inner[:157] + "..."


class Out:
    """Collects the effects of one step, in order."""

    __slots__ = ("effects",)

    def __init__(self) -> None:
        self.effects: list[Effect] = []

    def add(self, effect: Effect) -> None:
        self.effects.append(effect)

    def send(self, to: Any, to_id: str, message: Any) -> None:
        self.effects.append(Send(to=to, to_id=to_id, message=message))

    def cti(self, name: str, tenant: str, at: float, **ids_and_data: Scalar) -> None:
        ids = {k: ids_and_data.pop(k) for k in ("call_id", "agent_id", "queue_id") if k in ids_and_data}
        self.effects.append(
            PublishCti(event=CtiEvent(name=name, tenant=tenant, at=at, data=ids_and_data, **ids))  # type: ignore[arg-type]
        )

    def reply(self, request_id: str, code: str = "OK", message: str = "", **data: Any) -> None:
        if request_id:
            self.effects.append(
                Reply(request_id=request_id, ok=code == "OK", code=code, message=message, data=data)
            )


def start_timer(timers: frozenset[str], out: Out, key: str, deadline: float) -> frozenset[str]:
    out.add(StartTimer(key=key, deadline=deadline))
    return timers | {key}


def cancel_timer(timers: frozenset[str], out: Out, key: str) -> frozenset[str]:
    if key in timers:
        out.add(CancelTimer(key=key))
        return timers - {key}
    return timers


def cancel_timers(timers: frozenset[str], out: Out, keys: Iterable[str] | None = None) -> frozenset[str]:
    """Cancel ``keys`` (all running timers when None), in a stable order."""
    chosen = sorted(timers if keys is None else set(keys) & timers)
    for key in chosen:
        out.add(CancelTimer(key=key))
    return timers - set(chosen)


#: A handler takes (state, event, out) and returns the new state. Each handler names the concrete
#: event type it accepts, which the table guarantees; so the table's value type is loose on purpose.
Handler = Callable[[Any, Any, Out], Any]
F = TypeVar("F", bound=Handler)


class Machine(Generic[S, E]):
    """A transition table plus the lookup that enforces it."""

    def __init__(self, name: str, state_of: Callable[[S], enum.Enum]) -> None:
        self.name = name
        self._state_of = state_of
        self.table: dict[tuple[enum.Enum, type], Handler] = {}

    def on(self, states: Iterable[enum.Enum], *event_types: type) -> Callable[[F], F]:
        def register(fn: F) -> F:
            for st in states:
                for et in event_types:
                    key = (st, et)
                    if key in self.table:
                        raise RuntimeError(f"{self.name}: duplicate handler for {st.name}/{et.__name__}")
                    self.table[key] = fn
            return fn

        return register

    def step(self, state: S, event: E) -> tuple[S, list[Effect]]:
        current = self._state_of(state)
        handler = self.table.get((current, type(event)))
        if handler is None:
            raise IllegalTransition(current, event, self.name)
        out = Out()
        new_state: S = handler(state, event, out)
        return new_state, out.effects

    def allows(self, state: enum.Enum, event_type: type) -> bool:
        return (state, event_type) in self.table


def ignore(state: S, event: object, out: Out) -> S:
    """Explicit no-op: duplicate or late events that the machine knows and deliberately drops."""
    return state
