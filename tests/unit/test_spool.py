"""The spool file: fsynced batches, acknowledgement by offset, truncation, torn-tail recovery."""

from __future__ import annotations

import msgspec
import trio

from adapters.postgres.cdr import CdrWriter, encode_lines
from adapters.postgres.spool import Spool
from engine.messages import Cdr


def cdr(i: int, **kw) -> Cdr:
    base = dict(call_id=f"c{i}", tenant="t", direction="inbound", caller_id="1", destination="2",
                created_at=1.7e9 + i, answered_at=None, ended_at=1.7e9 + i + 1, disposition="abandoned",
                hangup_cause="X")
    return Cdr(**{**base, **kw})


def test_append_read_ack_truncates_only_when_everything_is_acknowledged(tmp_path):
    with Spool(tmp_path / "s") as s:
        a = s.append(b"one\ntwo\n")
        b = s.append(b"three\n")
        assert a == (0, 8) and b == (8, 14)
        assert s.read(0, 10) == ([b"one", b"two", b"three"], 14)
        assert s.read(0, 2) == ([b"one", b"two"], 8)
        assert s.ack(8) is False and s.snapshot() == (14, 8)
        assert s.read(s.acked, 10) == ([b"three"], 14)
        assert s.ack(14) is True and s.snapshot() == (0, 0)


def test_reopening_keeps_pending_records_and_cuts_a_torn_tail(tmp_path):
    path = tmp_path / "s"
    with Spool(path) as s:
        s.append(b"a\nb\n")
    with open(path, "ab") as f:
        f.write(b"half-written rec")  # a crash in the middle of a write that was never fsynced
    with Spool(path) as s:
        assert s.torn_bytes == len(b"half-written rec")
        assert s.read(0, 10) == ([b"a", b"b"], 4)
        s.append(b"c\n")
        assert s.read(0, 10) == ([b"a", b"b", b"c"], 6)


def test_surrogates_are_replaced_so_a_cdr_can_always_be_spooled():
    data, cleaned = encode_lines([cdr(1, caller_id="a\udc80b"), cdr(2)])
    assert cleaned[0].caller_id == "a\ufffdb" and cleaned[1] == cdr(2)
    assert [msgspec.json.decode(line, type=Cdr) for line in data.splitlines()] == cleaned


def test_without_a_database_cdrs_go_to_the_spool_and_survive_a_restart(tmp_path):
    async def main():
        async with trio.open_nursery() as n:
            w = CdrWriter(None, tmp_path / "s", batch=10)
            await n.start(w.run)
            for i in range(35):
                w.write(cdr(i))
            with trio.fail_after(5):
                while w.statistics().buffered:
                    await trio.sleep(0.01)
            assert not w.settled and w.statistics().backlog
            n.cancel_scope.cancel()
        assert await w.flush(0.5) is False  # no database: kept on disk
        w.close()

    trio.run(main)
    lines = (tmp_path / "s").read_bytes().splitlines()
    assert [msgspec.json.decode(x, type=Cdr).call_id for x in lines] == [f"c{i}" for i in range(35)]
    w2 = CdrWriter(None, tmp_path / "s")
    assert w2.statistics().backlog  # replayed at start
    w2.close()
