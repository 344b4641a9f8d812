"""Voicemail in the simulator (#10 parts 1 and 8; docs/voicemail.md).

The simulated switch runs the ``record`` app as FreeSWITCH does: the caller talks for a while and
falls silent; ``silence_hits`` seconds of silence end the recording (or the time limit does), and
RECORD_STOP reaches the call machine, whose flow publishes VOICEMAIL_NEW. ``SimVoicemail`` keeps
the mailboxes from those events (as the PostgreSQL service would), lets a script retrieve them
through the owner's menu (``engine.voicemail``, the pure machine the engine uses) and counts for
the report: messages left, abandoned (by reason), retrieved, saved, deleted, and their lengths.

Owner retrieval is the menu machine driven by scripted key presses, not a simulated call: the
engine does not yet run the menu on a live call (docs/voicemail.md, "Not done yet").
"""

from __future__ import annotations

import math
from typing import Any

from engine import voicemail as vm

__all__ = ["SimVoicemail", "record_end", "VOICEMAIL_EVENTS"]

VOICEMAIL_EVENTS = frozenset({"VOICEMAIL_NEW", "VOICEMAIL_ABANDONED"})
#: a simulated PIN hash needs no strength: few rounds keep runs fast
_ROUNDS = 1000


def record_end(talk_s: float, limit_s: float, silence_hits: int) -> tuple[float, str]:
    """When the switch's ``record`` ends (seconds after it started) and its completion cause."""
    if silence_hits > 0 and talk_s + silence_hits < limit_s:
        return talk_s + silence_hits, "success-silence"
    return limit_s, "success-maxtime"


class SimVoicemail:
    def __init__(self) -> None:
        #: (tenant, box) -> messages in arrival order
        self.boxes: dict[tuple[str, str], list[vm.MessageRef]] = {}
        self.pins: dict[tuple[str, str], str] = {}
        #: call id -> seconds the scripted caller talks into the recording
        self.message_s: dict[str, float] = {}
        self.stats: dict[str, Any] = {"left": 0, "abandoned": {}, "retrieved": 0, "saved": 0, "deleted": 0,
                                      "length_s_sum": 0.0, "length_s_max": 0.0}

    def active(self) -> bool:
        s = self.stats
        return bool(s["left"] or s["abandoned"] or s["retrieved"] or self.pins)

    def talk_s(self, call_id: str, scripted: bool, handle_s: float) -> float:
        if scripted:
            return self.message_s.get(call_id, math.inf)
        return min(handle_s, 60.0)

    def observe(self, ev: Any) -> None:
        s = self.stats
        d = ev.data
        if ev.name == "VOICEMAIL_NEW":
            length = float(d.get("duration_s") or 0.0)
            s["left"] += 1
            s["length_s_sum"] += length
            s["length_s_max"] = max(s["length_s_max"], length)
            self.boxes.setdefault((ev.tenant, str(d.get("box"))), []).append(
                vm.MessageRef(id=str(d.get("message_id") or ev.call_id), folder="new", path=str(d.get("path") or ""),
                              created=ev.at))
        elif ev.name == "VOICEMAIL_ABANDONED":
            reason = str(d.get("reason") or "")
            s["abandoned"][reason] = s["abandoned"].get(reason, 0) + 1

    def set_pin(self, box: str, pin: str, tenant: str = "default") -> None:
        self.pins[(tenant, box)] = vm.hash_pin(pin, f"sim-{tenant}-{box}".encode(), rounds=_ROUNDS)

    def counts(self, box: str, tenant: str = "default") -> tuple[int, int]:
        msgs = self.boxes.get((tenant, box), [])
        return (sum(m.folder == "new" for m in msgs), sum(m.folder == "saved" for m in msgs))

    def retrieve(self, box: str, keys: str, tenant: str = "default") -> list[Any]:
        """The owner calls in and presses ``keys`` (PIN, ``#``, then menu keys); the mailbox follows
        the menu's save/delete actions. Returns the menu's actions, in order."""
        key = (tenant, box)
        if key not in self.pins:
            raise KeyError(f"mailbox {tenant}/{box} has no PIN (set_pin first)")
        state, actions = vm.start(box, self.pins[key], self.boxes.get(key, []))
        out = list(actions)
        for k in keys:
            state, actions = vm.step(state, vm.Digit(k))
            out.extend(actions)
            for a in actions:
                if isinstance(a, vm.PlayMessage):
                    self.stats["retrieved"] += 1
                elif isinstance(a, vm.SaveMessage):
                    self.stats["saved"] += 1
                    self.boxes[key] = [vm.MessageRef(m.id, "saved", m.path, m.created) if m.id == a.id else m
                                       for m in self.boxes[key]]
                elif isinstance(a, vm.DeleteMessage):
                    self.stats["deleted"] += 1
                    self.boxes[key] = [m for m in self.boxes[key] if m.id != a.id]
        return out

    def report(self) -> dict[str, Any]:
        s = self.stats
        return {"left": s["left"], "abandoned": dict(sorted(s["abandoned"].items())),
                "retrieved": s["retrieved"], "saved": s["saved"], "deleted": s["deleted"],
                "mean_length_s": round(s["length_s_sum"] / s["left"], 3) if s["left"] else None,
                "max_length_s": round(s["length_s_max"], 3)}
