"""Voicemail storage on embedded PostgreSQL (migration 0009, adapters/postgres/voicemail.py):
mailboxes with hashed PINs and typed errors, idempotent messages, folders and counts, MWI after
every change, bounded retention, GDPR erasure by mailbox and by caller, and the tombstones an ops
script removes the audio files from."""

from __future__ import annotations

import pytest
import trio

from adapters.postgres.bridge import open_postgres
from adapters.postgres.errors import FailedPrecondition, InvalidArgument, NotFound
from adapters.postgres.migrate import apply_migrations
from adapters.postgres.voicemail import VoicemailService, VoicemailStore
from engine.messages import CtiEvent
from tests.support.pg import fresh_dsn

T0 = 1_700_000_000.0
DAY = 86400.0


def run(body) -> None:
    async def main():
        async with open_postgres(fresh_dsn("vmpg")) as pg:
            await pg.run(apply_migrations)

            async def rows(conn):
                for t in ("acme", "beta"):
                    await conn.execute("INSERT INTO tenants (tenant) VALUES ($1)", t)
                    for e in ("1001", "1002"):
                        await conn.execute("INSERT INTO extensions (tenant, extension) VALUES ($1, $2)", t, e)
                await conn.execute("INSERT INTO sip_domains (tenant, domain) VALUES ('acme', 'acme.example')")

            await pg.run(rows)
            sent: list[dict[str, str]] = []

            async def mwi(headers):
                sent.append(headers)

            store = VoicemailStore(pg)
            with trio.fail_after(20):
                await body(pg, store, VoicemailService(store, mwi), sent)

    trio.run(main)


async def raw(pg, sql, *args):
    async def go(conn):
        return await conn.fetch(sql, *args)

    return await pg.run(go)


def new_event(tenant, box, call_id, caller="+4930111", at=T0, duration=12.5):
    return CtiEvent(name="VOICEMAIL_NEW", tenant=tenant, at=at, call_id=call_id,
                    data={"box": box, "message_id": call_id, "caller_id": caller, "duration_s": duration,
                          "path": f"voicemail/{box}/{call_id}.wav", "ended": "success-silence"})


def test_mailbox_pin_is_hashed_and_errors_are_typed() -> None:
    async def body(pg, store, service, sent):
        box = await store.set_mailbox("acme", "1001", pin="4711", greeting="hi.wav", retention_days=7)
        assert (box.greeting, box.retention_days, box.max_length_s) == ("hi.wav", 7, 120)
        (row,) = await raw(pg, "SELECT pin_hash FROM voicemail_boxes")
        assert "4711" not in row["pin_hash"] and row["pin_hash"].startswith("pbkdf2_sha256$")
        assert await store.check_pin("acme", "1001", "4711") and not await store.check_pin("acme", "1001", "4712")
        # an update without a PIN keeps it
        await store.set_mailbox("acme", "1001", greeting="other.wav")
        assert await store.check_pin("acme", "1001", "4711")
        with pytest.raises(InvalidArgument):
            await store.set_mailbox("acme", "1002", greeting="x")  # new mailbox without PIN
        with pytest.raises(InvalidArgument):
            await store.set_mailbox("acme", "1002", pin="12")
        with pytest.raises(InvalidArgument):
            await store.set_mailbox("acme", "1002", pin="1234", max_length_s=0)
        with pytest.raises(FailedPrecondition):
            await store.set_mailbox("acme", "9999", pin="1234")  # no such extension
        with pytest.raises(NotFound):
            await store.get_mailbox("beta", "1001")  # another tenant's box is not found

    run(body)


def test_messages_counts_and_mwi_after_every_change() -> None:
    async def body(pg, store, service, sent):
        await store.set_mailbox("acme", "1001", pin="4711", retention_days=10)
        await service.on_new(new_event("acme", "1001", "c1"))
        await service.on_new(new_event("acme", "1001", "c1"))  # replayed: one row, one MWI
        await service.on_new(new_event("acme", "1001", "c2", at=T0 + 5))
        assert [m.id for m in await store.messages("acme", "1001")] == ["c1", "c2"]
        (m1, _m2) = await store.messages("acme", "1001")
        assert m1.expires_at == T0 + 10 * DAY and m1.duration_s == 12.5 and m1.folder == "new"
        assert [h["MWI-Voice-Message"] for h in sent] == ["1/0 (0/0)", "2/0 (0/0)"]
        assert sent[0]["MWI-Message-Account"] == "sip:1001@acme.example"
        await service.save("acme", "1001", "c1")
        await service.save("acme", "1001", "c1")  # already saved: no change, no MWI
        assert await service.delete("acme", "1001", "c2")
        assert not await service.delete("acme", "1001", "c2")
        assert [(h["MWI-Messages-Waiting"], h["MWI-Voice-Message"]) for h in sent[2:]] == [
            ("yes", "1/1 (0/0)"), ("no", "0/1 (0/0)")]
        with pytest.raises(NotFound):
            await service.save("acme", "1001", "c2")  # deleted
        # the same box number in another tenant is another mailbox (no domain: account is the tenant)
        await service.on_new(new_event("beta", "1001", "c9"))
        assert sent[-1]["MWI-Message-Account"] == "sip:1001@beta" and await store.counts("acme", "1001") == (0, 1)
        # a box without a mailbox row still keeps its message (30 days)
        await service.on_new(new_event("acme", "1002", "c5"))
        (m5,) = await store.messages("acme", "1002")
        assert m5.expires_at == T0 + 30 * DAY

    run(body)


def test_retention_is_bounded_and_gdpr_erasure_keeps_tombstones_for_the_files() -> None:
    async def body(pg, store, service, sent):
        await store.set_mailbox("acme", "1001", pin="4711", retention_days=1)
        await store.set_mailbox("acme", "1002", pin="4711", retention_days=0)  # keep forever
        for i in range(5):
            await service.on_new(new_event("acme", "1001", f"old{i}", at=T0 + i))
        await service.on_new(new_event("acme", "1002", "forever", at=T0))
        sent.clear()
        # bounded: 3 per pass, then the remaining 2; one MWI per touched box per pass
        assert await service.expire_once(T0 + 2 * DAY, limit=3) == 3
        assert await service.expire_once(T0 + 2 * DAY, limit=3) == 2
        assert await service.expire_once(T0 + 2 * DAY, limit=3) == 0
        assert [h["MWI-Voice-Message"] for h in sent] == ["2/0 (0/0)", "0/0 (0/0)"]
        assert [m.id for m in await store.messages("acme", "1002")] == ["forever"]
        rows = await raw(pg, "SELECT deleted_by, caller_id FROM voicemail_messages WHERE box='1001'")
        assert {(r["deleted_by"], r["caller_id"]) for r in rows} == {("retention", "")}
        # erase by caller across mailboxes, then a whole mailbox
        await service.on_new(new_event("acme", "1001", "a", caller="+49301"))
        await service.on_new(new_event("acme", "1002", "b", caller="+49301"))
        await service.on_new(new_event("acme", "1002", "c", caller="+49302"))
        sent.clear()
        assert await service.erase_caller("acme", "+49301") == 2
        assert len(sent) == 2  # both mailboxes' lamps follow
        assert [m.id for m in await store.messages("acme", "1002")] == ["c", "forever"]
        assert await store.delete_mailbox("acme", "1002") == 2
        with pytest.raises(NotFound):
            await store.get_mailbox("acme", "1002")
        with pytest.raises(InvalidArgument):
            await store.erase_caller("acme", "")
        # every deleted message's file is listed once until the ops script marks it removed
        files = await store.files_to_remove()
        assert len(files) == 9 and ("acme", "forever", "voicemail/1002/forever.wav") in files
        assert await store.mark_files_removed([(t, i) for t, i, _ in files[:4]]) == 4
        assert len(await store.files_to_remove()) == 5

    run(body)


def test_retention_task_runs_periodically() -> None:
    async def body(pg, store, service, sent):
        await store.set_mailbox("acme", "1001", pin="4711", retention_days=1)
        for i in range(4):
            await service.on_new(new_event("acme", "1001", f"m{i}"))
        async with trio.open_nursery() as n:
            await n.start(lambda **kw: service.run_retention(lambda: T0 + 2 * DAY, interval_s=0.05, limit=3, **kw))
            for _ in range(200):
                if await store.counts("acme", "1001") == (0, 0):
                    break
                await trio.sleep(0.01)
            n.cancel_scope.cancel()
        assert await store.counts("acme", "1001") == (0, 0)

    run(body)


def test_voicemail_files_command_lists_deleted_messages_and_records_their_removal(capsys, monkeypatch):
    import io

    from engine.cli import main

    dsn = fresh_dsn("vmcli")

    async def setup():
        async with open_postgres(dsn) as pg:
            await pg.run(apply_migrations)

            async def rows(conn):
                await conn.execute("INSERT INTO tenants (tenant) VALUES ('acme')")
                await conn.execute("INSERT INTO extensions (tenant, extension) VALUES ('acme', '1001')")

            await pg.run(rows)
            store = VoicemailStore(pg)
            await store.set_mailbox("acme", "1001", pin="4711")
            for i in range(3):
                await store.add_message("acme", "1001", f"c{i}", caller_id="+49", created_at=T0 + i, duration_s=3.0,
                                        path=f"voicemail/1001/c{i}.wav")
            await store.delete_message("acme", "1001", "c0")
            await store.delete_message("acme", "1001", "c2")

    trio.run(setup)
    assert main(["voicemail-files", "list", "--dsn", dsn]) == 0
    listed = capsys.readouterr().out
    assert sorted(listed.splitlines()) == ["acme\tc0\tvoicemail/1001/c0.wav", "acme\tc2\tvoicemail/1001/c2.wav"]
    # the ops script removed c0's file only and reports it back
    monkeypatch.setattr("sys.stdin", io.StringIO("acme\tc0\tvoicemail/1001/c0.wav\n\nnonsense\n"))
    assert main(["voicemail-files", "done", "--dsn", dsn]) == 0
    assert "1 files recorded as removed" in capsys.readouterr().err
    assert main(["voicemail-files", "list", "--dsn", dsn]) == 0
    assert capsys.readouterr().out.splitlines() == ["acme\tc2\tvoicemail/1001/c2.wav"]


def test_wrong_pins_across_calls_lock_the_mailbox_until_its_time_or_a_new_pin() -> None:
    """The phone menu reports every PIN it checks (VOICEMAIL_PIN_OK/FAILED); the service counts the
    wrong ones in a row across calls (migration 0015) and, after ``max_pin_failures``, hands the
    menu no PIN hash until the lock is over, so even the right PIN fails. A right PIN clears the
    count; a PIN during the lock changes nothing; a new PIN unlocks."""
    def pin(ok, at, box="1001", tenant="acme", call="c"):
        return CtiEvent(name="VOICEMAIL_PIN_OK" if ok else "VOICEMAIL_PIN_FAILED", tenant=tenant, at=at,
                        call_id=call, data={"box": box})

    async def body(pg, store, service, sent):
        service.max_pin_failures, service.pin_lock_s = 3, 600.0
        await store.set_pin("acme", "1001", "4711")
        await store.set_pin("beta", "1001", "4711")
        for at in (T0, T0 + 1):
            await service.on_event(pin(False, at))
        await service.on_event(pin(True, T0 + 2))  # the owner got it right: the count starts again
        assert (await store.get_mailbox("acme", "1001")).pin_failures == 0
        for i, at in enumerate((T0 + 10, T0 + 20, T0 + 30)):  # three calls, one wrong PIN each
            await service.on_event(pin(False, at, call=f"c{i}"))
        mb = await store.get_mailbox("acme", "1001")
        assert mb.locked_until == T0 + 630 and service.lockouts == 1
        assert (await service.load("acme", "1001", "c9", T0 + 40)).pin_hash == ""  # every PIN fails
        assert (await service.load("beta", "1001", "c9", T0 + 40)).pin_hash  # another tenant's box: not locked
        await service.on_event(pin(False, T0 + 50))  # guessing during the lock neither counts nor extends it
        await service.on_event(pin(True, T0 + 51))
        assert await store.get_mailbox("acme", "1001") == mb
        hashed = (await service.load("acme", "1001", "c9", T0 + 631)).pin_hash  # the lock is over
        assert hashed.startswith("pbkdf2_sha256$")
        await service.on_event(pin(False, T0 + 640))
        await service.on_event(pin(False, T0 + 641))
        await service.on_event(pin(False, T0 + 642))
        assert (await store.get_mailbox("acme", "1001")).locked_until == T0 + 1242
        await store.set_pin("acme", "1001", "1234")  # the admin gives a new PIN: unlocked at once
        mb = await store.get_mailbox("acme", "1001")
        assert (mb.pin_failures, mb.locked_until) == (0, None)
        assert (await service.load("acme", "1001", "c9", T0 + 643)).pin_hash
        assert await service.pin_checked("acme", "9999", False, T0) is None  # no such mailbox: nothing

    run(body)
