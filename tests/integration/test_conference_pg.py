"""Conference rooms and the CDR's conference in PostgreSQL (#10 part 3) on embedded PostgreSQL:
migration 0011 adds ``conference_rooms`` and ``cdrs.conference`` to a database that already holds
CDRs (they read ''), the config store validates room rows (PIN hashes only, known flags), the
engine's rooms come from the live snapshot, and the CDR writer stores the room."""

from __future__ import annotations

import warnings

import pytest
import trio

from adapters.postgres.bridge import open_postgres
from adapters.postgres.cdr import open_cdr_writer
from adapters.postgres.config import ConferenceRoom, PgConfigStore, Tenant
from adapters.postgres.errors import InvalidArgument
from adapters.postgres.migrate import apply_migrations, migrations
from engine.conference import ConferenceError, ConferenceService, hash_pin, rooms_from_rows
from engine.messages import Cdr
from tests.support.pg import fresh_dsn

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

T0 = 1_700_000_000.0
SALT = b"0123456789abcdef"


def cdr(call_id: str, **kw) -> Cdr:
    base = dict(call_id=call_id, tenant="acme", direction="inbound", caller_id="2001", destination="3000",
                created_at=T0, answered_at=T0 + 1, ended_at=T0 + 61, disposition="answered",
                hangup_cause="NORMAL_CLEARING", talk_s=60.0)
    base.update(kw)
    return Cdr(**base)


def test_migration_0011_rooms_in_the_store_and_the_cdr_room(tmp_path) -> None:
    out: dict = {}

    async def main() -> None:
        async with open_postgres(fresh_dsn()) as pg:
            assert 11 in [m.version for m in migrations()]
            await pg.run(apply_migrations, [m for m in migrations() if m.version < 11])
            await pg.run(lambda conn: conn.execute(
                "INSERT INTO cdrs (call_id, tenant, direction, caller_id, destination, started_at, answered_at,"
                " ended_at, disposition, hangup_cause, talk_s) VALUES ('old', 'acme', 'inbound', '1', '2',"
                " to_timestamp($1), to_timestamp($1), to_timestamp($2), 'answered', 'NORMAL_CLEARING', 10)",
                T0, T0 + 10))
            out["applied"] = await pg.run(apply_migrations)
            store = PgConfigStore(pg)
            await store.create(Tenant(tenant="acme"))
            room = ConferenceRoom(tenant="acme", number="3000", name="Board",
                                  moderator_pin_hash=hash_pin("4321", SALT, 1000),
                                  member_pin_hash=hash_pin("1111", SALT, 1000), max_members=10,
                                  wait_for_moderator=True, flags=("mute",))
            await store.create(room)
            for bad, field in [({"member_pin_hash": "1111"}, "member_pin_hash"),
                               ({"flags": ("moderator",)}, "flags"), ({"number": "30a0"}, "number")]:
                with pytest.raises(InvalidArgument) as e:
                    await store.create(ConferenceRoom(**{**_fields(room), "number": "3001", **bad}))
                assert e.value.field == field
                out.setdefault("refused", []).append(e.value.field)
            out["repr"] = repr(room)
            snap = await store.snapshot()
            out["rows"] = list(snap.of(ConferenceRoom))
            async with open_cdr_writer(pg, tmp_path / "cdr.spool", batch=10) as w:
                w.write(cdr("in-room", conference="3000-acme"))
                w.write(cdr("plain"))
                assert await w.wait_settled(10)
            rows = await pg.run(lambda conn: conn.fetch("SELECT call_id, conference FROM cdrs ORDER BY call_id"))
            out["cdrs"] = [tuple(r) for r in rows]

    trio.run(main)
    assert 11 in out["applied"]
    assert out["refused"] == ["member_pin_hash", "flags", "number"]
    assert "pbkdf2" not in out["repr"]
    (row,) = out["rows"]
    assert (row.number, row.wait_for_moderator, row.flags) == ("3000", True, ("mute",))
    service = ConferenceService(lambda e: None, rooms_from_rows(out["rows"]))
    d = service.join_check("acme", "3000", "4321")
    assert d.moderator and d.flags == ("mute", "moderator") and d.room == "3000-acme"
    with pytest.raises(ConferenceError):
        service.join_check("acme", "3000", "1234")
    assert out["cdrs"] == [("in-room", "3000-acme"), ("old", ""), ("plain", "")]


def _fields(room: ConferenceRoom) -> dict:
    return {f: getattr(room, f) for f in room.__struct_fields__}
