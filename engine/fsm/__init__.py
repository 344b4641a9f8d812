"""Pure state machines: ``step(state, event) -> (state, effects)``; no I/O, no trio, no clock reads.

``call``, ``agent`` and ``queue`` each keep their whole transition table in one module.
"""

from engine.fsm.base import IllegalTransition

__all__ = ["IllegalTransition"]
