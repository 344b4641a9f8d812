"""The Admin service's store on a ``ConfigStore`` (PostgreSQL or its in-memory twin).

    config = PgConfigStore(pg)                       # or InMemoryConfigStore()
    store = ConfigAdminStore(config)
    await store.prime()                              # optional: fills get_nowait's cache
    async with open_stack(secret=..., store=store) as stack: ...

Admin writes then land in PostgreSQL; its trigger NOTIFYs, and a ``ConfigWatcher`` hands the change
to ``NodeConfig.apply`` on every node (new queues and agents start, a changed queue gets
``UpdateQueueConfig``), without a restart.

Rules
1. Records map to rows (adapters/postgres/config.py):
   - ``Extension(id, name, sip_user, voicemail, enabled, pickup_groups, record, record_consent)`` <->
     ``Extension(extension=id, name, user_id=sip_user, voicemail, enabled, pickup_groups, record,
     record_consent)``; ``caller_id`` is kept from the stored row.
   - ``QueueRecord`` <-> ``QueueDef`` (same field names, ``queue_id=id``); ``offer_grace_s``,
     ``short_abandon_s``, ``relax_steps`` are kept from the stored row.
   - ``AgentRecord(id, name, extension, queues, skills)`` <-> ``AgentDef`` + one ``QueueMember``
     per queue + one ``AgentSkill`` per skill (the ``Skill`` row is created when missing).
     ``user_id``, ``max_missed_offers``, ``enabled`` and member penalties are kept. ``queues``
     come back sorted (rows have no order). A queue that does not exist is FAILED_PRECONDITION.
   - ``Flow(id, name, definition)`` <-> ``Flow(flow_id=id, document=definition)``: the document's
     ``id`` defaults to the record's, ``name`` is its ``description`` (a ``description`` inside
     ``definition`` is moved to ``name`` on read). Each write is a new version; delete removes all.
   Fields a record does not carry are never reset by an update.
2. Errors with a ``.code`` (``adapters.postgres.errors``) become ``ApiError`` with that code and
   the store's message, which names the row (``queues[acme/sales].strategy: one of ...``).
   Rows are validated before anything is written (``config.validate``).
3. The tenant comes from the caller's token; its ``tenants`` row is created on its first write
   (``auto_tenant=False`` refuses such writes with FAILED_PRECONDITION instead).
4. An agent is several rows and ``ConfigStore`` has no transaction across calls: a create that
   fails on a member or skill deletes the agent again; an update that fails half-way leaves the
   rows written so far (the error names the row that failed; repeating the update converges).
5. ``get_nowait`` (the Api's synchronous lookup for agents and queues) reads a cache kept by this
   adapter's reads and writes and by the store's changes (``subscribe``: NOTIFY through a running
   ``ConfigWatcher`` for PostgreSQL). ``prime()`` loads it; a RESYNC reloads it on the next
   ``prime()`` (until then entries may be stale or missing, which only loses a default).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from adapters.postgres import config as c
from adapters.postgres.errors import AlreadyExists, NotFound, StoreError
from api.errors import ApiError
from api.store import RECORD_TYPES, AgentRecord, Extension, Flow, QueueRecord, validate_id

__all__ = ["ConfigAdminStore"]

_QUEUE_FIELDS = ("name", "strategy", "ring_timeout_s", "wrap_up_s", "max_wait_s", "max_length",
                 "overflow_target", "sl_threshold_s", "record", "record_consent")
_ROW_KIND: dict[str, type[c.Entity]] = {
    "extension": c.Extension, "queue": c.QueueDef, "agent": c.AgentDef, "flow": c.Flow,
}
_KIND_OF_TABLE = {k.TABLE: name for name, k in _ROW_KIND.items()}


@contextmanager
def _api_errors() -> Iterator[None]:
    try:
        yield
    except StoreError as exc:
        raise ApiError(exc.code, str(exc)[:500]) from None


# ---- conversions ---------------------------------------------------------------------------------


def _extension_row(tenant: str, r: Extension, old: c.Extension | None) -> c.Extension:
    return c.Extension(tenant=tenant, extension=r.id, name=r.name, user_id=r.sip_user,
                       caller_id=old.caller_id if old else "", voicemail=r.voicemail, enabled=r.enabled,
                       pickup_groups=tuple(r.pickup_groups), record=r.record, record_consent=r.record_consent)


def _extension_record(row: c.Extension) -> Extension:
    return Extension(id=row.extension, name=row.name, sip_user=row.user_id, voicemail=row.voicemail,
                     enabled=row.enabled, pickup_groups=list(row.pickup_groups), record=row.record,
                     record_consent=row.record_consent)


def _queue_row(tenant: str, r: QueueRecord, old: c.QueueDef | None) -> c.QueueDef:
    fields = {f: getattr(r, f) for f in _QUEUE_FIELDS}
    if old is not None:
        return msgspec.structs.replace(old, **fields)
    return c.QueueDef(tenant=tenant, queue_id=r.id, **fields)


def _queue_record(row: c.QueueDef) -> QueueRecord:
    return QueueRecord(id=row.queue_id, **{f: getattr(row, f) for f in _QUEUE_FIELDS})


def _agent_row(tenant: str, r: AgentRecord, old: c.AgentDef | None) -> c.AgentDef:
    if old is not None:
        return msgspec.structs.replace(old, name=r.name, extension=r.extension)
    return c.AgentDef(tenant=tenant, agent_id=r.id, name=r.name, extension=r.extension)


def _agent_record(row: c.AgentDef, members: builtins.list[c.QueueMember],
                  skills: builtins.list[c.AgentSkill]) -> AgentRecord:
    return AgentRecord(id=row.agent_id, name=row.name, extension=row.extension,
                       queues=sorted(m.queue_id for m in members), skills={s.skill: s.level for s in skills})


def _flow_row(tenant: str, r: Flow) -> c.Flow:
    document = dict(r.definition)
    document.setdefault("id", r.id)
    if r.name:
        document["description"] = r.name
    return c.Flow(tenant=tenant, flow_id=r.id, document=document)


def _flow_record(row: c.Flow) -> Flow:
    document = dict(row.document)
    name = document.pop("description", "")
    return Flow(id=row.flow_id, name=name if isinstance(name, str) else "", definition=document)


def _record(row: Any) -> Any:
    if isinstance(row, c.Extension):
        return _extension_record(row)
    if isinstance(row, c.QueueDef):
        return _queue_record(row)
    if isinstance(row, c.Flow):
        return _flow_record(row)
    raise TypeError(type(row).__name__)


# ---- the store -----------------------------------------------------------------------------------


class ConfigAdminStore:
    """``api.store.AdminStore`` on a ``ConfigStore``. See the module's rules."""

    def __init__(self, config: Any, *, auto_tenant: bool = True, actor: str = "api") -> None:
        self.config = config
        self.auto_tenant = auto_tenant
        #: who writes, for the store's audit log (the Api's own audit log has the subject)
        self.actor = actor
        self._tenants: set[str] = set()
        #: (tenant, kind, id) -> record, for get_nowait
        self._cache: dict[tuple[str, str, str], Any] = {}
        config.subscribe(self._on_change)

    # ---------------------------------------------------------------- AdminStore

    async def create(self, tenant: str, kind: str, record: Any) -> Any:
        self._kind(kind)
        validate_id(record.id, f"{kind} id")
        with _api_errors():
            await self._ensure_tenant(tenant)
            if kind == "agent":
                out = await self._create_agent(tenant, record)
            else:
                row = self._row(tenant, kind, record, None)
                out = _record(await self.config.create(row, actor=self.actor))
        self._cache[(tenant, kind, record.id)] = out
        return out

    async def get(self, tenant: str, kind: str, record_id: str) -> Any:
        self._kind(kind)
        with _api_errors():
            if kind == "agent":
                row = await self.config.get(c.AgentDef, tenant, record_id)
                out: Any = _agent_record(row, *await self._agent_children(tenant, record_id))
            else:
                out = _record(await self.config.get(_ROW_KIND[kind], tenant, record_id))
        self._cache[(tenant, kind, record_id)] = out
        return out

    def get_nowait(self, tenant: str, kind: str, record_id: str) -> Any | None:
        return self._cache.get((tenant, kind, record_id))

    async def update(self, tenant: str, kind: str, record: Any) -> Any:
        self._kind(kind)
        with _api_errors():
            if kind == "agent":
                out = await self._update_agent(tenant, record)
            elif kind == "flow":
                await self.config.get(c.Flow, tenant, record.id)  # NOT_FOUND before validation
                out = _record(await self.config.update(_flow_row(tenant, record), actor=self.actor))
            else:
                old = await self.config.get(_ROW_KIND[kind], tenant, record.id)
                out = _record(await self.config.update(self._row(tenant, kind, record, old), actor=self.actor))
        self._cache[(tenant, kind, record.id)] = out
        return out

    async def delete(self, tenant: str, kind: str, record_id: str) -> None:
        self._kind(kind)
        with _api_errors():
            await self.config.delete(_ROW_KIND[kind], tenant, record_id, actor=self.actor)
        self._cache.pop((tenant, kind, record_id), None)

    async def list(self, tenant: str, kind: str) -> builtins.list[Any]:
        self._kind(kind)
        with _api_errors():
            if kind == "agent":
                agents = await self.config.list(c.AgentDef, tenant)
                members = await self.config.list(c.QueueMember, tenant)
                skills = await self.config.list(c.AgentSkill, tenant)
                out = [_agent_record(a, [m for m in members if m.agent_id == a.agent_id],
                                     [s for s in skills if s.agent_id == a.agent_id]) for a in agents]
            else:
                out = [_record(r) for r in await self.config.list(_ROW_KIND[kind], tenant)]
        out.sort(key=lambda r: r.id)
        for r in out:
            self._cache[(tenant, kind, r.id)] = r
        return out

    async def prime(self) -> None:
        """Load every record into ``get_nowait``'s cache (one snapshot)."""
        with _api_errors():
            snap = await self.config.snapshot()
        cache: dict[tuple[str, str, str], Any] = {}
        for kind, row_kind in _ROW_KIND.items():
            if kind != "agent":
                for row in snap.of(row_kind):
                    rec = _record(row)
                    cache[(row.tenant, kind, rec.id)] = rec
        members: dict[tuple[str, str], builtins.list[c.QueueMember]] = {}
        skills: dict[tuple[str, str], builtins.list[c.AgentSkill]] = {}
        for m in snap.of(c.QueueMember):
            members.setdefault((m.tenant, m.agent_id), []).append(m)
        for s in snap.of(c.AgentSkill):
            skills.setdefault((s.tenant, s.agent_id), []).append(s)
        for a in snap.of(c.AgentDef):
            key = (a.tenant, a.agent_id)
            cache[(a.tenant, "agent", a.agent_id)] = _agent_record(a, members.get(key, []), skills.get(key, []))
        self._cache = cache

    # ---------------------------------------------------------------- helpers

    @staticmethod
    def _kind(kind: str) -> None:
        if kind not in RECORD_TYPES:
            raise ApiError("INVALID_ARGUMENT", f"unknown kind {kind!r}")

    @staticmethod
    def _row(tenant: str, kind: str, record: Any, old: Any) -> Any:
        if kind == "extension":
            return _extension_row(tenant, record, old)
        if kind == "queue":
            return _queue_row(tenant, record, old)
        return _flow_row(tenant, record)

    async def _ensure_tenant(self, tenant: str) -> None:
        if tenant in self._tenants or not self.auto_tenant:
            return
        try:
            await self.config.get(c.Tenant, tenant)
        except NotFound:
            try:
                await self.config.create(c.Tenant(tenant=tenant), actor=self.actor)
            except AlreadyExists:
                pass
        self._tenants.add(tenant)

    async def _ensure_skills(self, tenant: str, skills: dict[str, int]) -> None:
        for skill in sorted(skills):
            try:
                await self.config.get(c.Skill, tenant, skill)
            except NotFound:
                try:
                    await self.config.create(c.Skill(tenant=tenant, skill=skill), actor=self.actor)
                except AlreadyExists:
                    pass

    async def _agent_children(self, tenant: str, agent_id: str) -> tuple[
            builtins.list[c.QueueMember], builtins.list[c.AgentSkill]]:
        members = [m for m in await self.config.list(c.QueueMember, tenant) if m.agent_id == agent_id]
        skills = [s for s in await self.config.list(c.AgentSkill, tenant) if s.agent_id == agent_id]
        return members, skills

    @staticmethod
    def _children(tenant: str, r: AgentRecord, old_members: builtins.list[c.QueueMember]) -> tuple[
            builtins.list[c.QueueMember], builtins.list[c.AgentSkill]]:
        penalty = {m.queue_id: m.penalty for m in old_members}
        members = [c.QueueMember(tenant=tenant, queue_id=q, agent_id=r.id, penalty=penalty.get(q, 0))
                   for q in dict.fromkeys(r.queues)]
        skills = [c.AgentSkill(tenant=tenant, agent_id=r.id, skill=s, level=level)
                  for s, level in sorted(r.skills.items())]
        return members, skills

    async def _create_agent(self, tenant: str, r: AgentRecord) -> AgentRecord:
        row = _agent_row(tenant, r, None)
        members, skills = self._children(tenant, r, [])
        for x in (row, *members, *skills):  # every row valid before the first write
            c.validate(x)
        created = await self.config.create(row, actor=self.actor)
        try:
            await self._ensure_skills(tenant, r.skills)
            for x in (*members, *skills):
                await self.config.create(x, actor=self.actor)
        except Exception:
            try:
                await self.config.delete(c.AgentDef, tenant, r.id, actor=self.actor)  # cascades
            except StoreError:
                pass
            raise
        return _agent_record(created, members, skills)

    async def _update_agent(self, tenant: str, r: AgentRecord) -> AgentRecord:
        old = await self.config.get(c.AgentDef, tenant, r.id)
        old_members, old_skills = await self._agent_children(tenant, r.id)
        row = _agent_row(tenant, r, old)
        members, skills = self._children(tenant, r, old_members)
        for x in (row, *members, *skills):
            c.validate(x)
        if row != old:
            row = await self.config.update(row, actor=self.actor)
        await self._ensure_skills(tenant, r.skills)
        want_members = {m.queue_id for m in members}
        want_skills = {s.skill: s for s in skills}
        for m in old_members:
            if m.queue_id not in want_members:
                await self.config.delete(c.QueueMember, tenant, m.queue_id, r.id, actor=self.actor)
        for s in old_skills:
            if s.skill not in want_skills:
                await self.config.delete(c.AgentSkill, tenant, r.id, s.skill, actor=self.actor)
        had_members = {m.queue_id for m in old_members}
        for m in members:
            if m.queue_id not in had_members:
                await self.config.create(m, actor=self.actor)
        had_skills = {s.skill: s for s in old_skills}
        for s in skills:
            if had_skills.get(s.skill) != s:
                await self.config.put(s, actor=self.actor)
        return _agent_record(row, members, skills)

    # ---------------------------------------------------------------- store changes

    def _on_change(self, change: c.ConfigChange) -> None:
        """Keep ``get_nowait``'s cache current with changes made elsewhere (other API nodes,
        hand edits): a ``ConfigStore`` listener."""
        if change.op == "RESYNC":
            return  # prime() reloads; entries stay until then
        tenant = change.tenant
        kind = _KIND_OF_TABLE.get(change.table)
        row = change.row
        if kind is not None and kind != "agent":
            key = (tenant, kind, change.key[0])
            if row is None:
                self._cache.pop(key, None)
            else:
                self._cache[key] = _record(row)
        elif kind == "agent":
            key = (tenant, "agent", change.key[0])
            cached = self._cache.get(key)
            if row is None:
                self._cache.pop(key, None)
            else:
                queues = cached.queues if cached else []
                skills = cached.skills if cached else {}
                self._cache[key] = AgentRecord(id=row.agent_id, name=row.name, extension=row.extension,
                                               queues=list(queues), skills=dict(skills))
        elif change.table == c.QueueMember.TABLE:
            queue_id, agent_id = change.key
            key = (tenant, "agent", agent_id)
            cached = self._cache.get(key)
            if cached is not None:
                queues = set(cached.queues) - {queue_id} | ({queue_id} if row is not None else set())
                self._cache[key] = msgspec.structs.replace(cached, queues=sorted(queues))
        elif change.table == c.AgentSkill.TABLE:
            agent_id, skill = change.key
            key = (tenant, "agent", agent_id)
            cached = self._cache.get(key)
            if cached is not None:
                levels = {k: v for k, v in cached.skills.items() if k != skill}
                if row is not None:
                    levels[skill] = row.level
                self._cache[key] = msgspec.structs.replace(cached, skills=levels)
