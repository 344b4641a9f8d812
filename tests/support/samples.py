"""Sample values for any message type, built from its annotations (for exhaustive checks)."""

from __future__ import annotations

import typing
from typing import Any, Literal, get_args, get_origin

import msgspec

from engine import messages as m

#: values for fields by name, so samples address the actors the tests build
NAMED: dict[str, Any] = {
    "call_id": "c1",
    "agent_id": "a1",
    "queue_id": "q1",
    "offer_id": "q1-o1",
    "leg": "a",
    "extension": "1001",
    "digit": "5",
    "digits": "12#",
    "key": "ring:c1-1",
    "at": 10.0,
}


def sample_value(name: str, tp: Any) -> Any:
    if name in NAMED:
        return NAMED[name]
    origin = get_origin(tp)
    if origin is Literal:
        return get_args(tp)[0]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in get_args(tp) if a is not type(None)]
        return sample_value(name, args[0])
    if origin is dict:
        return {}
    if origin is tuple:
        return ()
    if tp is str:
        return f"{name}-x"
    if tp is float:
        return 1.5
    if tp is int:
        return 1
    if tp is bool:
        return True
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return sample(tp)
    raise TypeError(f"no sample for {name}: {tp!r}")


def sample(cls: type, **overrides: Any) -> Any:
    hints = typing.get_type_hints(cls, vars(m))
    kwargs: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        if field.name in overrides:
            kwargs[field.name] = overrides[field.name]
        elif field.required:
            kwargs[field.name] = sample_value(field.name, hints[field.name])
    return cls(**kwargs)
