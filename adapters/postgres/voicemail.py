"""Voicemail in PostgreSQL (#10 part 1): mailboxes, message metadata, MWI, retention and erasure.

Rules
1. Tables of migration 0009 (``voicemail_boxes``, ``voicemail_messages``). A PIN only ever enters
   as ``engine.voicemail.hash_pin``'s string; no method returns or logs it.
2. A message's id is the call id that left it, so storing a replayed VOICEMAIL_NEW is a no-op.
3. Every change of a mailbox's counts (new message, saved, deleted, expired, erased) is followed
   by one MWI (``mwi``: the MESSAGE_WAITING headers, sent to the switch by the caller's sender,
   e.g. ``adapters.freeswitch.voicemail.esl_mwi``). The counts are read back from the table after
   the change, so an MWI never reports a state the database does not hold.
4. Deletion never loses track of the audio file: the row stays as a tombstone (deleted_at,
   deleted_by, caller id blanked) until ``mark_files_removed``; the media server owns the files
   and ESL has no command to delete one, so ``files_to_remove`` is what an ops script acts on.
5. Bounded work: ``expire`` deletes at most ``limit`` messages per call; ``run_retention`` calls it
   every ``interval_s`` and again at once while a batch came back full.
6. The CTI stream feeds ``VoicemailService.feed`` without blocking (a bounded channel; a full one
   drops the event, counted in ``dropped``): the call path never waits for PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

import asyncpg
import msgspec
import trio

from adapters.postgres.bridge import Postgres
from adapters.postgres.errors import FailedPrecondition, InvalidArgument, NotFound
from engine import voicemail as vm
from engine.messages import CtiEvent, VoicemailBox

__all__ = ["Mailbox", "Message", "VoicemailStore", "VoicemailService", "MwiSender"]

log = logging.getLogger("callengine.voicemail")

MwiSender = Callable[[dict[str, str]], Awaitable[None]]

Folder = Literal["new", "saved"]


class Mailbox(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    box: str
    greeting: str = ""
    max_length_s: int = 120
    retention_days: int = 30
    #: wrong PINs in a row at the phone menu, across calls; locked (every PIN fails) until then
    pin_failures: int = 0
    locked_until: float | None = None


def _mailbox(tenant: str, box: str, row: Any) -> Mailbox:
    return Mailbox(tenant=tenant, box=box, greeting=row["greeting"], max_length_s=row["max_length_s"],
                   retention_days=row["retention_days"], pin_failures=row["pin_failures"],
                   locked_until=_unix(row["locked_until"]))


class Message(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    id: str
    box: str
    caller_id: str
    created_at: float
    duration_s: float
    path: str
    folder: Folder
    expires_at: float | None = None


def _ts(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def _unix(v: dt.datetime | None) -> float | None:
    return None if v is None else v.timestamp()


def _message(r: Any) -> Message:
    return Message(tenant=r["tenant"], id=r["id"], box=r["box"], caller_id=r["caller_id"],
                   created_at=r["created_at"].timestamp(), duration_s=r["duration_s"], path=r["path"],
                   folder=r["folder"], expires_at=_unix(r["expires_at"]))


_LIVE = "deleted_at IS NULL"


class VoicemailStore:
    """Typed access to the voicemail tables (one bridge crossing per call)."""

    def __init__(self, pg: Postgres, *, salt: Callable[[], bytes] = lambda: os.urandom(16)) -> None:
        self.pg = pg
        self._salt = salt

    # ---- mailboxes ---------------------------------------------------------------------------
    async def set_mailbox(self, tenant: str, box: str, *, pin: str | None = None, greeting: str = "",
                          max_length_s: int = 120, retention_days: int = 30) -> Mailbox:
        """Create or update the mailbox of extension ``box``. A new mailbox needs a PIN; an update
        without one keeps the old PIN."""
        if not 1 <= max_length_s <= 3600:
            raise InvalidArgument(f"voicemail box {box}", "max_length_s", "must be 1..3600 seconds")
        if retention_days < 0:
            raise InvalidArgument(f"voicemail box {box}", "retention_days", "must be >= 0 (0 = keep)")
        try:
            pin_hash = None if pin is None else vm.hash_pin(pin, self._salt())
        except vm.BadPin as exc:
            raise InvalidArgument(f"voicemail box {box}", "pin", str(exc)) from None

        async def go(conn: Any) -> Any:
            if pin_hash is None:
                return await conn.fetchrow(
                    "UPDATE voicemail_boxes SET greeting=$3, max_length_s=$4, retention_days=$5, updated_at=now()"
                    " WHERE tenant=$1 AND box=$2 RETURNING *", tenant, box, greeting, max_length_s, retention_days)
            # a new PIN clears the wrong-PIN count and any lock (the owner was given a new one)
            return await conn.fetchrow(
                "INSERT INTO voicemail_boxes (tenant, box, pin_hash, greeting, max_length_s, retention_days)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, box) DO UPDATE SET"
                " pin_hash=EXCLUDED.pin_hash, greeting=EXCLUDED.greeting, max_length_s=EXCLUDED.max_length_s,"
                " retention_days=EXCLUDED.retention_days, pin_failures=0, locked_until=NULL, updated_at=now()"
                " RETURNING *",
                tenant, box, pin_hash, greeting, max_length_s, retention_days)

        try:
            row = await self.pg.run(go)
        except asyncpg.exceptions.ForeignKeyViolationError:
            raise FailedPrecondition(f"voicemail box {box}", f"tenant {tenant} has no extension {box}") from None
        if row is None:
            raise InvalidArgument(f"voicemail box {box}", "pin", "a new mailbox needs a PIN")
        return _mailbox(tenant, box, row)

    async def set_pin(self, tenant: str, box: str, pin: str) -> None:
        """Set the PIN only (a mailbox with the defaults is created when there is none)."""
        try:
            pin_hash = vm.hash_pin(pin, self._salt())
        except vm.BadPin as exc:
            raise InvalidArgument(f"voicemail box {box}", "pin", str(exc)) from None

        async def go(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO voicemail_boxes (tenant, box, pin_hash) VALUES ($1, $2, $3) ON CONFLICT (tenant, box)"
                " DO UPDATE SET pin_hash=EXCLUDED.pin_hash, pin_failures=0, locked_until=NULL, updated_at=now()",
                tenant, box, pin_hash)

        try:
            await self.pg.run(go)
        except asyncpg.exceptions.ForeignKeyViolationError:
            raise FailedPrecondition(f"voicemail box {box}", f"tenant {tenant} has no extension {box}") from None

    async def get_mailbox(self, tenant: str, box: str) -> Mailbox:
        return _mailbox(tenant, box, await self._box_row(tenant, box))

    async def pin_checked(self, tenant: str, box: str, ok: bool, at: float, *, max_failures: int,
                          lock_s: float) -> vm.Lockout | None:
        """Count one PIN checked at the phone menu (``engine.voicemail.lockout``), in one
        transaction with the row locked, so two calls guessing at once both count. None: no such
        mailbox (nothing to count)."""

        async def go(conn: Any) -> vm.Lockout | None:
            async with conn.transaction():
                row = await conn.fetchrow("SELECT pin_failures, locked_until FROM voicemail_boxes"
                                          " WHERE tenant=$1 AND box=$2 FOR UPDATE", tenant, box)
                if row is None:
                    return None
                now = vm.Lockout(failures=row["pin_failures"], locked_until=_unix(row["locked_until"]))
                new = vm.lockout(now, ok, at, max_failures=max_failures, lock_s=lock_s)
                if new != now:
                    await conn.execute(
                        "UPDATE voicemail_boxes SET pin_failures=$3, locked_until=$4 WHERE tenant=$1 AND box=$2",
                        tenant, box, new.failures, None if new.locked_until is None else _ts(new.locked_until))
                return new

        result: vm.Lockout | None = await self.pg.run(go)
        return result

    async def _box_row(self, tenant: str, box: str) -> Any:
        async def go(conn: Any) -> Any:
            return await conn.fetchrow("SELECT * FROM voicemail_boxes WHERE tenant=$1 AND box=$2", tenant, box)

        row = await self.pg.run(go)
        if row is None:
            raise NotFound(f"voicemail box {tenant}/{box}")
        return row

    async def check_pin(self, tenant: str, box: str, pin: str) -> bool:
        return vm.check_pin(pin, (await self._box_row(tenant, box))["pin_hash"])

    async def pin_hash(self, tenant: str, box: str, at: float | None = None) -> str:
        """For the owner's menu (``engine.voicemail.start``); never for an API reply. With ``at``:
        "" while the mailbox is locked then (every PIN fails, the caller cannot tell why)."""
        row = await self._box_row(tenant, box)
        if at is not None and vm.is_locked(vm.Lockout(locked_until=_unix(row["locked_until"])), at):
            return ""
        return str(row["pin_hash"])

    async def delete_mailbox(self, tenant: str, box: str) -> int:
        """Remove the mailbox; its messages are erased first (tombstones kept for the files)."""
        erased = await self.erase_box(tenant, box)

        async def go(conn: Any) -> str:
            return str(await conn.execute("DELETE FROM voicemail_boxes WHERE tenant=$1 AND box=$2", tenant, box))

        if (await self.pg.run(go)).endswith(" 0"):
            raise NotFound(f"voicemail box {tenant}/{box}")
        return erased

    # ---- messages ----------------------------------------------------------------------------
    async def add_message(self, tenant: str, box: str, message_id: str, *, caller_id: str, created_at: float,
                          duration_s: float, path: str) -> bool:
        """Store a message (idempotent by id); its expiry follows the mailbox's retention (30 days
        when the box has no mailbox row: a flow may name a box nobody configured)."""
        async def go(conn: Any) -> str:
            return str(await conn.execute(
                "INSERT INTO voicemail_messages (tenant, id, box, caller_id, created_at, duration_s, path, expires_at)"
                " SELECT $1, $2, $3, $4, $5::timestamptz, $6, $7, CASE WHEN r.days > 0 THEN $5::timestamptz + make_interval(days => r.days) END"
                " FROM (SELECT COALESCE((SELECT retention_days FROM voicemail_boxes WHERE tenant=$1 AND box=$3), 30)"
                " AS days) r ON CONFLICT (tenant, id) DO NOTHING",
                tenant, message_id, box, caller_id, _ts(created_at), max(0.0, duration_s), path))

        return (await self.pg.run(go)).endswith(" 1")

    async def messages(self, tenant: str, box: str, folder: Folder | None = None) -> list[Message]:
        async def go(conn: Any) -> list[Any]:
            return list(await conn.fetch(
                f"SELECT * FROM voicemail_messages WHERE tenant=$1 AND box=$2 AND {_LIVE}"
                " AND ($3::text IS NULL OR folder=$3) ORDER BY created_at, id", tenant, box, folder))

        return [_message(r) for r in await self.pg.run(go)]

    async def set_folder(self, tenant: str, box: str, message_id: str, folder: Folder) -> bool:
        """Move a message; True when its folder changed. NotFound for a deleted or unknown one."""
        async def go(conn: Any) -> Any:
            return await conn.fetchrow(
                "WITH old AS (SELECT folder FROM voicemail_messages WHERE tenant=$1 AND box=$2 AND id=$3"
                f" AND {_LIVE} FOR UPDATE) UPDATE voicemail_messages m SET folder=$4 FROM old"
                " WHERE m.tenant=$1 AND m.box=$2 AND m.id=$3 RETURNING old.folder AS was", tenant, box, message_id, folder)

        row = await self.pg.run(go)
        if row is None:
            raise NotFound(f"voicemail message {tenant}/{box}/{message_id}")
        return bool(row["was"] != folder)

    async def delete_message(self, tenant: str, box: str, message_id: str, *, by: str = "owner") -> bool:
        async def go(conn: Any) -> str:
            return str(await conn.execute(
                "UPDATE voicemail_messages SET deleted_at=now(), deleted_by=$4, caller_id=''"
                f" WHERE tenant=$1 AND box=$2 AND id=$3 AND {_LIVE}", tenant, box, message_id, by))

        return (await self.pg.run(go)).endswith(" 1")

    async def counts(self, tenant: str, box: str) -> tuple[int, int]:
        """(new, saved) messages of the mailbox."""
        async def go(conn: Any) -> Any:
            return await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE folder='new') AS new, count(*) FILTER (WHERE folder='saved') AS saved"
                f" FROM voicemail_messages WHERE tenant=$1 AND box=$2 AND {_LIVE}", tenant, box)

        row = await self.pg.run(go)
        return int(row["new"]), int(row["saved"])

    async def mwi_account(self, tenant: str, box: str) -> str:
        """``<box>@<the tenant's first SIP domain>`` (the tenant id when it has none)."""
        async def go(conn: Any) -> Any:
            return await conn.fetchval("SELECT min(domain) FROM sip_domains WHERE tenant=$1", tenant)

        return f"{box}@{await self.pg.run(go) or tenant}"

    # ---- retention and erasure ---------------------------------------------------------------
    async def _delete_where(self, where: str, args: Iterable[Any], by: str, limit: int | None = None) -> list[tuple[str, str]]:
        """Tombstone the live messages matching ``where`` (at most ``limit``); (tenant, box) per row."""
        lim = "" if limit is None else f" LIMIT {int(limit)}"

        async def go(conn: Any) -> list[Any]:
            return list(await conn.fetch(
                "UPDATE voicemail_messages m SET deleted_at=now(), deleted_by=$1, caller_id='' FROM ("
                f" SELECT tenant, id FROM voicemail_messages WHERE {_LIVE} AND {where}"
                f" ORDER BY tenant, id{lim} FOR UPDATE SKIP LOCKED) d"
                " WHERE m.tenant=d.tenant AND m.id=d.id RETURNING m.tenant, m.box", by, *args))

        return [(r["tenant"], r["box"]) for r in await self.pg.run(go)]

    async def expire(self, now: float, limit: int = 500) -> list[tuple[str, str]]:
        """Delete at most ``limit`` messages whose expiry passed; the (tenant, box) of each."""
        return await self._delete_where("expires_at <= $2", [_ts(now)], "retention", limit)

    async def erase_box(self, tenant: str, box: str) -> int:
        """GDPR: delete every message of a mailbox."""
        return len(await self._delete_where("tenant=$2 AND box=$3", [tenant, box], "erase_box"))

    async def erase_caller(self, tenant: str, caller_id: str) -> list[tuple[str, str]]:
        """GDPR: delete every message the number ``caller_id`` left in the tenant's mailboxes."""
        if not caller_id:
            raise InvalidArgument("voicemail erase", "caller_id", "must not be empty")
        return await self._delete_where("tenant=$2 AND caller_id=$3", [tenant, caller_id], "erase_caller")

    async def files_to_remove(self, limit: int = 1000) -> list[tuple[str, str, str]]:
        """(tenant, id, path) of deleted messages whose audio file is not yet known to be gone."""
        async def go(conn: Any) -> list[Any]:
            return list(await conn.fetch(
                "SELECT tenant, id, path FROM voicemail_messages WHERE deleted_at IS NOT NULL"
                " AND file_removed_at IS NULL ORDER BY deleted_at, tenant, id LIMIT $1", limit))

        return [(r["tenant"], r["id"], r["path"]) for r in await self.pg.run(go)]

    async def mark_files_removed(self, keys: Iterable[tuple[str, str]]) -> int:
        pairs = list(keys)
        tenants, ids = [t for t, _ in pairs], [i for _, i in pairs]

        async def go(conn: Any) -> str:
            return str(await conn.execute(
                "UPDATE voicemail_messages m SET file_removed_at=now() FROM unnest($1::text[], $2::text[]) k(t, i)"
                " WHERE m.tenant=k.t AND m.id=k.i AND m.deleted_at IS NOT NULL AND m.file_removed_at IS NULL",
                list(tenants), list(ids)))

        return int((await self.pg.run(go)).rsplit(" ", 1)[-1])


class VoicemailService:
    """The host side: stores VOICEMAIL_NEW from the CTI stream, and sends MWI after every change."""

    #: the CTI events the service acts on
    EVENTS = frozenset({"VOICEMAIL_NEW", "VOICEMAIL_ACCESS", "VOICEMAIL_SETTINGS", "VOICEMAIL_SAVED",
                        "VOICEMAIL_DELETED", "VOICEMAIL_PIN_OK", "VOICEMAIL_PIN_FAILED"})

    def __init__(self, store: VoicemailStore, mwi: MwiSender, *, buffer: int = 1024,
                 deliver: Callable[[VoicemailBox, str], None] | None = None,
                 max_pin_failures: int = 6, pin_lock_s: float = 900.0) -> None:
        self.store = store
        self.mwi = mwi
        #: wrong PINs in a row (any number of calls) that lock a mailbox, and for how long
        self.max_pin_failures = max_pin_failures
        self.pin_lock_s = pin_lock_s
        self.lockouts = 0
        #: hands a loaded mailbox to the call that asked (``node.deliver_nowait(message, tenant)``)
        self.deliver = deliver
        self._send, self._recv = trio.open_memory_channel[CtiEvent](buffer)
        self.dropped = 0
        self.stored = 0
        self.mwi_sent = 0
        self.mwi_failed = 0

    def feed(self, event: CtiEvent) -> None:
        """Non-blocking: hand a CTI event over (only the voicemail ones are kept)."""
        if event.name not in self.EVENTS:
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
            log.error("voicemail: event buffer full, %s of call %s dropped", event.name, event.call_id)

    def publish(self, event: CtiEvent) -> None:
        """The ``CtiPort`` face of ``feed``, so the service can sit in a CTI tee."""
        self.feed(event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for event in self._recv:
            try:
                await self.on_event(event)
            except Exception:  # one bad event must not stop the service
                log.exception("voicemail: %s of call %s failed", event.name, event.call_id)

    async def on_event(self, event: CtiEvent) -> None:
        box = str(event.data.get("box") or "")
        if event.name == "VOICEMAIL_NEW":
            await self.on_new(event)
        elif event.name == "VOICEMAIL_ACCESS":
            await self.load(event.tenant, box, event.call_id, event.at)
        elif event.name == "VOICEMAIL_SETTINGS":
            await self.settings(event.tenant, box, event.call_id, event.at)
        elif event.name == "VOICEMAIL_SAVED":
            await self.save(event.tenant, box, str(event.data.get("message_id") or ""))
        elif event.name == "VOICEMAIL_DELETED":
            await self.delete(event.tenant, box, str(event.data.get("message_id") or ""))
        elif event.name in ("VOICEMAIL_PIN_OK", "VOICEMAIL_PIN_FAILED"):
            await self.pin_checked(event.tenant, box, event.name == "VOICEMAIL_PIN_OK", event.at, event.call_id)

    async def pin_checked(self, tenant: str, box: str, ok: bool, at: float, call_id: str = "") -> vm.Lockout | None:
        """Count a PIN checked at the phone menu; too many wrong ones in a row lock the mailbox."""
        result = await self.store.pin_checked(tenant, box, ok, at, max_failures=self.max_pin_failures,
                                              lock_s=self.pin_lock_s)
        if result is not None and result.locked_until == at + self.pin_lock_s and not ok:
            self.lockouts += 1
            log.warning("voicemail %s/%s: %d wrong PINs in a row (the last by call %s): locked for %.0f s",
                        tenant, box, self.max_pin_failures, call_id, self.pin_lock_s)
        return result

    async def settings(self, tenant: str, box: str, call_id: str, at: float) -> VoicemailBox:
        """The greeting and max length of ``box`` for a caller about to leave a message (no PIN,
        no messages); an unknown mailbox answers at once with none, so the node uses its own."""
        try:
            mb = await self.store.get_mailbox(tenant, box)
            greeting, max_length_s = mb.greeting, float(mb.max_length_s)
        except NotFound:
            greeting, max_length_s = "", 0.0
        message = VoicemailBox(call_id=call_id, at=at, box=box, greeting=greeting, max_length_s=max_length_s)
        if self.deliver is not None:
            self.deliver(message, tenant)
        return message

    async def load(self, tenant: str, box: str, call_id: str, at: float) -> VoicemailBox:
        """The mailbox for a call at a voicemail_access node; an unknown one has no PIN hash (every
        PIN fails), so a caller cannot tell a missing mailbox from a wrong PIN."""
        try:
            pin_hash = await self.store.pin_hash(tenant, box, at)  # "" while locked
            msgs = await self.store.messages(tenant, box)
        except NotFound:
            pin_hash, msgs = "", []
        message = VoicemailBox(call_id=call_id, at=at, box=box, pin_hash=pin_hash,
                               messages=tuple((m.id, m.folder, m.path, m.created_at) for m in msgs))
        if self.deliver is not None:
            self.deliver(message, tenant)
        return message

    async def on_new(self, event: CtiEvent) -> None:
        d = event.data
        box = str(d.get("box") or "")
        message_id = str(d.get("message_id") or event.call_id)
        if not box or not message_id:
            return
        if await self.store.add_message(event.tenant, box, message_id, caller_id=str(d.get("caller_id") or ""),
                                        created_at=event.at, duration_s=float(d.get("duration_s") or 0.0),
                                        path=str(d.get("path") or "")):
            self.stored += 1
            await self.notify(event.tenant, box)

    async def notify(self, tenant: str, box: str) -> None:
        """One MWI with the mailbox's counts as the table now holds them."""
        new, saved = await self.store.counts(tenant, box)
        headers = vm.mwi_headers(await self.store.mwi_account(tenant, box), new, saved)
        try:
            await self.mwi(headers)
            self.mwi_sent += 1
        except Exception as exc:  # the switch being away must not fail the change itself
            self.mwi_failed += 1
            log.warning("voicemail: MWI for %s/%s not sent: %s", tenant, box, exc)

    async def save(self, tenant: str, box: str, message_id: str) -> None:
        if await self.store.set_folder(tenant, box, message_id, "saved"):
            await self.notify(tenant, box)

    async def delete(self, tenant: str, box: str, message_id: str) -> bool:
        if await self.store.delete_message(tenant, box, message_id):
            await self.notify(tenant, box)
            return True
        return False

    async def erase_box(self, tenant: str, box: str) -> int:
        n = await self.store.erase_box(tenant, box)
        await self.notify(tenant, box)
        return n

    async def erase_caller(self, tenant: str, caller_id: str) -> int:
        rows = await self.store.erase_caller(tenant, caller_id)
        for t, b in sorted(set(rows)):
            await self.notify(t, b)
        return len(rows)

    async def expire_once(self, now: float, limit: int = 500) -> int:
        rows = await self.store.expire(now, limit)
        for t, b in sorted(set(rows)):
            await self.notify(t, b)
        return len(rows)

    async def run_retention(self, clock: Callable[[], float], *, interval_s: float = 3600.0, limit: int = 500,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Delete expired messages every ``interval_s`` (at most ``limit`` a batch; a full batch
        is followed by the next one at once)."""
        task_status.started()
        while True:
            try:
                full = await self.expire_once(clock(), limit) >= limit
            except Exception:
                log.exception("voicemail: retention pass failed")
                full = False
            if not full:
                await trio.sleep(interval_s)
            else:
                await trio.sleep(0)
