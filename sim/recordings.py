"""Recordings in the simulator (#10 part 2, docs/recordings.md): what the report says about them.

The machines decide everything (consent before recording, pause/resume, always-on queues); the
simulated switch (sim/core.py) plays a consent announcement for its prompt length and then reports
its end on the caller's leg, and records without changing how long anybody talks. This module
only counts, from the recording CTI events:

- started (on demand / always-on), consents played, consent timeouts, pauses;
- stopped by reason ("stopped", "call_ended", ...), recorded and paused seconds;
- the wait from the consent announcement to the start of recording (it is the prompt's length).

Invariant checked by ``SimRecordings.check`` at the end of a run: every started recording has
exactly one stop, and none started before its consent announcement (when there was one) ended.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SimRecordings", "RECORDING_EVENT_NAMES"]

RECORDING_EVENT_NAMES = frozenset({
    "CALL_RECORDING_CONSENT", "CALL_RECORDING_STARTED", "CALL_RECORDING_PAUSED", "CALL_RECORDING_RESUMED",
    "CALL_RECORDING_STOPPED", "CALL_RECORDING_FAILED",
})


class SimRecordings:
    def __init__(self) -> None:
        self.started = 0
        self.always_on = 0
        self.consents = 0
        self.consent_timeouts = 0
        self.paused = 0
        self.stopped: dict[str, int] = {}
        self.recorded_s = 0.0
        self.paused_s = 0.0
        self.consent_wait_s: list[float] = []
        self._consent_at: dict[str, float] = {}
        self._open: dict[str, float] = {}
        self.problems: list[str] = []

    def active(self) -> bool:
        return bool(self.started or self.consents)

    def observe(self, ev: Any) -> None:
        d = ev.data
        rid = str(d.get("recording_id", ""))
        if ev.name == "CALL_RECORDING_CONSENT":
            self.consents += 1
            self._consent_at[rid] = ev.at
        elif ev.name == "CALL_RECORDING_STARTED":
            self.started += 1
            self.always_on += bool(d.get("compliance"))
            if rid in self._open:
                self.problems.append(f"recording {rid} started twice")
            self._open[rid] = ev.at
            consent = self._consent_at.pop(rid, None)
            if consent is not None:
                self.consent_wait_s.append(ev.at - consent)
        elif ev.name == "CALL_RECORDING_PAUSED":
            self.paused += 1
        elif ev.name == "CALL_RECORDING_FAILED":
            self.consent_timeouts += 1
            self._consent_at.pop(rid, None)
        elif ev.name == "CALL_RECORDING_STOPPED":
            reason = str(d.get("reason", ""))
            self.stopped[reason] = self.stopped.get(reason, 0) + 1
            if self._open.pop(rid, None) is None:
                self.problems.append(f"recording {rid} stopped without a start")
            self.recorded_s += float(d.get("duration_s") or 0.0)
            self.paused_s += float(d.get("paused_s") or 0.0)

    def check(self) -> list[str]:
        """What is wrong once every call has ended (open recordings are left without a stop)."""
        return self.problems + [f"recording {rid} never stopped" for rid in sorted(self._open)]

    def report(self) -> dict[str, Any]:
        waits = self.consent_wait_s
        return {
            "started": self.started, "always_on": self.always_on, "on_demand": self.started - self.always_on,
            "consents": self.consents, "consent_timeouts": self.consent_timeouts, "paused": self.paused,
            "stopped": dict(sorted(self.stopped.items())),
            "recorded_s": round(self.recorded_s, 3), "paused_s": round(self.paused_s, 3),
            "mean_consent_wait_s": round(sum(waits) / len(waits), 3) if waits else 0.0,
        }
