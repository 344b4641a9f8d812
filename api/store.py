"""Configuration the Admin service manages: extensions, queues, agents and flows, per tenant.

Rules
1. ``AdminStore`` is the interface: create / get / update / delete / list per kind, keyed by
   (tenant, id), raising ``api.errors.ApiError`` with NOT_FOUND / ALREADY_EXISTS /
   INVALID_ARGUMENT / UNAVAILABLE. ``api.admin_pg.ConfigAdminStore`` implements it on any
   ``ConfigStore`` (PostgreSQL: writes reach running nodes through LISTEN/NOTIFY); pass it as
   ``open_stack(store=...)`` / ``Api(store=...)``. An optional ``get_nowait(tenant, kind, id)``
   (synchronous, ``None`` when unknown) lets the Api find an agent's or queue's record without
   awaiting.
2. ``InMemoryAdminStore`` is the default. It is synchronous and never blocks; the methods are
   ``async`` so that a database-backed store fits the same interface.
3. Records are frozen msgspec Structs; every field but the id has a default (schema evolution).
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import msgspec

from api.errors import ApiError

__all__ = ["Extension", "QueueRecord", "AgentRecord", "Flow", "RECORD_TYPES", "AdminStore",
           "InMemoryAdminStore", "validate_id"]

_ID = re.compile(r"^[A-Za-z0-9_+\-@:]{1,64}$")


def validate_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ApiError("INVALID_ARGUMENT", f"{what} must be 1-64 characters of A-Z a-z 0-9 _ + - @ :")
    return value


class Extension(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    name: str = ""
    #: SIP user the extension rings
    sip_user: str = ""
    voicemail: bool = False
    enabled: bool = True
    #: pickup groups (a group pickup by this extension takes a call ringing another member)
    pickup_groups: list[str] = []
    #: always-on recording of every call it answers, after the announcement ``record_consent``
    #: ("" = none) (docs/recordings.md)
    record: bool = False
    record_consent: str = ""


class QueueRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    name: str = ""
    strategy: str = "longest-idle"
    ring_timeout_s: float = 20.0
    wrap_up_s: float = 0.0
    max_wait_s: float = 0.0
    max_length: int = 0
    overflow_target: str = ""
    sl_threshold_s: float = 20.0
    #: always-on recording of every call answered from this queue (docs/recordings.md)
    record: bool = False
    record_consent: str = ""


class AgentRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    name: str = ""
    extension: str = ""
    queues: list[str] = []
    skills: dict[str, int] = {}


class Flow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    name: str = ""
    #: the flow graph as the flows loader reads it (validated when a node loads it)
    definition: dict[str, Any] = {}


RECORD_TYPES: dict[str, type[msgspec.Struct]] = {
    "extension": Extension, "queue": QueueRecord, "agent": AgentRecord, "flow": Flow,
}


class AdminStore(Protocol):
    async def create(self, tenant: str, kind: str, record: Any) -> Any: ...
    async def get(self, tenant: str, kind: str, record_id: str) -> Any: ...
    async def update(self, tenant: str, kind: str, record: Any) -> Any: ...
    async def delete(self, tenant: str, kind: str, record_id: str) -> None: ...
    async def list(self, tenant: str, kind: str) -> list[Any]: ...


class InMemoryAdminStore:
    def __init__(self, max_records_per_tenant: int = 100_000) -> None:
        self._data: dict[tuple[str, str], dict[str, Any]] = {}
        self.max_records = max_records_per_tenant

    def _table(self, tenant: str, kind: str) -> dict[str, Any]:
        if kind not in RECORD_TYPES:
            raise ApiError("INVALID_ARGUMENT", f"unknown kind {kind!r}")
        return self._data.setdefault((tenant, kind), {})

    async def create(self, tenant: str, kind: str, record: Any) -> Any:
        table = self._table(tenant, kind)
        validate_id(record.id, f"{kind} id")
        if record.id in table:
            raise ApiError("ALREADY_EXISTS", f"{kind} {record.id} exists")
        if len(table) >= self.max_records:
            raise ApiError("RESOURCE_EXHAUSTED", f"at most {self.max_records} {kind} records per tenant")
        table[record.id] = record
        return record

    async def get(self, tenant: str, kind: str, record_id: str) -> Any:
        record = self._table(tenant, kind).get(record_id)
        if record is None:
            raise ApiError("NOT_FOUND", f"{kind} {record_id} not found")
        return record

    def get_nowait(self, tenant: str, kind: str, record_id: str) -> Any | None:
        return self._table(tenant, kind).get(record_id)

    async def update(self, tenant: str, kind: str, record: Any) -> Any:
        table = self._table(tenant, kind)
        if record.id not in table:
            raise ApiError("NOT_FOUND", f"{kind} {record.id} not found")
        table[record.id] = record
        return record

    async def delete(self, tenant: str, kind: str, record_id: str) -> None:
        table = self._table(tenant, kind)
        if table.pop(record_id, None) is None:
            raise ApiError("NOT_FOUND", f"{kind} {record_id} not found")

    async def list(self, tenant: str, kind: str) -> list[Any]:
        return sorted(self._table(tenant, kind).values(), key=lambda r: r.id)
