"""Recordings (#10 part 2): the per-tenant policy and who may do what (docs/recordings.md).

Rules
1. Pure: no I/O, no clock. The API asks ``allowed`` before it sends a recording command or returns
   a recording; the call machine (engine/fsm/call.py) decides the rest (consent before recording,
   pause only while recording, compliance recordings need ``override``).
2. Defaults (a tenant without a policy row): admin and supervisor may do everything except pause or
   stop an always-on (compliance) recording; an agent may start, stop and pause recordings of its
   own calls only, and listen to none (``agent_listen`` allows its own); nobody pauses or stops a
   compliance recording unless ``compliance_stop_roles`` names their role.
3. ``retain_until`` = start + the tenant's ``retention_days``; the retention job
   (adapters/postgres/recordings.py ``expire_recordings``) marks rows past it expired.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import msgspec

from engine.messages import CtiEvent

__all__ = ["Action", "RecordingPolicy", "DEFAULT_POLICY", "RecordingRow", "RecordingCatalog", "allowed",
           "retain_until", "started_by", "audio_url", "RECORDING_EVENTS"]

#: the CTI events a recording's row is written from
RECORDING_EVENTS = frozenset({"CALL_RECORDING_STARTED", "CALL_RECORDING_STOPPED"})

Action = Literal["start", "stop", "pause", "listen"]
DAY_S = 86_400.0


class RecordingPolicy(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str = ""
    #: consent announcement played before an on-demand (API) recording; "" = none
    consent: str = ""
    retention_days: int = 90
    #: an agent may start/stop/pause recordings of its own calls
    agent_control: bool = True
    #: an agent may listen to recordings of its own calls
    agent_listen: bool = False
    #: roles that may pause or stop an always-on (compliance) recording
    compliance_stop_roles: tuple[str, ...] = ()


DEFAULT_POLICY = RecordingPolicy()


def allowed(policy: RecordingPolicy, roles: frozenset[str] | set[str], action: Action, *, own: bool,
            compliance: bool = False) -> bool:
    """May a principal with ``roles`` do ``action`` on a recording? ``own``: the call is (or was)
    the agent's own; ``compliance``: pausing or stopping an always-on recording."""
    if compliance and action in ("stop", "pause") and roles.isdisjoint(policy.compliance_stop_roles):
        return False
    if "admin" in roles or "supervisor" in roles:
        return True
    if "agent" not in roles or not own:
        return False
    if action == "listen":
        return policy.agent_listen
    return policy.agent_control


def retain_until(policy: RecordingPolicy, started_at: float) -> float:
    return started_at + max(1, policy.retention_days) * DAY_S


def started_by(roles: frozenset[str] | set[str], agent_id: str, subject: str) -> str:
    """How a recording's ``started_by`` names an API caller."""
    staff = "admin" in roles or "supervisor" in roles
    return f"agent:{agent_id}" if agent_id and not staff else f"user:{subject}"


def audio_url(base: str, row: RecordingRow) -> str:
    """Where a client fetches the audio: ``base`` (the media store's address, configured by the
    operator) + the file's name as the engine chose it; "" when no store is configured."""
    if not base:
        return ""
    name = row.path.rsplit("/", 1)[-1]
    return base.rstrip("/") + "/" + name


class RecordingRow(msgspec.Struct, frozen=True, kw_only=True):
    """One recording's metadata (a row of ``recordings``, migration 0010)."""

    recording_id: str
    tenant: str
    call_id: str
    path: str
    started_at: float
    stopped_at: float | None = None
    duration_s: float = 0.0
    paused_s: float = 0.0
    started_by: str = ""
    compliance: bool = False
    queue_id: str = ""
    agent_id: str = ""
    extension: str = ""
    stop_reason: str = ""
    retain_until: float = 0.0
    expired_at: float | None = None


def _f(v: Any, default: float = 0.0) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def row_from_event(old: RecordingRow | None, event: CtiEvent, policy: RecordingPolicy) -> RecordingRow:
    """The row after a STARTED or STOPPED event (the same merge the PostgreSQL writer does)."""
    d = event.data
    started = _f(d.get("started_at"), event.at) if event.name == "CALL_RECORDING_STOPPED" else event.at
    if old is not None:
        started = old.started_at if event.name == "CALL_RECORDING_STOPPED" else started
    row = old or RecordingRow(
        recording_id=str(d.get("recording_id", "")), tenant=event.tenant, call_id=event.call_id,
        path=str(d.get("path", "")), started_at=started, started_by=str(d.get("by", "")),
        compliance=bool(d.get("compliance")), queue_id=event.queue_id, agent_id=event.agent_id,
        extension=str(d.get("extension", "")), retain_until=retain_until(policy, started))
    if event.name == "CALL_RECORDING_STOPPED":
        row = msgspec.structs.replace(row, stopped_at=event.at, duration_s=_f(d.get("duration_s")),
                                      paused_s=_f(d.get("paused_s")), stop_reason=str(d.get("reason", "")))
    return row


class RecordingCatalog:
    """The recordings of a node without PostgreSQL (``open_stack``, tests): a ``CtiPort`` that keeps
    the rows from the recording events, the tenants' policies, and the reads the API makes. Bounded
    (``max_rows``: the oldest rows go first). ``adapters.postgres.recordings.PgRecordings`` is the
    same interface over the ``recordings`` table."""

    def __init__(self, *, max_rows: int = 100_000, audio_base: str = "") -> None:
        self.max_rows = max_rows
        self.audio_base = audio_base
        self.rows: OrderedDict[str, RecordingRow] = OrderedDict()
        self.policies: dict[str, RecordingPolicy] = {}

    def set_policy(self, policy: RecordingPolicy) -> None:
        self.policies[policy.tenant] = policy

    async def put_policy(self, policy: RecordingPolicy) -> None:
        self.set_policy(policy)

    def publish(self, event: CtiEvent) -> None:
        rid = event.data.get("recording_id")
        if event.name not in RECORDING_EVENTS or not rid:
            return
        key = f"{event.tenant}\x00{rid}"
        policy = self.policies.get(event.tenant, DEFAULT_POLICY)
        self.rows[key] = row_from_event(self.rows.get(key), event, policy)
        while len(self.rows) > self.max_rows:
            self.rows.popitem(last=False)

    async def policy(self, tenant: str) -> RecordingPolicy:
        return self.policies.get(tenant, msgspec.structs.replace(DEFAULT_POLICY, tenant=tenant))

    async def list(self, tenant: str, *, call_id: str = "", agent_id: str = "", limit: int = 100) -> list[RecordingRow]:
        rows = [r for r in self.rows.values() if r.tenant == tenant and r.expired_at is None
                and (not call_id or r.call_id == call_id) and (not agent_id or r.agent_id == agent_id)]
        rows.sort(key=lambda r: (-r.started_at, r.recording_id))
        return rows[:max(1, limit)]

    async def get(self, tenant: str, recording_id: str) -> RecordingRow | None:
        return self.rows.get(f"{tenant}\x00{recording_id}")

    def audio_url(self, row: RecordingRow) -> str:
        return audio_url(self.audio_base, row)
