"""Configuration store: typed rows in PostgreSQL (or in memory), loaded at start, changed live.

The interface (for the Admin API and the engine)
------------------------------------------------
Rows are frozen msgspec Structs, one class per table (``ENTITIES``): ``Tenant``, ``Role``,
``User``, ``Extension``, ``Did``, ``Trunk``, ``OutboundRoute``, ``QueueDef``, ``AgentDef``,
``Skill``, ``AgentSkill``, ``QueueMember``, ``Flow``, ``TimeCondition``, ``Holiday``, and the SIP
directory's ``SipDomain`` and ``SipCredential`` (migrations/0005). Every row has ``tenant`` and a
key (``Kind.KEY``, e.g. ``("extension",)``, ``("agent_id", "skill")``).

``ConfigStore`` (all methods are trio ``async``)::

    await store.get(Extension, "acme", "1001")          -> Extension       | NotFound
    await store.list(QueueDef, "acme")                  -> list[QueueDef]    (tenant=None: all)
    await store.create(Extension(tenant=..., ...))      -> Extension       | AlreadyExists
    await store.update(Extension(...))                  -> Extension       | NotFound
    await store.put(Extension(...))                     -> Extension         (create or replace)
    await store.delete(Extension, "acme", "1001")       -> None            | NotFound
    await store.flow_versions("acme", "main")           -> list[Flow]        (oldest first)
    await store.snapshot()                              -> ConfigSnapshot    (everything, validated)
    store.subscribe(callback)                           callback(ConfigChange) on every change

Writes take ``actor="..."`` (who, for the audit log). ``Flow`` rows are versioned: create/update/put
add a version (``version`` is assigned, the newest is live); ``get`` returns the newest; ``delete``
removes every version.

Errors (``adapters.postgres.errors``, each with ``.code``, a gRPC status name):
``NotFound`` (NOT_FOUND), ``AlreadyExists`` (ALREADY_EXISTS), ``InvalidArgument`` (INVALID_ARGUMENT,
``.row`` like ``"queues[acme/sales]"`` and ``.field`` like ``"strategy"``), ``FailedPrecondition``
(FAILED_PRECONDITION: unknown tenant, agent, skill...), ``Unavailable`` (UNAVAILABLE: PostgreSQL down).

Implementations: ``InMemoryConfigStore`` (tests, demo; same validation and errors) and
``PgConfigStore`` (one bridge crossing per call; admin writes are rare, so that is fine).

Rules
1. Validation happens at both edges: before a write (the API's request) and when rows are loaded
   (someone may have edited the tables by hand). ``validate(row)`` checks types and ranges
   (msgspec), that text holds no NUL or lone surrogate, and each kind's own rules (``_check``).
   A bad row found at load is *refused*: left out of the snapshot, listed in
   ``snapshot.rejected`` and logged with its name; the rest of the configuration still loads.
2. Changes reach running nodes by LISTEN/NOTIFY: a trigger on every table notifies
   ``callengine_config`` with the table, operation and key (see migrations/0001_config.sql);
   ``ConfigWatcher`` re-reads the row and hands a ``ConfigChange`` to ``NodeConfig.apply``. After a
   reconnection it reloads everything (notifications sent while disconnected are lost).
"""

from __future__ import annotations

import builtins
import logging
import re
import zoneinfo
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, ClassVar, Literal, Protocol, TypeVar

import msgspec
import trio

from adapters.postgres.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StoreError,
    Unavailable,
)
from engine.fsm.queue import STRATEGIES, QueueConfig, RelaxStep

__all__ = [
    "Entity", "Tenant", "Role", "User", "Extension", "Did", "Trunk", "OutboundRoute", "QueueDef",
    "AgentDef", "Skill", "AgentSkill", "QueueMember", "Flow", "TimeRule", "TimeCondition", "Holiday",
    "SipDomain", "SipCredential", "ConferenceRoom", "ENTITIES", "ConfigChange", "ConfigSnapshot", "RowError", "ConfigStore",
    "InMemoryConfigStore", "PgConfigStore", "ConfigWatcher", "NodeConfig", "validate", "row_name", "CHANNEL",
]

log = logging.getLogger("callengine.postgres.config")

CHANNEL = "callengine_config"
E = TypeVar("E", bound="Entity")

Level = Annotated[int, msgspec.Meta(ge=1, le=100)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
_DIGITS = re.compile(r"^[0-9*#+]{1,32}$")
_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DATE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Entity(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    TABLE: ClassVar[str] = ""
    KEY: ClassVar[tuple[str, ...]] = ()

    tenant: Id

    def key(self) -> tuple[str, ...]:
        return tuple(str(getattr(self, k)) for k in self.KEY)

    def _check(self) -> list[tuple[str, str]]:
        """Kind-specific rules: (field, problem) pairs."""
        return []


def row_name(kind: type[Entity], tenant: str, key: tuple[str, ...]) -> str:
    return f"{kind.TABLE}[{'/'.join((tenant, *key))}]"


# ---- the rows ------------------------------------------------------------------------------------


class Tenant(Entity, frozen=True, kw_only=True):
    TABLE: ClassVar[str] = "tenants"
    name: str = ""
    enabled: bool = True
    settings: dict[str, str | int | float | bool] = {}


class Role(Entity, frozen=True, kw_only=True):
    TABLE: ClassVar[str] = "roles"
    KEY: ClassVar[tuple[str, ...]] = ("role",)
    role: Id
    permissions: tuple[str, ...] = ()


class User(Entity, frozen=True, kw_only=True):
    TABLE: ClassVar[str] = "users"
    KEY: ClassVar[tuple[str, ...]] = ("user_id",)
    user_id: Id
    name: str = ""
    email: str = ""
    roles: tuple[str, ...] = ()
    enabled: bool = True


class Extension(Entity, frozen=True, kw_only=True):
    TABLE: ClassVar[str] = "extensions"
    KEY: ClassVar[tuple[str, ...]] = ("extension",)
    extension: Id
    name: str = ""
    user_id: str = ""
    caller_id: str = ""
    voicemail: bool = False
    enabled: bool = True
    #: pickup groups this extension belongs to (docs/parking.md; migration 0012)
    pickup_groups: tuple[str, ...] = ()
    #: always-on recording of every call this extension answers, after the announcement
    #: ``record_consent`` ("" = none) (docs/recordings.md; migration 0010)
    record: bool = False
    record_consent: str = ""

    def target_flags(self) -> Any:
        """What this extension says about a call that rings it (``engine.flows.model.TargetFlags``):
        always-on recording and its announcement, its own mailbox when it has voicemail."""
        from engine.flows.model import TargetFlags

        return TargetFlags(record=self.record, record_consent=self.record_consent if self.record else "",
                           voicemail=self.extension if self.voicemail else "")

    def _check(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if not _DIGITS.match(self.extension):
            out.append(("extension", f"digits, * # or + (1 to 32), got {self.extension!r}"))
        bad = [g for g in self.pickup_groups if not _GROUP.match(g)]
        if bad:
            out.append(("pickup_groups", f"names of 1 to 64 letters, digits, '.', '_' or '-', got {bad!r}"))
        return out


class Did(Entity, frozen=True, kw_only=True):
    """A dialled number and where it goes: ``queue:<id>``, ``flow:<id>``, ``extension:<n>``, ``hangup``."""

    TABLE: ClassVar[str] = "dids"
    KEY: ClassVar[tuple[str, ...]] = ("number",)
    number: Id
    destination: str
    time_condition: str = ""

    def _check(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if not _DIGITS.match(self.number):
            out.append(("number", f"digits, * # or + (1 to 32), got {self.number!r}"))
        kind, _, target = self.destination.partition(":")
        if not (self.destination == "hangup" or (kind in ("queue", "flow", "extension") and target)):
            out.append(("destination", f"queue:<id>, flow:<id>, extension:<n> or hangup, got {self.destination!r}"))
        return out


class Trunk(Entity, frozen=True, kw_only=True):
    TABLE: ClassVar[str] = "trunks"
    KEY: ClassVar[tuple[str, ...]] = ("trunk_id",)
    trunk_id: Id
    host: Id
    port: Port = 5060
    transport: Literal["udp", "tcp", "tls"] = "udp"
    username: str = ""
    max_channels: NonNegInt = 0
    enabled: bool = True


class OutboundRoute(Entity, frozen=True, kw_only=True):
    TABLE: ClassVar[str] = "outbound_routes"
    KEY: ClassVar[tuple[str, ...]] = ("route_id",)
    route_id: Id
    #: a regular expression the dialled number must match in full
    pattern: str
    priority: int = 100
    trunks: tuple[str, ...] = ()
    prepend: str = ""
    strip: NonNegInt = 0
    #: what the far end sees (migration 0014): the caller's number (keep), ``caller_id_value``
    #: (replace) or ``caller_id_value`` + the caller's number (prefix)
    caller_id_mode: Literal["keep", "replace", "prefix"] = "keep"
    caller_id_value: str = ""

    def _check(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        try:
            re.compile(self.pattern)
        except re.error as exc:
            out.append(("pattern", f"a regular expression ({exc})"))
        if not self.trunks:
            out.append(("trunks", "at least one trunk"))
        if self.caller_id_mode != "keep" and not _DIGITS.match(self.caller_id_value):
            out.append(("caller_id_value", f"digits, * # or + (1 to 32) for {self.caller_id_mode}, "
                                           f"got {self.caller_id_value!r}"))
        return out


class QueueDef(Entity, frozen=True, kw_only=True):
    """A queue's configuration (``to_config()`` is what the queue machine runs with)."""

    TABLE: ClassVar[str] = "queues"
    KEY: ClassVar[tuple[str, ...]] = ("queue_id",)
    queue_id: Id
    name: str = ""
    strategy: str = "longest-idle"
    ring_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    offer_grace_s: NonNegFloat = 10.0
    wrap_up_s: NonNegFloat = 0.0
    max_wait_s: NonNegFloat = 0.0
    max_length: NonNegInt = 0
    overflow_target: str = ""
    sl_threshold_s: NonNegFloat = 20.0
    short_abandon_s: NonNegFloat = 5.0
    relax_steps: tuple[RelaxStep, ...] = ()
    #: always-on recording of every call answered from this queue (docs/recordings.md; migration 0010)
    record: bool = False
    record_consent: str = ""

    def _check(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.strategy not in STRATEGIES:
            out.append(("strategy", f"one of {', '.join(STRATEGIES)}, got {self.strategy!r}"))
        if any(r.after_s < 0 or r.lower_by < 0 for r in self.relax_steps):
            out.append(("relax_steps", "after_s and lower_by >= 0"))
        return out

    def to_config(self) -> QueueConfig:
        return QueueConfig(
            queue_id=self.queue_id, tenant=self.tenant, strategy=self.strategy,  # type: ignore[arg-type]
            ring_timeout_s=self.ring_timeout_s, offer_grace_s=self.offer_grace_s, wrap_up_s=self.wrap_up_s,
            max_wait_s=self.max_wait_s, max_length=self.max_length, overflow_target=self.overflow_target,
            sl_threshold_s=self.sl_threshold_s, short_abandon_s=self.short_abandon_s,
            relax_steps=self.relax_steps, record=self.record, record_consent=self.record_consent)


class AgentDef(Entity, frozen=True, kw_only=True):
    TABLE: ClassVar[str] = "agents"
    KEY: ClassVar[tuple[str, ...]] = ("agent_id",)
    agent_id: Id
    name: str = ""
    extension: str = ""
    user_id: str = ""
    max_missed_offers: Annotated[int, msgspec.Meta(ge=1)] = 3
    enabled: bool = True


class Skill(Entity, frozen=True, kw_only=True):
    TABLE: ClassVar[str] = "skills"
    KEY: ClassVar[tuple[str, ...]] = ("skill",)
    skill: Id
    description: str = ""


class AgentSkill(Entity, frozen=True, kw_only=True):
    TABLE: ClassVar[str] = "agent_skills"
    KEY: ClassVar[tuple[str, ...]] = ("agent_id", "skill")
    agent_id: Id
    skill: Id
    level: Level


class QueueMember(Entity, frozen=True, kw_only=True):
    TABLE: ClassVar[str] = "queue_members"
    KEY: ClassVar[tuple[str, ...]] = ("queue_id", "agent_id")
    queue_id: Id
    agent_id: Id
    penalty: NonNegInt = 0


class Flow(Entity, frozen=True, kw_only=True):
    """A versioned flow document (the format ``engine.flows.loader`` reads, as JSON)."""

    TABLE: ClassVar[str] = "flows"
    KEY: ClassVar[tuple[str, ...]] = ("flow_id",)
    flow_id: Id
    document: dict[str, Any]
    #: assigned by the store on every save (0 in a request)
    version: NonNegInt = 0

    def _check(self) -> list[tuple[str, str]]:
        from engine.flows.loader import FlowError, parse_flows

        try:
            flows = parse_flows(self.document, row_name(Flow, self.tenant, self.key()))
        except FlowError as exc:
            return [("document", f"at {exc.path}: {exc.expected}")]
        if len(flows) != 1 or flows[0].id != self.flow_id:
            return [("document", f"exactly one flow whose id is {self.flow_id!r}")]
        return []


class TimeRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    days: tuple[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], ...] = DAYS  # type: ignore[assignment]
    start: str = "00:00"
    end: str = "24:00"


class TimeCondition(Entity, frozen=True, kw_only=True):
    TABLE: ClassVar[str] = "time_conditions"
    KEY: ClassVar[tuple[str, ...]] = ("name",)
    name: Id
    timezone: str = "UTC"
    rules: tuple[TimeRule, ...] = ()
    #: holidays of this calendar count as "closed"
    calendar: str = ""

    def _check(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            out.append(("timezone", f"an IANA time zone, got {self.timezone!r}"))
        for i, r in enumerate(self.rules):
            if not (_HHMM.match(r.start) and _HHMM.match(r.end)) or r.start >= r.end:
                out.append((f"rules[{i}]", f"HH:MM start before end, got {r.start!r}-{r.end!r}"))
        return out


class Holiday(Entity, frozen=True, kw_only=True):
    TABLE: ClassVar[str] = "holidays"
    KEY: ClassVar[tuple[str, ...]] = ("calendar", "day")
    calendar: Id
    #: YYYY-MM-DD
    day: str
    name: str = ""

    def _check(self) -> list[tuple[str, str]]:
        if not _DATE.match(self.day):
            return [("day", f"a date YYYY-MM-DD, got {self.day!r}")]
        return []


_DOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")


class SipDomain(Entity, frozen=True, kw_only=True):
    """A SIP domain (realm) of the tenant: directory lookups for ``user@domain`` find the tenant
    by it. A domain reaches one tenant (unique index in migrations/0005); lower case."""

    TABLE: ClassVar[str] = "sip_domains"
    KEY: ClassVar[tuple[str, ...]] = ("domain",)
    domain: Id

    def _check(self) -> list[tuple[str, str]]:
        if not _DOMAIN.match(self.domain):
            return [("domain", f"a lower-case host name (letters, digits, '.', '-'), got {self.domain!r}")]
        return []


class SipCredential(Entity, frozen=True, kw_only=True):
    """An extension's SIP password as the digest A1 hash ``md5(extension:realm:password)``
    (FreeSWITCH's ``a1-hash`` user param), valid for ``realm`` only. Never the password itself."""

    TABLE: ClassVar[str] = "sip_credentials"
    KEY: ClassVar[tuple[str, ...]] = ("extension",)
    extension: Id
    realm: Id
    a1_hash: str

    def _check(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if not _DOMAIN.match(self.realm):
            out.append(("realm", f"a lower-case host name (the SIP domain), got {self.realm!r}"))
        if not _MD5_HEX.match(self.a1_hash):
            out.append(("a1_hash", "32 lower-case hex digits (md5 of extension:realm:password)"))
        return out

    def __repr__(self) -> str:  # the hash is password-equivalent for SIP digest: keep it out of logs
        return f"SipCredential(tenant={self.tenant!r}, extension={self.extension!r}, realm={self.realm!r})"


_PIN_HASH = re.compile(r"^pbkdf2_sha256\$[0-9]{1,7}\$[0-9a-f]{16,128}\$[0-9a-f]{64}$")
#: mod_conference member flags a room may give everyone (moderator comes from the PIN only)
CONFERENCE_FLAGS = frozenset({"mute", "deaf", "endconf", "mintwo", "nomoh", "ghost"})


class ConferenceRoom(Entity, frozen=True, kw_only=True):
    """A conference room of a tenant (migrations/0011, docs/conferences.md); PINs as
    ``engine.conference.hash_pin`` strings, never digits."""

    TABLE: ClassVar[str] = "conference_rooms"
    KEY: ClassVar[tuple[str, ...]] = ("number",)
    number: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,16}$")]
    name: str = ""
    moderator_pin_hash: str = ""
    member_pin_hash: str = ""
    max_members: NonNegInt = 0
    wait_for_moderator: bool = False
    flags: tuple[str, ...] = ()

    def _check(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for name in ("moderator_pin_hash", "member_pin_hash"):
            value = getattr(self, name)
            if value and not _PIN_HASH.match(value):
                out.append((name, "'' or a PBKDF2 string from engine.conference.hash_pin (never the PIN)"))
        bad = sorted(set(self.flags) - CONFERENCE_FLAGS)
        if bad:
            out.append(("flags", f"one of {', '.join(sorted(CONFERENCE_FLAGS))} (not {', '.join(bad)})"))
        return out

    def __repr__(self) -> str:  # PIN hashes of 4-digit PINs are guessable offline: keep them out of logs
        return (f"ConferenceRoom(tenant={self.tenant!r}, number={self.number!r}, name={self.name!r}, "
                f"max_members={self.max_members}, wait_for_moderator={self.wait_for_moderator}, "
                f"flags={self.flags!r})")


#: every kind, in load order (parents before children)
ENTITIES: tuple[type[Entity], ...] = (
    Tenant, Role, User, Extension, Skill, QueueDef, AgentDef, AgentSkill, QueueMember, Flow,
    TimeCondition, Holiday, Did, Trunk, OutboundRoute, SipDomain, SipCredential, ConferenceRoom,
)
BY_TABLE: dict[str, type[Entity]] = {k.TABLE: k for k in ENTITIES}

#: foreign keys the in-memory store enforces like PostgreSQL does: kind -> [(kind, fields)]
_PARENTS: dict[type[Entity], list[tuple[type[Entity], tuple[str, ...]]]] = {
    AgentSkill: [(AgentDef, ("agent_id",)), (Skill, ("skill",))],
    QueueMember: [(QueueDef, ("queue_id",)), (AgentDef, ("agent_id",))],
    SipCredential: [(Extension, ("extension",))],
}
# No key is unique across tenants: queue, agent and DID ids are per tenant, like the node's actors
# (migrations/0003_tenant_keys.sql dropped the global indexes of 0001).


# ---- validation ----------------------------------------------------------------------------------

_FIELD_RE = re.compile(r"at `\$\.([A-Za-z_0-9]+)")


def _bad_text(value: Any) -> str:
    if isinstance(value, str):
        if "\x00" in value:
            return "must not contain NUL (U+0000)"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid Unicode (no lone surrogates)"
    elif isinstance(value, dict):
        for k, v in value.items():
            problem = _bad_text(k) or _bad_text(v)
            if problem:
                return problem
    elif isinstance(value, (list, tuple)):
        for v in value:
            problem = _bad_text(v)
            if problem:
                return problem
    elif isinstance(value, msgspec.Struct):
        return _bad_text(msgspec.to_builtins(value))
    return ""


def _convert(kind: type[E], data: Any, row: str) -> E:
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        m = _FIELD_RE.search(str(exc))
        raise InvalidArgument(row, m.group(1) if m else "", str(exc).split(" - at ")[0]) from None


def validate(obj: E) -> E:
    """Check a row completely (types and ranges, text, kind rules). Raises ``InvalidArgument``."""
    kind = type(obj)
    row = row_name(kind, str(getattr(obj, "tenant", "")), obj.key())
    checked = _convert(kind, msgspec.to_builtins(obj), row)
    for name in kind.__struct_fields__:
        problem = _bad_text(getattr(obj, name))
        if problem:
            raise InvalidArgument(row, name, problem)
    for field, problem in checked._check():
        raise InvalidArgument(row, field, problem)
    return checked


# ---- snapshot and changes ------------------------------------------------------------------------


class RowError(msgspec.Struct, frozen=True, kw_only=True):
    row: str
    field: str
    message: str


class ConfigChange(msgspec.Struct, frozen=True, kw_only=True):
    """One row changed. ``row`` is the new value (None when deleted). ``op`` is PostgreSQL's."""

    table: str
    op: Literal["INSERT", "UPDATE", "DELETE", "RESYNC"]
    tenant: str
    key: tuple[str, ...]
    row: Any = None


class ConfigSnapshot(msgspec.Struct, kw_only=True):
    """Every valid row by kind: ``rows[Kind][(tenant, *key)] = row``; refused rows in ``rejected``."""

    rows: dict[Any, dict[tuple[str, ...], Any]]
    rejected: list[RowError] = []

    def of(self, kind: type[E]) -> list[E]:
        return list(self.rows.get(kind, {}).values())

    def get(self, kind: type[E], tenant: str, *key: str) -> E | None:
        return self.rows.get(kind, {}).get((tenant, *key))

    def count(self) -> int:
        return sum(len(v) for v in self.rows.values())


def _snapshot_from(rows_by_kind: dict[type[Entity], list[tuple[str, tuple[str, ...], Any]]]) -> ConfigSnapshot:
    """Validate raw rows (kind -> [(tenant, key, builtins)]): keep the good, list the bad."""
    out: dict[Any, dict[tuple[str, ...], Any]] = {k: {} for k in ENTITIES}
    rejected: list[RowError] = []
    for kind, raws in rows_by_kind.items():
        bucket = out[kind]
        for tenant, key, raw in raws:
            row = row_name(kind, tenant, key)
            try:
                obj = _convert(kind, raw, row)
                for field, problem in obj._check():
                    raise InvalidArgument(row, field, problem)
            except InvalidArgument as exc:
                rejected.append(RowError(row=row, field=exc.field, message=exc.detail))
                log.error("configuration row refused: %s", exc)
                continue
            bucket[(tenant, *key)] = obj
    return ConfigSnapshot(rows=out, rejected=rejected)


Listener = Callable[[ConfigChange], None]


class ConfigStore(Protocol):
    async def get(self, kind: type[E], tenant: str, *key: str) -> E: ...
    async def list(self, kind: type[E], tenant: str | None = None) -> list[E]: ...
    async def create(self, obj: E, *, actor: str = "") -> E: ...
    async def update(self, obj: E, *, actor: str = "") -> E: ...
    async def put(self, obj: E, *, actor: str = "") -> E: ...
    async def delete(self, kind: type[Entity], tenant: str, *key: str, actor: str = "") -> None: ...
    async def flow_versions(self, tenant: str, flow_id: str) -> builtins.list[Flow]: ...
    async def snapshot(self) -> ConfigSnapshot: ...
    def subscribe(self, listener: Listener) -> None: ...


# ---- in memory -----------------------------------------------------------------------------------


class _WriteVerbs:
    """create / update / put are one write with a mode; both stores share the three verbs."""

    async def _write(self, obj: E, mode: str, actor: str) -> E:
        raise NotImplementedError

    async def create(self, obj: E, *, actor: str = "") -> E:
        return await self._write(obj, "create", actor)

    async def update(self, obj: E, *, actor: str = "") -> E:
        return await self._write(obj, "update", actor)

    async def put(self, obj: E, *, actor: str = "") -> E:
        return await self._write(obj, "put", actor)


class InMemoryConfigStore(_WriteVerbs):
    """The same contract as ``PgConfigStore`` without a database (tests, demo, the API's unit tests).

    ``unavailable = True`` makes every call raise ``Unavailable`` (to test the API's fault path).
    Listeners are called synchronously after each write, like NOTIFY after a commit.
    """

    def __init__(self) -> None:
        self._rows: dict[type[Entity], dict[tuple[str, ...], Entity]] = {k: {} for k in ENTITIES}
        self._flow_history: dict[tuple[str, str], list[Flow]] = {}
        self._listeners: list[Listener] = []
        self.unavailable = False
        self.audit: list[tuple[str, str, str, tuple[str, ...]]] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _up(self) -> None:
        if self.unavailable:
            raise Unavailable("config store unavailable")

    def _notify(self, kind: type[Entity], op: str, tenant: str, key: tuple[str, ...], row: Any, actor: str) -> None:
        self.audit.append((actor, op, kind.TABLE, (tenant, *key)))
        change = ConfigChange(table=kind.TABLE, op=op, tenant=tenant, key=key, row=row)  # type: ignore[arg-type]
        for listener in list(self._listeners):
            listener(change)

    async def get(self, kind: type[E], tenant: str, *key: str) -> E:
        self._up()
        await trio.lowlevel.checkpoint()
        row = self._rows[kind].get((tenant, *key))
        if row is None:
            raise NotFound(row_name(kind, tenant, key))
        return row  # type: ignore[return-value]

    async def list(self, kind: type[E], tenant: str | None = None) -> list[E]:
        self._up()
        await trio.lowlevel.checkpoint()
        rows = self._rows[kind]
        return [r for k, r in sorted(rows.items()) if tenant is None or k[0] == tenant]  # type: ignore[misc]

    def _references(self, obj: Entity, row: str) -> None:
        if not isinstance(obj, Tenant) and (obj.tenant,) not in self._rows[Tenant]:
            raise FailedPrecondition(row, f"tenant {obj.tenant!r} does not exist")
        for parent, fields in _PARENTS.get(type(obj), []):
            key = (obj.tenant, *(getattr(obj, f) for f in fields))
            if key not in self._rows[parent]:
                raise FailedPrecondition(row, f"{row_name(parent, obj.tenant, key[1:])} does not exist")

    async def _write(self, obj: E, mode: str, actor: str) -> E:
        self._up()
        await trio.lowlevel.checkpoint()
        obj = validate(obj)
        kind = type(obj)
        key = (obj.tenant, *obj.key())
        row = row_name(kind, obj.tenant, obj.key())
        exists = key in self._rows[kind]
        if mode == "create" and exists:
            raise AlreadyExists(row)
        if mode == "update" and not exists:
            raise NotFound(row)
        self._references(obj, row)
        if isinstance(obj, Flow):
            history = self._flow_history.setdefault((obj.tenant, obj.flow_id), [])
            obj = msgspec.structs.replace(obj, version=(history[-1].version if history else 0) + 1)
            history.append(obj)
        self._rows[kind][key] = obj
        self._notify(kind, "UPDATE" if exists else "INSERT", obj.tenant, obj.key(), obj, actor)
        return obj

    async def delete(self, kind: type[Entity], tenant: str, *key: str, actor: str = "") -> None:
        self._up()
        await trio.lowlevel.checkpoint()
        full = (tenant, *key)
        if full not in self._rows[kind]:
            raise NotFound(row_name(kind, tenant, key))
        del self._rows[kind][full]
        if kind is Flow:
            self._flow_history.pop((tenant, key[0]), None)
        # cascade like the foreign keys do
        for child, parents in _PARENTS.items():
            for parent, fields in parents:
                if parent is kind:
                    for ckey, crow in list(self._rows[child].items()):
                        if crow.tenant == tenant and tuple(getattr(crow, f) for f in fields) == tuple(key):
                            del self._rows[child][ckey]
                            self._notify(child, "DELETE", tenant, ckey[1:], None, actor)
        self._notify(kind, "DELETE", tenant, tuple(key), None, actor)

    async def flow_versions(self, tenant: str, flow_id: str) -> builtins.list[Flow]:
        self._up()
        await trio.lowlevel.checkpoint()
        return list(self._flow_history.get((tenant, flow_id), []))

    async def snapshot(self) -> ConfigSnapshot:
        self._up()
        await trio.lowlevel.checkpoint()
        return ConfigSnapshot(rows={k: dict(v) for k, v in self._rows.items()})


# ---- PostgreSQL ----------------------------------------------------------------------------------

_SCALARS = (msgspec.inspect.StrType, msgspec.inspect.IntType, msgspec.inspect.FloatType,
            msgspec.inspect.BoolType, msgspec.inspect.LiteralType)


class _Table:
    """SQL for one kind, derived from its Struct fields (column name = field name)."""

    def __init__(self, kind: type[Entity]) -> None:
        self.kind = kind
        info = msgspec.inspect.type_info(kind)
        self.columns = [f.name for f in info.fields]  # type: ignore[attr-defined]
        self.json = {f.name for f in info.fields if not isinstance(f.type, _SCALARS)}  # type: ignore[attr-defined]
        self.key = ("tenant", *kind.KEY)
        cols = ", ".join(self.columns)
        params = ", ".join(f"${i + 1}::jsonb" if c in self.json else f"${i + 1}" for i, c in enumerate(self.columns))
        where = " AND ".join(f"{k} = ${i + 1}" for i, k in enumerate(self.key))
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in self.columns if c not in self.key)
        t = kind.TABLE
        self.insert = f"INSERT INTO {t} ({cols}) VALUES ({params})"
        self.upsert = f"{self.insert} ON CONFLICT ({', '.join(self.key)}) DO UPDATE SET {sets or 'tenant = EXCLUDED.tenant'}"
        self.update = (f"UPDATE {t} SET " + ", ".join(
            f"{c} = ${i + 1}" + ("::jsonb" if c in self.json else "") for i, c in enumerate(self.columns))
            + " WHERE " + " AND ".join(f"{k} = ${self.columns.index(k) + 1}" for k in self.key))
        self.select = f"SELECT {cols} FROM {t}"
        self.get = f"{self.select} WHERE {where}"
        self.delete = f"DELETE FROM {t} WHERE {where}"
        self.order = " ORDER BY " + ", ".join(self.key)

    def params(self, obj: Entity) -> list[Any]:
        out: list[tuple[str, str]] = []
        for c in self.columns:
            v = getattr(obj, c)
            out.append(msgspec.json.encode(v).decode() if c in self.json else v)
        return out

    def raw(self, record: Any) -> dict[str, Any]:
        d = dict(record)
        for c in self.json:
            if isinstance(d.get(c), str):
                d[c] = msgspec.json.decode(d[c])
        return d


_TABLES: dict[type[Entity], _Table] = {}


def _table(kind: type[Entity]) -> _Table:
    t = _TABLES.get(kind)
    if t is None:
        t = _TABLES[kind] = _Table(kind)
    return t


_FLOW_LATEST = ("SELECT DISTINCT ON (tenant, flow_id) tenant, flow_id, document, version FROM flows"
                " {where} ORDER BY tenant, flow_id, version DESC")


class PgConfigStore(_WriteVerbs):
    """``ConfigStore`` on PostgreSQL through ``adapters.postgres.bridge.Postgres``."""

    def __init__(self, pg: Any) -> None:
        self.pg = pg
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Listeners are fed by a ``ConfigWatcher`` (LISTEN/NOTIFY), which must be running."""
        self._listeners.append(listener)

    async def _run(self, row: str, fn: Callable[..., Any], *args: Any) -> Any:
        import asyncpg

        try:
            return await self.pg.run(fn, *args)
        except StoreError:
            raise
        except asyncpg.exceptions.UniqueViolationError as exc:
            raise AlreadyExists(row, exc.constraint_name or "") from None
        except asyncpg.exceptions.ForeignKeyViolationError as exc:
            raise FailedPrecondition(row, f"refers to a row that does not exist ({exc.detail or exc})") from None
        except (asyncpg.exceptions.CheckViolationError, asyncpg.exceptions.NotNullViolationError,
                asyncpg.exceptions.DataError) as exc:
            raise InvalidArgument(row, getattr(exc, "column_name", "") or "", str(exc)) from None

    async def get(self, kind: type[E], tenant: str, *key: str) -> E:
        row = row_name(kind, tenant, key)
        if kind is Flow:
            sql = _FLOW_LATEST.format(where="WHERE tenant = $1 AND flow_id = $2")
        else:
            sql = _table(kind).get

        async def go(conn: Any) -> Any:
            return await conn.fetchrow(sql, tenant, *key)

        rec = await self._run(row, go)
        if rec is None:
            raise NotFound(row)
        return _convert(kind, _table(kind).raw(rec), row)

    async def list(self, kind: type[E], tenant: str | None = None) -> list[E]:
        t = _table(kind)
        if kind is Flow:
            sql = _FLOW_LATEST.format(where="" if tenant is None else "WHERE tenant = $1")
        else:
            sql = t.select + ("" if tenant is None else " WHERE tenant = $1") + t.order

        async def go(conn: Any) -> Any:
            return await conn.fetch(sql, *(() if tenant is None else (tenant,)))

        recs = await self._run(kind.TABLE, go)
        out: list[tuple[str, str]] = []
        for rec in recs:
            raw = t.raw(rec)
            out.append(_convert(kind, raw, row_name(kind, raw["tenant"], tuple(str(raw[k]) for k in kind.KEY))))
        return out

    async def _write(self, obj: E, mode: str, actor: str) -> E:
        obj = validate(obj)
        kind = type(obj)
        t = _table(kind)
        row = row_name(kind, obj.tenant, obj.key())

        async def go(conn: Any) -> Any:
            async with conn.transaction():
                await conn.execute("SELECT set_config('callengine.actor', $1, true)", actor)
                if kind is Flow:
                    exists = await conn.fetchval(
                        "SELECT max(version) FROM flows WHERE tenant = $1 AND flow_id = $2", obj.tenant,
                        obj.flow_id)  # type: ignore[attr-defined]
                    if mode == "create" and exists is not None:
                        return "exists"
                    if mode == "update" and exists is None:
                        return "missing"
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", row)
                    version = await conn.fetchval(
                        "INSERT INTO flows (tenant, flow_id, version, document) SELECT $1, $2,"
                        " coalesce(max(version), 0) + 1, $3::jsonb FROM flows WHERE tenant = $1 AND flow_id = $2"
                        " RETURNING version", obj.tenant, obj.flow_id,  # type: ignore[attr-defined]
                        msgspec.json.encode(obj.document).decode())  # type: ignore[attr-defined]
                    return version
                if mode == "create":
                    await conn.execute(t.insert, *t.params(obj))
                elif mode == "update":
                    status = await conn.execute(t.update, *t.params(obj))
                    if status.endswith(" 0"):
                        return "missing"
                else:
                    await conn.execute(t.upsert, *t.params(obj))
                return None

        result = await self._run(row, go)
        if result == "exists":
            raise AlreadyExists(row)
        if result == "missing":
            raise NotFound(row)
        if kind is Flow:
            obj = msgspec.structs.replace(obj, version=result)
        return obj

    async def delete(self, kind: type[Entity], tenant: str, *key: str, actor: str = "") -> None:
        row = row_name(kind, tenant, key)
        sql = _table(kind).delete

        async def go(conn: Any) -> str:
            async with conn.transaction():
                await conn.execute("SELECT set_config('callengine.actor', $1, true)", actor)
                return await conn.execute(sql, tenant, *key)

        status = await self._run(row, go)
        if status.endswith(" 0"):
            raise NotFound(row)

    async def flow_versions(self, tenant: str, flow_id: str) -> builtins.list[Flow]:
        async def go(conn: Any) -> Any:
            return await conn.fetch("SELECT tenant, flow_id, document, version FROM flows"
                                    " WHERE tenant = $1 AND flow_id = $2 ORDER BY version", tenant, flow_id)

        recs = await self._run(row_name(Flow, tenant, (flow_id,)), go)
        return [_convert(Flow, _table(Flow).raw(r), row_name(Flow, tenant, (flow_id,))) for r in recs]

    async def snapshot(self) -> ConfigSnapshot:
        """Everything, in one crossing and one REPEATABLE READ transaction (a consistent view)."""
        queries = []
        for kind in ENTITIES:
            t = _table(kind)
            queries.append(_FLOW_LATEST.format(where="") if kind is Flow else t.select)

        async def go(conn: Any) -> list[Any]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return [await conn.fetch(q) for q in queries]

        results = await self._run("configuration", go)
        raw: dict[type[Entity], list[tuple[str, tuple[str, ...], Any]]] = {}
        for kind, recs in zip(ENTITIES, results, strict=True):
            t = _table(kind)
            items = raw[kind] = []
            for rec in recs:
                d = t.raw(rec)
                items.append((str(d["tenant"]), tuple(str(d[k]) for k in kind.KEY), d))
        return _snapshot_from(raw)

    def _emit(self, change: ConfigChange) -> None:
        for listener in list(self._listeners):
            listener(change)


# ---- LISTEN / NOTIFY -----------------------------------------------------------------------------

_notification = msgspec.json.Decoder(dict[str, Any])


class ConfigWatcher:
    """Turns NOTIFYs on ``callengine_config`` into ``ConfigChange``s for ``store``'s listeners.

    One dedicated connection (LISTEN needs one). Notifications are collected on the asyncio side
    and handed over in batches through a trio channel; each change re-reads its row (the payload
    carries keys only). On connection loss: reconnect with backoff, then a ``RESYNC`` change tells
    listeners to reload everything (notifications sent while disconnected are gone).
    """

    def __init__(self, store: PgConfigStore, *, max_backoff_s: float = 5.0) -> None:
        self.store = store
        self.max_backoff_s = max_backoff_s
        self.received = 0
        self.reconnects = 0
        self.connected = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from adapters.postgres.listen import listen_forever

        def overflow() -> None:
            self._overflow = True  # too far behind: reconnect and resync

        def closed() -> None:
            self.connected = trio.Event()

        async def listening(reconnected: bool) -> None:
            self._overflow = False
            self.connected.set()
            if reconnected:
                self.reconnects += 1
                log.warning("config watcher: listening again; reloading the configuration")
                self.store._emit(ConfigChange(table="*", op="RESYNC", tenant="", key=()))

        async def consume(recv: trio.MemoryReceiveChannel[str | None]) -> None:
            async for payload in recv:
                if payload is None or self._overflow:
                    return
                await self._handle(payload)

        await listen_forever(self.store.pg.dsn, CHANNEL, name="config watcher", consume=consume,
                             on_listening=listening, on_overflow=overflow, on_closed=closed, capacity=10_000,
                             max_backoff_s=self.max_backoff_s, logger=log, task_status=task_status)

    async def _handle(self, payload: str) -> None:
        self.received += 1
        try:
            msg = _notification.decode(payload)
            kind = BY_TABLE[msg["table"]]
            tenant = msg["tenant"] or ""
            key = tuple(str(k) for k in msg.get("key") or ())
        except (msgspec.DecodeError, KeyError) as exc:
            log.error("config watcher: unreadable notification %r (%s)", payload[:200], exc)
            return
        row: Any = None
        op = msg.get("op", "UPDATE")
        try:
            row = await self.store.get(kind, tenant, *key)
        except NotFound:
            op = "DELETE"
        except InvalidArgument as exc:
            log.error("configuration row refused: %s", exc)
            return
        except Unavailable as exc:
            log.warning("config watcher: could not read %s (%s)", row_name(kind, tenant, key), exc)
            return
        if row is not None and op == "DELETE":
            op = "UPDATE"  # deleted and re-created before we looked
        self.store._emit(ConfigChange(table=kind.TABLE, op=op, tenant=tenant, key=key, row=row))


@asynccontextmanager
async def open_config_watcher(store: PgConfigStore) -> AsyncIterator[ConfigWatcher]:
    watcher = ConfigWatcher(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        try:
            yield watcher
        finally:
            nursery.cancel_scope.cancel()


# ---- applying configuration to a node ------------------------------------------------------------


class NodeConfig:
    """The configuration a running node works with, kept current by ``ConfigChange``s.

    - queues and agents are started on the node when they appear (``node.add_queue/add_agent``);
    - DIDs, extensions, flows, time conditions... are read from ``snapshot`` by whoever routes
      (``router()`` maps a dialled DID to its queue or flow), so a change applies to the next call;
    - a changed queue's parameters reach its running actor as ``UpdateQueueConfig`` (in the
      queue's tenant; counted in ``queue_updates_sent``). Only when that cannot be delivered (a
      node without ``deliver_nowait``, a full mailbox) is it counted in ``queue_updates_pending``
      (the row is still in ``snapshot``).
    """

    def __init__(self, snapshot: ConfigSnapshot, node: Any = None) -> None:
        self.snapshot = snapshot
        self.node = node
        self.applied = 0
        self.queue_updates_pending = 0
        self.queue_updates_sent = 0
        self.needs_resync = False
        #: (tenant, id): ids are per tenant on a node
        self._started_queues: set[tuple[str, str]] = set()
        self._started_agents: set[tuple[str, str]] = set()
        #: the QueueDef each started queue actor runs with (to push changes found by a resync)
        self._queue_rows: dict[tuple[str, str], QueueDef] = {}
        self._did_index: dict[str, Did] = {}
        self._did_index_version: Any = None

    def start(self, node: Any) -> None:
        """Start every enabled queue and agent of the snapshot on ``node``."""
        self.node = node
        for q in self.snapshot.of(QueueDef):
            self._add_queue(q)
        for a in self.snapshot.of(AgentDef):
            self._add_agent(a)

    def _add_queue(self, q: QueueDef) -> None:
        if self.node is None:
            return
        key = (q.tenant, q.queue_id)
        if key not in self._started_queues:
            self._started_queues.add(key)
            if self._start(self.node.add_queue, q.to_config()):
                self._queue_rows[key] = q
            else:
                # already running (the Admin API started it, or it outlived its deleted row):
                # it may run with other parameters, so push these
                self._update_queue(q)
        elif self._queue_rows.get(key) != q:
            self._update_queue(q)

    @staticmethod
    def _start(add: Callable[..., Any], *args: Any) -> bool:
        """Start an actor; False when the node already runs it."""
        from engine.actors.errors import ActorExists

        try:
            add(*args)
        except ActorExists:
            return False
        return True

    def _update_queue(self, q: QueueDef) -> None:
        """Push new parameters into the running queue actor (it re-dispatches under them)."""
        from engine.messages import UpdateQueueConfig

        self._queue_rows[(q.tenant, q.queue_id)] = q
        deliver = getattr(self.node, "deliver_nowait", None)
        if deliver is None:
            self.queue_updates_pending += 1
            return
        clock = getattr(getattr(self.node, "runtime", None), "clock", None)
        try:
            at = float(clock()) if clock is not None else 0.0
            deliver(UpdateQueueConfig(queue_id=q.queue_id, at=at, config=msgspec.to_builtins(q.to_config())),
                    q.tenant)
        except Exception as exc:  # noqa: BLE001 - a full mailbox or a stopped node: keep it pending
            log.warning("queue %s: new configuration not delivered (%r)", row_name(QueueDef, q.tenant, q.key()), exc)
            self.queue_updates_pending += 1
            return
        self.queue_updates_sent += 1

    def _add_agent(self, a: AgentDef) -> None:
        key = (a.tenant, a.agent_id)
        if self.node is not None and a.enabled and key not in self._started_agents:
            self._started_agents.add(key)
            self._start(self.node.add_agent, a.agent_id, a.tenant)

    def apply(self, change: ConfigChange) -> None:
        """A ``ConfigStore`` listener."""
        if change.op == "RESYNC":
            self.needs_resync = True
            return
        kind = BY_TABLE.get(change.table)
        if kind is None:
            return
        bucket = self.snapshot.rows.setdefault(kind, {})
        key = (change.tenant, *change.key)
        self.applied += 1
        if change.row is None:
            bucket.pop(key, None)
            # the actor keeps running (removing it is the Admin API's job, refused while busy);
            # a re-created row starts it again or pushes its parameters (_start tolerates both)
            if kind is QueueDef or kind is AgentDef:
                pair = (change.tenant, change.key[0])
                started = self._started_queues if kind is QueueDef else self._started_agents
                started.discard(pair)
                self._queue_rows.pop(pair, None)
            return
        bucket[key] = change.row
        if kind is QueueDef:
            self._add_queue(change.row)  # starts it, or pushes its new parameters
        elif kind is AgentDef:
            self._add_agent(change.row)

    async def resync(self, store: ConfigStore) -> None:
        """Reload everything (after the watcher reconnected) and start what is new."""
        self.snapshot = await store.snapshot()
        self.needs_resync = False
        if self.node is not None:
            self.start(self.node)

    def _dids(self) -> dict[str, Did]:
        """number -> DID, and (tenant + "/" + number) -> DID. A number held by two tenants has
        no plain entry (it is ambiguous without the call's tenant)."""
        version = id(self.snapshot), self.applied
        if self._did_index_version != version:
            index: dict[str, Did] = {}
            ambiguous: set[str] = set()
            for d in self.snapshot.of(Did):
                index[f"{d.tenant}/{d.number}"] = d
                if d.number in index or d.number in ambiguous:
                    index.pop(d.number, None)
                    ambiguous.add(d.number)
                else:
                    index[d.number] = d
            self._did_index = index
            self._did_index_version = version
        return self._did_index

    def router(self) -> Callable[[Any], Any]:
        """A node router: the dialled number's DID decides (queue, flow or extension); a number
        that is no DID but an enabled extension of the call's tenant rings that extension (a
        phone dialling another)."""
        from engine.messages import EnterFlow, RouteToExtension, RouteToQueue

        def route(event: Any) -> Any:
            # DIDs are per tenant: the call's tenant first, else the number when one tenant has it
            dids = self._dids()
            did = dids.get(f"{getattr(event, 'tenant', '')}/{event.destination}") or dids.get(event.destination)
            if did is not None:
                kind, _, target = did.destination.partition(":")
                if kind == "queue":
                    return RouteToQueue(call_id=event.call_id, at=event.at, queue_id=target)
                if kind == "flow":
                    return EnterFlow(call_id=event.call_id, at=event.at, flow_id=target)
                if kind == "extension":
                    return ring(event, target, self.snapshot.get(Extension, did.tenant, target))
            ext = self.snapshot.get(Extension, getattr(event, "tenant", "") or "default", event.destination)
            if ext is not None and ext.enabled:
                return ring(event, ext.extension, ext)
            return None

        def ring(event: Any, target: str, ext: Extension | None) -> Any:
            # an extension that records every call (always-on, docs/recordings.md) says so to the
            # call, and one with voicemail sends an unanswered caller to its mailbox (docs/voicemail.md)
            if ext is None:
                return RouteToExtension(call_id=event.call_id, at=event.at, target=target)
            flags = ext.target_flags()
            return RouteToExtension(call_id=event.call_id, at=event.at, target=target, record=flags.record,
                                    record_consent=flags.record_consent, voicemail=flags.voicemail)

        return route
